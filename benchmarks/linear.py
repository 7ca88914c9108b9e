"""Linear models: mljax.linear (JAX) vs scikit-learn, side by side on Fashion-MNIST.

Cases (pixels / 255, float32 input to both sides):

* PCA fit on 60k × 784 to 50 components: ours (``method="auto"``: eigh of the covariance)
  vs ``sklearn.decomposition.PCA(svd_solver="full")`` and ``(svd_solver="randomized")``.
  Agreement: largest relative difference of the explained variances.
* Logistic regression, one fit on 48k × 784 at C = 1, both with tol = 1e-4 and max_iter = 100
  (scikit-learn's defaults) vs ``LogisticRegression(solver="lbfgs")``. Agreement: accuracy
  difference on the other 12k images (points) and the share of equal predictions.
* The 5-fold CV of experiments.pca_logreg without PCA (60k × 784): ours
  (``model_selection.logreg_cross_validate``, folds vmapped) vs ``cross_val_score`` with the
  same folds (``PredefinedSplit``) and its default ``n_jobs``. Agreement: difference of the
  mean CV accuracies (points).

Our time is the best warm call of ``--repeats``; compile time (first call minus a warm call)
is reported apart. scikit-learn runs once per repeat in the same process.

    python -m benchmarks.linear [--quick] [--out FILE] [--repeats N] [--data-dir DIR]
        [--cases {pca,fit,cv} ...]
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Sequence

import jax
import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import PredefinedSplit, cross_val_score

from benchmarks._cli import parse_or_none, write_rows
from mljax.data import images
from mljax.experiment import markdown_table
from mljax.linear import logistic_regression as lr
from mljax.linear import model_selection as ms
from mljax.linear import pca
from mljax.malloc_tuning import reexec_with_tuned_malloc

FULL = {"n": 60_000, "n_fit": 48_000, "components": 50, "folds": 5}
QUICK = {"n": 2_000, "n_fit": 1_600, "components": 10, "folds": 3}


def _time(fn, repeats):
    """``(first_s, best_warm_s, result)``: the first call separately, then ``repeats`` more."""
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return first, best, out


def _time_sk(fn, repeats):
    best, out = np.inf, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs at max_iter=100 warns that it did not converge
        for _ in range(repeats):
            t = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t)
    return best, out


def _row(case, ours_s, first_s, anchor, anchor_s, agreement, **extra):
    return {
        "case": case,
        "ours_s": ours_s,
        "anchor": anchor,
        "anchor_s": anchor_s,
        "ratio": anchor_s / ours_s,
        "compile_s": max(first_s - ours_s, 0.0),
        "agreement": agreement,
        **extra,
    }


def pca_rows(x, k, repeats):
    first, ours_s, model = _time(lambda: pca.fit(x, k), repeats)
    ev = np.asarray(model.explained_variance, np.float64)
    rows = []
    for solver in ("full", "randomized"):
        sk_s, sk = _time_sk(
            lambda s=solver: PCA(k, svd_solver=s, random_state=0).fit(x), max(1, repeats - 1)
        )
        rel = float(np.max(np.abs(ev - sk.explained_variance_) / sk.explained_variance_))
        rows.append(
            _row(f"PCA {x.shape[0]}×{x.shape[1]} → {k}", ours_s, first,
                 f"scikit-learn PCA({solver})", sk_s, rel)
        )  # fmt: skip
    return rows


def logreg_row(x, y, n_fit, repeats):
    xf, yf, xh, yh = x[:n_fit], y[:n_fit], x[n_fit:], y[n_fit:]
    first, ours_s, m = _time(lambda: lr.fit(xf, yf, C=1.0, tol=1e-4, max_iter=100), repeats)
    sk_s, sk = _time_sk(lambda: LogisticRegression(C=1.0, tol=1e-4, max_iter=100).fit(xf, yf), 1)
    ours_pred = np.asarray(lr.predict(m, xh))
    ours_acc, sk_acc = float(np.mean(ours_pred == yh)), float(sk.score(xh, yh))
    sk_obj = float(lr.objective((sk.coef_, sk.intercept_), xf, yf))
    return _row(
        f"logistic regression fit {n_fit}×{x.shape[1]}, C=1", ours_s, first,
        "scikit-learn LogisticRegression(lbfgs)", sk_s, abs(ours_acc - sk_acc),
        accuracy=[ours_acc, sk_acc], prediction_agreement=float(np.mean(ours_pred == sk.predict(xh))),
        objective=[float(m.objective), sk_obj], iterations=[int(m.n_iter), int(sk.n_iter_[0])],
    )  # fmt: skip


def cv_row(x, y, n_folds, repeats):
    folds = ms.stratified_kfold(jax.random.key(0), y, n_folds)
    first, ours_s, res = _time(
        lambda: ms.logreg_cross_validate(x, y, folds, n_folds=n_folds, C=1.0, tol=1e-4, max_iter=100),
        repeats,
    )  # fmt: skip
    sk_s, sk_scores = _time_sk(
        lambda: cross_val_score(
            LogisticRegression(C=1.0, tol=1e-4, max_iter=100), x, y,
            cv=PredefinedSplit(np.asarray(folds)),
        ),
        1,
    )  # fmt: skip
    ours_mean, sk_mean = float(np.mean(res.scores)), float(np.mean(sk_scores))
    return _row(
        f"{n_folds}-fold CV {x.shape[0]}×{x.shape[1]}, C=1", ours_s, first,
        "scikit-learn cross_val_score(LogisticRegression)", sk_s, abs(ours_mean - sk_mean),
        accuracy=[ours_mean, sk_mean], per_fold_s=[ours_s / n_folds, sk_s / n_folds],
    )  # fmt: skip


CASES = ("pca", "fit", "cv")


@dataclasses.dataclass(frozen=True)
class Config:
    """PCA, logistic regression and its 5-fold CV: mljax.linear vs scikit-learn, Fashion-MNIST."""

    quick: bool = False
    """Tiny sizes (one repeat) for smoke tests."""

    out: str | None = None
    """JSON file for the result rows (default: $MLJAX_RESULTS_DIR or results, then bench/linear.json)."""

    repeats: int = 2
    """Timed warm calls of ours; the best is kept (--quick: 1)."""

    data_dir: str | None = None
    """Directory holding Fashion-MNIST (default: the data layer's search path)."""

    cases: tuple[str, ...] = CASES
    """Which cases to run: any of pca (PCA fit), fit (one logistic regression), cv (5-fold CV)."""

    def validate(self) -> None:
        if self.repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {self.repeats}")
        unknown = [c for c in self.cases if c not in CASES]
        if unknown or not self.cases:
            raise ValueError(f"--cases must be a non-empty subset of {CASES}, got {self.cases}")


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_or_none(Config, argv, "linear", __doc__)
    if config is None:
        return 2
    size = QUICK if config.quick else FULL
    repeats = 1 if config.quick else config.repeats
    train = images.load("fashion_mnist", "train", data_dir=config.data_dir)
    n = size["n"]
    x = train.images[:n].reshape(n, -1).astype(np.float32) / 255.0
    y = np.asarray(train.labels[:n], np.int32)
    cases = set(config.cases)
    rows = []
    if "pca" in cases:
        rows += pca_rows(x, size["components"], repeats)
    if "fit" in cases:
        rows.append(logreg_row(x, y, size["n_fit"], repeats))
    if "cv" in cases:
        rows.append(cv_row(x, y, size["folds"], min(repeats, 1)))
    header = ["case", "anchor", "ours s", "anchor s", "ratio", "compile s", "agreement"]
    body = [
        [r["case"], r["anchor"], f"{r['ours_s']:.3f}", f"{r['anchor_s']:.3f}", f"{r['ratio']:.2f}",
         f"{r['compile_s']:.2f}", f"{r['agreement']:.2e}"]
        for r in rows
    ]  # fmt: skip
    print("\n".join(markdown_table(header, body, align="llrrrrr")))
    for r in rows:
        extra = {k: v for k, v in r.items() if k not in {"case", "anchor", "ours_s", "anchor_s",
                                                       "ratio", "compile_s", "agreement"}}  # fmt: skip
        if extra:
            print(f"{r['case']}: {extra}")
    write_rows(rows, config.out, "linear")
    return 0


if __name__ == "__main__":
    reexec_with_tuned_malloc()  # huge pages for XLA's per-call buffers (mljax.malloc_tuning)
    raise SystemExit(main())
