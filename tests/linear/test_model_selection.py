"""Tests of mljax.linear.model_selection against scikit-learn's cross-validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import PredefinedSplit, cross_val_score

from mljax.linear import logistic_regression as lr
from mljax.linear import model_selection as ms


@pytest.fixture(autouse=True)
def _strict_jax():
    with jax.numpy_rank_promotion("raise"):
        yield


def _data(n=300, d=10, k=3, seed=0):
    x, y = make_classification(
        n, d, n_informative=min(6, d), n_redundant=min(2, d - min(6, d)), n_classes=k,
        n_clusters_per_class=1,
        class_sep=0.7, random_state=seed,
    )  # fmt: skip
    return x, y.astype(np.int32)


@pytest.mark.parametrize("n_folds", [2, 3, 5])
def test_stratified_folds_are_balanced_and_random(n_folds):
    y = np.repeat(np.arange(4), [50, 31, 17, 9]).astype(np.int32)
    f = np.asarray(ms.stratified_kfold(jax.random.key(0), y, n_folds))
    sizes = np.bincount(f, minlength=n_folds)
    assert sizes.sum() == len(y) and sizes.max() - sizes.min() <= 1
    for c in range(4):
        per_fold = np.bincount(f[y == c], minlength=n_folds)
        assert per_fold.max() - per_fold.min() <= 1
    again = np.asarray(ms.stratified_kfold(jax.random.key(0), y, n_folds))
    other = np.asarray(ms.stratified_kfold(jax.random.key(1), y, n_folds))
    np.testing.assert_array_equal(f, again)
    assert np.any(f != other)


@pytest.mark.slow
def test_cross_validate_equals_sklearn_on_the_same_folds(x64):
    x, y = _data(300, 10, 3, seed=1)
    folds = ms.stratified_kfold(jax.random.key(2), y, 4)
    ours = ms.logreg_cross_validate(x, y, folds, n_folds=4, C=0.5, tol=1e-10, max_iter=3000)
    sk = cross_val_score(
        LogisticRegression(C=0.5, tol=1e-10, max_iter=3000), x, y,
        cv=PredefinedSplit(np.asarray(folds)),
    )  # fmt: skip
    np.testing.assert_allclose(ours.scores, sk, atol=1e-12)
    assert ours.models.coef.shape == (4, 3, 10)


def test_generic_cross_validate_with_a_closed_form_model(x64):
    """fit = weighted class means, score = weighted accuracy of the nearest mean: checked
    against a NumPy loop over folds."""
    x, y = _data(240, 4, 3, seed=4)
    folds = np.asarray(ms.stratified_kfold(jax.random.key(0), y, 3))

    def fit(x, y, w):
        onehot = jax.nn.one_hot(y, 3, dtype=x.dtype) * w[:, None]
        return (onehot.T @ x) / jnp.sum(onehot, axis=0)[:, None]

    def score(means, x, y, w):
        d2 = jnp.sum((x[:, None, :] - means[None]) ** 2, axis=-1)
        return jnp.sum(w * (jnp.argmin(d2, axis=1) == y)) / jnp.sum(w)

    res = ms.cross_validate(fit, score, x, y, folds)
    for f in range(3):
        tr, te = folds != f, folds == f
        means = np.stack([x[tr & (y == c)].mean(0) for c in range(3)])
        pred = np.argmin(((x[te][:, None] - means[None]) ** 2).sum(-1), axis=1)
        np.testing.assert_allclose(res.scores[f], np.mean(pred == y[te]), atol=1e-12)
        np.testing.assert_allclose(res.models[f], means, atol=1e-12)


@pytest.mark.slow
def test_pca_size_sweep_equals_separate_pca_fits(x64):
    x, y = _data(300, 12, 3, seed=5)
    folds = ms.stratified_kfold(jax.random.key(3), y, 3)
    sizes = (1, 3, 7)
    res = ms.pca_size_sweep(x, y, sizes, folds, n_folds=3, C=2.0, tol=1e-10, max_iter=3000)
    assert res.scores.shape == (3, 3)
    for i, m in enumerate(sizes):
        z = PCA(m, svd_solver="full").fit_transform(x)
        sk = cross_val_score(
            LogisticRegression(C=2.0, tol=1e-10, max_iter=3000), z, y,
            cv=PredefinedSplit(np.asarray(folds)),
        )  # fmt: skip
        np.testing.assert_allclose(res.scores[i], sk, atol=1e-12)


@pytest.mark.parametrize(
    "n_folds,match",
    [(1, "n_folds must be an int >= 2"), (6, "smallest class count"), (2.0, "n_folds")],
)
def test_bad_folds(n_folds, match):
    y = np.repeat(np.arange(3), [10, 10, 5]).astype(np.int32)
    with pytest.raises(ValueError, match=match):
        ms.stratified_kfold(jax.random.key(0), y, n_folds)


def test_bad_sweep_arguments():
    x, y = _data(60, 5, 3, seed=0)
    folds = ms.stratified_kfold(jax.random.key(0), y, 3)
    with pytest.raises(ValueError, match="C"):
        ms.pca_size_sweep(x, y, (2,), folds, n_folds=3, C=0.0)
    with pytest.raises(ValueError, match="sizes"):
        ms.pca_size_sweep(x, y, (0, 2), folds, n_folds=3)
    with pytest.raises(ValueError, match="sizes"):
        ms.pca_size_sweep(x, y, (6,), folds, n_folds=3)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="x contains NaN"):
        ms.logreg_cross_validate(bad, y, folds, n_folds=3)
    with pytest.raises(ValueError, match="labels in 0..n_classes-1"):
        ms.logreg_cross_validate(x, y, folds, n_folds=3, n_classes=2)
    with pytest.raises(ValueError, match="smallest class count"):
        ms.logreg_cross_validate(x, y, folds, n_folds=30)


def test_score_uses_only_held_out_rows():
    x, y = _data(90, 4, 3, seed=2)
    m = lr.fit(x.astype(np.float32), y)
    w = (np.arange(90) < 30).astype(np.float32)
    np.testing.assert_allclose(
        float(lr.score(m, x.astype(np.float32), y, w)),
        float(lr.score(m, x[:30].astype(np.float32), y[:30])),
        atol=1e-7,
    )
