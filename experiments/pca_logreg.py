"""PCA + k-means and PCA + logistic regression on Fashion-MNIST (seed 003, §2.3).

Part 1 (the report's Figure 12): PCA(2) of the test set (pixels / 255), k-means with k = 10
(our JAX k-means, k-means++, one run per seed, vmapped over ``--seeds``), the 2-D scatter
coloured by true class beside the clusters, and the adjusted Rand index of the clusters
against the classes.

Part 2 (Figure 13 and the text after it): multinomial logistic regression (scikit-learn's
objective, C = 1, lbfgs-style solver with scikit-learn's default ``max_iter = 100`` and
``tol = 1e-4``) on the first n principal components, n in ``--components``, and on the 784
pixels without PCA; 5-fold stratified cross-validation on the 60k training images. As in the
report's listing, PCA is fitted on all training images before the folds are split. Each size
runs its folds as one compiled program (folds as zero sample weights on the shared data), as
do the 784-pixel folds; ``--one-program`` runs all sizes × folds as a single program instead
(PCA projected once onto the largest size, trailing components masked per member).
Then each model is refitted on all training images and scored on the test set. Wall time per
fold is the program's time (compilation included) over its folds, plus the PCA fit's share.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from mljax import metrics as mx
from mljax.cluster import kmeans
from mljax.config import CommonConfig
from mljax.data import images
from mljax.experiment import ReportRow, cli_main, format_mean_std, summarize
from mljax.linear import logistic_regression as lr
from mljax.linear import model_selection as ms
from mljax.linear import pca

NAME = "pca_logreg"
SEED_NO_PCA_ACC = 0.85  # "mean holdout accuracy of right around 85 percent"
SEED_SECONDS_PER_FOLD = 90.0  # fit_time 89.8-91.4 s per fold
N_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Config(CommonConfig):
    """PCA + k-means and PCA + logistic regression on Fashion-MNIST."""

    components: tuple[int, ...] = (2, 5, 10, 25, 50, 100)
    """Numbers of principal components for logistic regression (the report: 2 5 10 25 50 100)."""

    folds: int = 5
    """Cross-validation folds (the report: 5), stratified."""

    C: float = 1.0
    """Inverse L2 penalty of logistic regression (scikit-learn's default and the report's: 1)."""

    max_iter: int = 100
    """L-BFGS iterations at most (scikit-learn's default, which the report used: 100)."""

    tol: float = 1e-4
    """Stop when the largest gradient entry of the scaled objective is below this (sklearn's tol)."""

    one_program: bool = False
    """Run all PCA sizes × folds as one program (trailing components masked per member) instead of
one program per size (folds vmapped). One program runs its members in lockstep, so every size
pays for the slowest member's line searches and for all of the largest size's columns."""

    skip_pixels: bool = False
    """Skip the cross-validation on the 784 raw pixels without PCA (the report's ≈ 85 % at
    ≈ 90 s per fold); by default it runs."""

    k: int = 10
    """Clusters of the k-means on the PCA(2) test set."""

    n_train: int = 60000
    """Training images used (quick mode: 3000)."""

    n_test: int = 10000
    """Test images used (quick mode: 1000)."""

    data_dir: str | None = None
    """Directory with the Fashion-MNIST IDX files (default: see mljax.data.images)."""

    def validate(self) -> None:
        super().validate()
        if not self.components or min(self.components) < 1 or max(self.components) > 784:
            raise ValueError(
                f"--components must be non-empty, each in 1..784; got {self.components}"
            )
        if self.folds < 2:
            raise ValueError(f"--folds must be >= 2, got {self.folds}")
        if not self.C > 0:
            raise ValueError(f"--C must be > 0, got {self.C}")
        if self.max_iter < 1:
            raise ValueError(f"--max-iter must be >= 1, got {self.max_iter}")
        if not self.tol >= 0:
            raise ValueError(f"--tol must be >= 0, got {self.tol}")
        if self.k < 2:
            raise ValueError(f"--k must be >= 2, got {self.k}")
        if not 1 <= self.n_train <= 60000:
            raise ValueError(f"--n-train must be in 1..60000, got {self.n_train}")
        if not 1 <= self.n_test <= 10000:
            raise ValueError(f"--n-test must be in 1..10000, got {self.n_test}")


def _pixels(ds, n) -> np.ndarray:
    return ds.images[:n].reshape(min(n, ds.images.shape[0]), -1).astype(np.float32) / 255.0


def pca_kmeans(keys, x, y, k):
    """PCA(2) of ``x`` and k-means (k-means++) per key, vmapped: ``(z [n, 2], labels [s, n],
    ari [s])``."""
    z = pca.transform(pca.fit(x, 2), x)

    def one(key):
        r = kmeans.fit(key, z, k)
        return r.labels, mx.adjusted_rand_index(y, r.labels, n_true=N_CLASSES, n_pred=k)

    labels, ari = jax.jit(jax.vmap(one))(keys)
    return z, labels, ari


@jax.jit(static_argnames=("max_iter", "tol"))
def _refit(z, y, masks, c, *, max_iter, tol):
    """One fit on all rows per mask (vmapped): coef and intercepts stacked."""

    def fit(mask):
        return lr.fit(z, y, C=c, feature_mask=mask, n_classes=N_CLASSES, max_iter=max_iter, tol=tol)

    return jax.vmap(fit)(masks)


def _timed(fn):
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t


def run(config: Config, run_dir) -> dict:
    q = config.quick
    n_train = min(config.n_train, 3000) if q else config.n_train
    n_test = min(config.n_test, 1000) if q else config.n_test
    sizes = config.components
    if q:
        sizes = tuple(s for s in sizes if s <= 10) or sizes[:1]
    seeds = min(config.seeds, 2) if q else config.seeds

    train = images.load("fashion_mnist", "train", data_dir=config.data_dir)
    test = images.load("fashion_mnist", "test", data_dir=config.data_dir)
    x, y = _pixels(train, n_train), np.asarray(train.labels[:n_train], np.int32)
    xt, yt = _pixels(test, n_test), np.asarray(test.labels[:n_test], np.int32)
    key = jax.random.key(config.seed)
    k_km, k_folds = jax.random.split(key)

    # Part 1: PCA(2) + k-means on the test set.
    z2, km_labels, ari = pca_kmeans(jax.random.split(k_km, seeds), xt, yt, config.k)
    _scatter_figure(np.asarray(z2), yt, np.asarray(km_labels[0]), float(ari[0]), run_dir)

    # Part 2: cross-validated logistic regression after PCA, all sizes and folds in one program.
    folds = ms.stratified_kfold(k_folds, y, config.folds)
    lr_kw = {"C": config.C, "max_iter": config.max_iter, "tol": config.tol}
    model, pca_s = _timed(lambda: pca.fit(x, max(sizes)))
    z, zt = pca.transform(model, x), pca.transform(model, xt)
    if config.one_program:
        sweep, sweep_s = _timed(
            lambda: ms.pca_size_sweep(
                x, y, sizes, folds, n_folds=config.folds, n_classes=N_CLASSES, pca_model=model,
                **lr_kw,
            )
        )  # fmt: skip
        fold_s = [sweep_s / len(sizes)] * len(sizes)
        scores_all, n_iter_all = np.asarray(sweep.scores), np.asarray(sweep.n_iter)
    else:
        scores_all, n_iter_all, fold_s = [], [], []
        for s in sizes:
            res, t = _timed(lambda s=s: ms.logreg_cross_validate(
                z[:, :s], y, folds, n_folds=config.folds, n_classes=N_CLASSES, **lr_kw
            ))  # fmt: skip
            scores_all.append(np.asarray(res.scores))
            n_iter_all.append(np.asarray(res.models.n_iter))
            fold_s.append(t)
        sweep_s = sum(fold_s)
    masks = (jnp.arange(max(sizes))[None, :] < jnp.asarray(sizes)[:, None]).astype(z.dtype)
    refit, refit_s = _timed(
        lambda: _refit(z, y, masks, config.C, max_iter=config.max_iter, tol=config.tol)
    )
    cv = {}
    details = {}
    for i, s in enumerate(sizes):
        m_i = jax.tree.map(lambda a, i=i: a[i], refit)
        scores = np.asarray(scores_all[i])
        cv[str(s)] = {
            "cv_acc_mean": float(scores.mean()),
            "cv_acc_std": float(scores.std()),
            "test_acc": float(lr.score(m_i, zt, yt)),
            "seconds_per_fold": (fold_s[i] + pca_s / len(sizes)) / config.folds,
        }
        details[str(s)] = {
            "fold_acc": scores.tolist(),
            "n_iter": np.asarray(n_iter_all[i]).tolist(),
            "refit_n_iter": int(m_i.n_iter),
            "explained_variance": float(jnp.sum(model.explained_variance_ratio[:s])),
        }

    timing = {
        "pca_fit_s": pca_s,
        "pca_sweep_s": sweep_s,
        "pca_refit_s": refit_s,
        "pca_fits": len(sizes) * config.folds,
        "pca_one_program": config.one_program,
    }
    if not config.skip_pixels:
        res, cv_s = _timed(lambda: ms.logreg_cross_validate(
            x, y, folds, n_folds=config.folds, n_classes=N_CLASSES, **lr_kw
        ))  # fmt: skip
        full, full_s = _timed(lambda: lr.fit(x, y, n_classes=N_CLASSES, **lr_kw))
        scores = np.asarray(res.scores)
        cv["none"] = {
            "cv_acc_mean": float(scores.mean()),
            "cv_acc_std": float(scores.std()),
            "test_acc": float(lr.score(full, xt, yt)),
            "seconds_per_fold": cv_s / config.folds,
        }
        details["none"] = {
            "fold_acc": scores.tolist(),
            "n_iter": np.asarray(res.models.n_iter).tolist(),
            "refit_n_iter": int(full.n_iter),
            "explained_variance": 1.0,
        }
        timing.update({"no_pca_cv_s": cv_s, "no_pca_refit_s": full_s})
    _accuracy_figure(sizes, cv, run_dir)

    return {
        "pca_kmeans": {"ari": float(np.mean(np.asarray(ari)))},
        "cv": cv,
        "pca_kmeans_details": {"ari_per_seed": summarize(np.asarray(ari)), "k": config.k},
        "cv_details": details,
        "timing": timing,
        "sizes": {"train": int(n_train), "test": int(n_test), "folds": config.folds},
        "solver": {"C": config.C, "max_iter": config.max_iter, "tol": config.tol},
    }


def _scatter_figure(z, y, clusters, ari, run_dir):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), sharex=True, sharey=True)
    for ax, labels, title in (
        (axes[0], y, "true class"),
        (axes[1], clusters, f"k-means cluster (ARI {ari:.3f})"),
    ):
        sc = ax.scatter(z[:, 0], z[:, 1], c=labels, cmap="tab10", s=3, alpha=0.6, linewidths=0)
        ax.set_title(f"coloured by {title}")
        ax.set_xlabel("PC 1")
    axes[0].set_ylabel("PC 2")
    fig.suptitle("Fashion-MNIST test set, PCA(2) + k-means (k = 10)")
    fig.colorbar(sc, ax=axes, shrink=0.8, label="label")
    run_dir.write_figure(fig, "pca2_kmeans.png")


def _accuracy_figure(sizes, cv, run_dir):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    means = [cv[str(s)]["cv_acc_mean"] for s in sizes]
    stds = [cv[str(s)]["cv_acc_std"] for s in sizes]
    ax.errorbar(sizes, means, yerr=stds, fmt="o-", capsize=3, label="CV accuracy (mean ± std)")
    ax.plot(sizes, [cv[str(s)]["test_acc"] for s in sizes], "s--", label="test accuracy (refit)")
    if "none" in cv:
        ax.axhline(cv["none"]["cv_acc_mean"], color="gray", ls=":", label="no PCA (784 px), CV")
    ax.axhline(SEED_NO_PCA_ACC, color="red", ls=":", alpha=0.6, label="report, no PCA (≈ 85 %)")
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("principal components")
    ax.set_ylabel("accuracy")
    ax.set_title("PCA + logistic regression, Fashion-MNIST")
    ax.legend()
    run_dir.write_figure(fig, "accuracy_vs_components.png")


def report_notes(metrics: dict) -> str:
    t = metrics.get("timing", {})
    s = metrics.get("sizes", {})
    lines = [
        f"Data: Fashion-MNIST, {s.get('train')} training / {s.get('test')} test images, pixels "
        f"/ 255; {s.get('folds')}-fold stratified CV; logistic regression C = "
        f"{metrics['solver']['C']}, max_iter = {metrics['solver']['max_iter']}, "
        f"tol = {metrics['solver']['tol']} (scikit-learn's defaults, which the report used).",
        "",
        f"Timing (2-core CPU, compilation included): PCA fit {t.get('pca_fit_s', 0):.1f} s; the "
        f"{t.get('pca_fits')} PCA-size × fold fits {t.get('pca_sweep_s', 0):.1f} s "
        + (
            "in one program"
            if t.get("pca_one_program")
            else "in one program per size (folds vmapped)"
        ),
    ]
    if "no_pca_cv_s" in t:
        lines[-1] += (
            f"; the {s.get('folds')} folds on 784 pixels in one program "
            f"{t['no_pca_cv_s']:.1f} s ({t['no_pca_cv_s'] / s['folds']:.1f} s per fold)."
        )
    lines += [
        "",
        "Why ours differ from the report: its 90 s per fold is scikit-learn's lbfgs fitting one "
        "fold at a time (on data read from CSV, so float64), where our folds share one pass over "
        "the data per L-BFGS iteration, in float32 (and the machines differ). Its accuracies (≈ 85 % without PCA) "
        "come from pixels normalised by course code we do not have and from lbfgs stopped at "
        "100 iterations before convergence (as ours is, at the same max_iter), so small "
        "differences in scaling and in where the solver stops move the numbers by a point or "
        "so. Figure 13's per-n values are not printed in the report; it states the trend "
        "(accuracy rises with n and flattens, 100 components close to no PCA) that we compare.",
    ]
    return "\n".join(lines)


def report_rows(metrics: dict) -> list[ReportRow]:
    cv = metrics["cv"]
    det = metrics.get("pca_kmeans_details", {}).get("ari_per_seed", {})
    rows = [
        ReportRow(
            "PCA(2) + k-means (k = 10) on the test set: adjusted Rand index",
            "— (figure: 'significant overlap between class boundaries')",
            format_mean_std(metrics["pca_kmeans"]["ari"], det.get("std")),
            f"over {det.get('n', 1)} k-means seeds",
        )
    ]
    for key, v in cv.items():
        name = "no PCA (784 pixels)" if key == "none" else f"PCA n = {key}"
        seed_acc = "≈ 85 %" if key == "none" else "rises with n, flattens (figure only)"
        seed_t = {"none": f"≈ {SEED_SECONDS_PER_FOLD:.0f} s", "100": "≈ 1/3 of 90 s"}.get(key, "—")
        rows.append(
            ReportRow(
                f"{name}: 5-fold CV accuracy; test accuracy; seconds per fold",
                f"{seed_acc}; —; {seed_t}",
                f"{100 * v['cv_acc_mean']:.2f} ± {100 * v['cv_acc_std']:.2f} %; "
                f"{100 * v['test_acc']:.2f} %; {v['seconds_per_fold']:.2f} s",
                "time per fold includes the PCA fit's share" if key != "none" else "",
            )
        )
    return rows


if __name__ == "__main__":
    raise SystemExit(cli_main(sys.modules[__name__]))
