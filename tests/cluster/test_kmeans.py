"""Tests of mljax.cluster.kmeans against scikit-learn's KMeans (Lloyd) and closed forms."""

import functools

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from sklearn.cluster import KMeans
from sklearn.cluster import kmeans_plusplus as sk_kmeans_plusplus
from sklearn.datasets import make_blobs

from mljax.cluster import kmeans


@pytest.fixture(autouse=True)
def _strict_jax():
    with jax.numpy_rank_promotion("raise"):
        yield


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _blobs(n, d, centers, std, seed):
    x, y = make_blobs(n, n_features=d, centers=centers, cluster_std=std, random_state=seed)
    return x, y


# name, n, d, true centres, std, k, tol, weighted
PARITY_CASES = [
    ("2d_separated_k3", 600, 2, 3, 0.8, 3, 1e-4, False),
    ("5d_overlapping_k7", 1500, 5, 5, 3.0, 7, 1e-4, False),
    ("tol0_runs_to_strict", 800, 3, 4, 2.5, 6, 0.0, False),
    ("weighted", 700, 4, 4, 2.0, 5, 1e-4, True),
    ("loose_tol", 1000, 2, 6, 1.5, 6, 1e-1, False),
    # d >= 128 takes the one-hot-matmul path for the cluster sums instead of the scatter.
    ("wide_rows_weighted", 300, 130, 3, 6.0, 4, 1e-4, True),
]


@pytest.mark.parametrize(
    "name,n,d,centers,std,k,tol,weighted", PARITY_CASES, ids=[c[0] for c in PARITY_CASES]
)
def test_parity_with_sklearn_from_same_centroids(x64, name, n, d, centers, std, k, tol, weighted):
    x, _ = _blobs(n, d, centers, std, seed=len(name))
    rng = np.random.default_rng(len(name))
    c0 = x[rng.choice(n, k, replace=False)]
    w = rng.uniform(0.2, 3.0, n) if weighted else None
    sk = KMeans(k, init=c0, n_init=1, algorithm="lloyd", tol=tol, max_iter=300)
    sk.fit(x, sample_weight=w)
    ours = kmeans.fit(jax.random.key(0), x, k, init=c0, tol=tol, sample_weight=w)
    np.testing.assert_array_equal(np.asarray(ours.labels), sk.labels_)
    np.testing.assert_allclose(
        np.asarray(ours.centroids), sk.cluster_centers_, rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(float(ours.inertia), sk.inertia_, rtol=1e-9)
    assert int(ours.n_iter) == sk.n_iter_
    assert bool(ours.converged)


def test_max_iter_reached_is_not_converged(x64):
    x, _ = _blobs(1000, 2, 5, 3.0, seed=3)
    c0 = x[:6]
    sk = KMeans(6, init=c0, n_init=1, algorithm="lloyd", tol=0.0, max_iter=2).fit(x)
    ours = kmeans.fit(jax.random.key(0), x, 6, init=c0, tol=0.0, max_iter=2)
    assert int(ours.n_iter) == 2 and not bool(ours.converged)
    np.testing.assert_allclose(np.asarray(ours.centroids), sk.cluster_centers_, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(ours.labels), sk.labels_)


@pytest.mark.parametrize("chunk_size", [7, 64, 100_000])
def test_chunking_does_not_change_the_answer(x64, chunk_size):
    x, _ = _blobs(501, 3, 4, 1.5, seed=11)
    c0 = x[[0, 100, 200, 300, 400]]
    sk = KMeans(5, init=c0, n_init=1, algorithm="lloyd").fit(x)
    ours = kmeans.fit(jax.random.key(0), x, 5, init=c0, chunk_size=chunk_size)
    np.testing.assert_array_equal(np.asarray(ours.labels), sk.labels_)
    np.testing.assert_allclose(float(ours.inertia), sk.inertia_, rtol=1e-9)


def test_empty_cluster_moves_to_farthest_point_as_sklearn(x64):
    # A centre far from all the data is empty after the first assignment step.
    x, _ = _blobs(400, 2, 3, 1.0, seed=5)
    c0 = np.concatenate([x[:3], np.array([[1e3, 1e3]])])
    sk = KMeans(4, init=c0, n_init=1, algorithm="lloyd").fit(x)
    ours = kmeans.fit(jax.random.key(0), x, 4, init=c0)
    np.testing.assert_array_equal(np.asarray(ours.labels), sk.labels_)
    np.testing.assert_allclose(np.asarray(ours.centroids), sk.cluster_centers_, rtol=1e-6)
    np.testing.assert_allclose(float(ours.inertia), sk.inertia_, rtol=1e-9)
    # No cluster is left empty.
    assert len(np.unique(np.asarray(ours.labels))) == 4


def test_empty_cluster_first_step_closed_form(x64):
    # Points 0, 1, 10 and centres {0, 1, 100}: centre 2 is empty; the farthest point from its
    # own centre is 10 (distance 81 to centre 1), so after one step the centres are
    # {0, 1, 10} and the inertia is 0.
    x = np.array([[0.0], [1.0], [10.0]])
    c0 = np.array([[0.0], [1.0], [100.0]])
    ours = kmeans.fit(jax.random.key(0), x, 3, init=c0, max_iter=1)
    np.testing.assert_allclose(np.sort(np.asarray(ours.centroids)[:, 0]), [0.0, 1.0, 10.0])
    assert float(ours.inertia) == 0.0


def test_k1_is_the_weighted_mean(x64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    w = rng.uniform(0.1, 2.0, 50)
    r = kmeans.fit(jax.random.key(0), x, 1, sample_weight=w)
    mean = (w[:, None] * x).sum(0) / w.sum()
    np.testing.assert_allclose(np.asarray(r.centroids)[0], mean, rtol=1e-12)
    np.testing.assert_allclose(float(r.inertia), (w * ((x - mean) ** 2).sum(1)).sum(), rtol=1e-12)


def test_sample_weight_equals_repeated_points(x64):
    rng = np.random.default_rng(1)
    x, _ = _blobs(300, 3, 4, 2.0, seed=2)
    reps = rng.integers(1, 4, size=300)
    x_rep = np.repeat(x, reps, axis=0)
    c0 = x[:5]
    a = kmeans.fit(jax.random.key(0), x, 5, init=c0, sample_weight=reps.astype(float))
    b = kmeans.fit(jax.random.key(0), x_rep, 5, init=c0)
    np.testing.assert_allclose(np.asarray(a.centroids), np.asarray(b.centroids), rtol=1e-10)
    np.testing.assert_allclose(float(a.inertia), float(b.inertia), rtol=1e-10)
    np.testing.assert_array_equal(np.repeat(np.asarray(a.labels), reps), np.asarray(b.labels))


def test_kmeans_plusplus_potential_comparable_to_sklearn(x64):
    # Greedy k-means++ is random; compare the distribution of the seeding potential over
    # 30 seeds with scikit-learn's implementation of the same algorithm, and with random rows.
    x, _ = _blobs(1500, 2, 10, 0.5, seed=0)
    k = 10

    def potential(c):
        d2 = ((x[:, None, :] - np.asarray(c)[None]) ** 2).sum(-1)
        return d2.min(1).sum()

    ours = [potential(kmeans.kmeans_plusplus(jax.random.key(s), x, k)) for s in range(30)]
    theirs = [potential(sk_kmeans_plusplus(x, k, random_state=s)[0]) for s in range(30)]
    rand = [
        potential(x[np.random.default_rng(s).choice(1500, k, replace=False)]) for s in range(30)
    ]
    m_o, m_t, m_r = np.mean(ours), np.mean(theirs), np.mean(rand)
    se = np.sqrt(np.var(ours) / 30 + np.var(theirs) / 30)
    assert abs(m_o - m_t) < 3 * se + 0.05 * m_t, (m_o, m_t, se)
    assert m_o < 0.5 * m_r
    # Every seed is a data row.
    c = np.asarray(kmeans.kmeans_plusplus(jax.random.key(0), x, k))
    assert all(np.any(np.all(x == ci, axis=1)) for ci in c)


def test_kmeanspp_fit_inertia_comparable_to_sklearn(x64):
    x, _ = _blobs(2000, 2, 8, 1.0, seed=4)
    ours = [float(kmeans.fit(jax.random.key(s), x, 8).inertia) for s in range(10)]
    theirs = [
        KMeans(8, n_init=1, algorithm="lloyd", random_state=s).fit(x).inertia_ for s in range(10)
    ]
    assert np.mean(ours) <= 1.05 * np.mean(theirs)


def test_n_init_returns_best_of_the_split_key_runs(x64):
    x, _ = _blobs(600, 2, 6, 1.5, seed=9)
    key = jax.random.key(3)
    best = kmeans.fit(key, x, 6, n_init=5, init="random")
    singles = [kmeans.fit(kk, x, 6, init="random") for kk in jax.random.split(key, 5)]
    inertias = [float(s.inertia) for s in singles]
    np.testing.assert_allclose(float(best.inertia), min(inertias), rtol=1e-12)
    i = int(np.argmin(inertias))
    np.testing.assert_allclose(np.asarray(best.centroids), np.asarray(singles[i].centroids))
    # Every restart's objective and iteration count, in split-key order, as its single run.
    np.testing.assert_allclose(np.asarray(best.restart_inertia), inertias, rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(best.restart_n_iter), [int(s.n_iter) for s in singles])
    np.testing.assert_array_equal(np.asarray(singles[0].restart_n_iter), [int(singles[0].n_iter)])


def test_restarts_with_and_without_empty_clusters_each_equal_their_single_run(x64):
    """Half the rows share one value, so a random init often draws two equal centres and one
    cluster starts empty: the restarts that relocate and those that do not, vmapped together
    (one shared branch predicate), each give their single run's result bit for bit."""
    rng = np.random.default_rng(4)
    x = np.concatenate([np.zeros((60, 2)), rng.normal(size=(60, 2)) * 3.0])
    key = jax.random.key(11)
    keys = jax.random.split(key, 6)
    starts = [np.asarray(kmeans._random_init(kk, jnp.asarray(x), jnp.ones(120), 4)) for kk in keys]
    empty_at_start = [len(np.unique(c, axis=0)) < 4 for c in starts]
    assert any(empty_at_start) and not all(empty_at_start), empty_at_start
    best = kmeans.fit(key, x, 4, init="random", n_init=6)
    singles = [kmeans.fit(kk, x, 4, init="random") for kk in keys]
    np.testing.assert_array_equal(
        np.asarray(best.restart_inertia), [float(s.inertia) for s in singles]
    )
    np.testing.assert_array_equal(np.asarray(best.restart_n_iter), [int(s.n_iter) for s in singles])


def test_restarts_run_the_relocation_top_k_only_as_a_branch():
    """Under the restarts' vmap the relocation (a top-k over all n points) stays inside a
    ``cond``: a per-restart predicate would have turned it into a select that runs it on
    every iteration."""
    x = np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32)

    def top_k_in_loop_outside_cond(jaxpr, in_loop=False, in_cond=False):
        """top_k ops inside the Lloyd while-loop but not under a cond (the random init's own
        top-k runs once, before the loop)."""
        found = 0
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            found += name == "top_k" and in_loop and not in_cond
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                found += top_k_in_loop_outside_cond(
                    sub, in_loop or name == "while", in_cond or name == "cond"
                )
        return found

    for n_init in (1, 4):
        static = dict(k=3, init="random", n_init=n_init, max_iter=5, chunk_size=128)
        fit = functools.partial(kmeans._fit_impl, **static)
        jaxpr = jax.make_jaxpr(fit)(jax.random.key(0), x, jnp.ones(300), jnp.float32(1e-4), None)
        assert top_k_in_loop_outside_cond(jaxpr.jaxpr) == 0, n_init


def test_restarts_get_a_chunk_whose_distance_block_fits_the_restart_budget():
    """Closed form of the default chunk: a single run keeps ``[chunk, k]`` within 2**22 and
    ``[chunk, d]`` within 2**20 elements; n_init vmapped restarts keep ``[chunk, n_init · k]``
    within 2**20; chunks are balanced over n."""

    def expected(n, k, d, r):
        rows = max(256, min((1 << 22 if r == 1 else 1 << 20) // (k * r), (1 << 20) // d))
        return -(-n // -(-n // rows))

    for n, k, d, r in [(200_000, 32, 32, 1), (200_000, 32, 32, 8), (200_000, 8, 2, 1),
                       (200_000, 8, 2, 8), (60_000, 10, 784, 8), (1_000, 50, 3, 64)]:  # fmt: skip
        c = kmeans.auto_chunk_size(n, k, d, r)
        assert c == expected(n, k, d, r), (n, k, d, r)
        assert c * k * r <= max((1 << 22 if r == 1 else 1 << 20), 256 * k * r)
    assert kmeans.auto_chunk_size(200_000, 32, 32, 8) == 4082
    assert kmeans.auto_chunk_size(200_000, 32, 32) == 28572


def test_random_init_picks_distinct_rows(x64):
    x = np.arange(20.0).reshape(10, 2)
    r = kmeans.fit(jax.random.key(0), x, 10, init="random", max_iter=1)
    # k = n distinct rows: every point is its own centre, inertia 0.
    assert float(r.inertia) == 0.0
    assert len(np.unique(np.asarray(r.labels))) == 10


def test_predict_and_transform_match_sklearn(x64):
    x, _ = _blobs(500, 4, 5, 2.0, seed=6)
    sk = KMeans(5, n_init=1, random_state=0, algorithm="lloyd").fit(x)
    c = sk.cluster_centers_
    xt, _ = _blobs(200, 4, 5, 2.0, seed=7)
    np.testing.assert_array_equal(np.asarray(kmeans.predict(xt, c)), sk.predict(xt))
    np.testing.assert_allclose(np.asarray(kmeans.transform(xt, c)), sk.transform(xt), rtol=1e-9)
    np.testing.assert_array_equal(np.asarray(kmeans.predict(xt, c, chunk_size=33)), sk.predict(xt))


DEGENERATE = [
    ("all_duplicates", np.ones((30, 3)), 3),
    ("k_equals_n", np.random.default_rng(0).normal(size=(6, 2)), 6),
    ("constant_feature", np.c_[np.random.default_rng(1).normal(size=(40, 2)), np.zeros(40)], 4),
    ("d_greater_than_n", np.random.default_rng(2).normal(size=(5, 50)), 3),
    ("fewer_distinct_than_k", np.repeat(np.eye(2), 10, axis=0), 4),
]


# Each case with k-means++; "random" on the two cases where it draws from duplicates.
DEGENERATE_RUNS = [(*c, "k-means++") for c in DEGENERATE] + [
    (*c, "random") for c in DEGENERATE if c[0] in ("all_duplicates", "fewer_distinct_than_k")
]


@pytest.mark.parametrize(
    "name,x,k,init", DEGENERATE_RUNS, ids=[f"{c[0]}-{c[3]}" for c in DEGENERATE_RUNS]
)
def test_degenerate_inputs_are_finite(name, x, k, init):
    r = kmeans.fit(jax.random.key(0), x.astype(np.float32), k, init=init)
    chex.assert_shape([r.centroids, r.labels], [(k, x.shape[1]), (x.shape[0],)])
    chex.assert_tree_all_finite((r.centroids, r.inertia))
    assert float(r.inertia) >= 0
    labels = np.asarray(r.labels)
    assert labels.min() >= 0 and labels.max() < k
    if name in ("all_duplicates", "k_equals_n", "fewer_distinct_than_k"):
        assert float(r.inertia) == pytest.approx(0.0, abs=1e-5)


def test_float32_agrees_with_float64():
    x, _ = _blobs(3000, 8, 6, 1.0, seed=8)
    x = x + 1e3  # a large offset: the expansion would lose precision without centring
    c0 = x[np.random.default_rng(0).choice(3000, 6, replace=False)]
    r32 = kmeans.fit(jax.random.key(0), x.astype(np.float32), 6, init=c0.astype(np.float32))
    assert r32.centroids.dtype == jnp.float32
    sk = KMeans(6, init=c0, n_init=1, algorithm="lloyd").fit(x)
    assert np.mean(np.asarray(r32.labels) == sk.labels_) > 0.999
    np.testing.assert_allclose(float(r32.inertia), sk.inertia_, rtol=1e-4)


# --------------------------------------------------------------------------- jit / vmap


class JitVariantsTest(chex.TestCase):
    """``fit``, ``predict`` and ``transform`` with and without an outer jit (chex variants)
    against scikit-learn and closed forms."""

    def setUp(self):
        super().setUp()
        self.enter_context(jax.enable_x64(True))
        self.enter_context(jax.numpy_rank_promotion("raise"))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("kmeans++", "k-means++"), ("given_centroids", "array"))
    def test_fit_matches_sklearn(self, init):
        x, _ = _blobs(300, 2, 3, 1.0, seed=1)
        rows = np.array([0, 100, 200])
        c0 = x[rows]
        fit = self.variant(
            lambda key, x: kmeans.fit(key, x, 3, init=x[rows] if init == "array" else init)
        )
        res = fit(jax.random.key(2), x)
        chex.assert_shape([res.centroids, res.labels], [(3, 2), (300,)])
        if init == "array":
            sk = KMeans(3, init=c0, n_init=1, algorithm="lloyd").fit(x)
        else:  # the same seeds as the outer-jit-free call, then scikit-learn's Lloyd from them
            seeds = kmeans.kmeans_plusplus(jax.random.key(2), x, 3)
            sk = KMeans(3, init=np.asarray(seeds), n_init=1, algorithm="lloyd").fit(x)
        chex.assert_trees_all_close(res.centroids, sk.cluster_centers_, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(res.labels), sk.labels_)
        np.testing.assert_allclose(float(res.inertia), sk.inertia_, rtol=1e-9)

    @chex.variants(with_jit=True, without_jit=True)
    def test_predict_transform(self):
        x, _ = _blobs(100, 3, 3, 1.0, seed=2)
        c = x[:4]
        ref_d = np.sqrt(((x[:, None] - c[None]) ** 2).sum(-1))
        lab = self.variant(kmeans.predict)(x, c)
        dist = self.variant(kmeans.transform)(x, c)
        np.testing.assert_array_equal(np.asarray(lab), ref_d.argmin(1))
        chex.assert_trees_all_close(dist, ref_d, rtol=1e-9, atol=1e-9)


@pytest.mark.slow
def test_fit_under_vmap_over_keys_and_datasets(x64):
    x, _ = _blobs(300, 2, 3, 1.0, seed=1)
    keys = jax.random.split(jax.random.key(0), 3)
    batched = jax.vmap(lambda key: kmeans.fit(key, x, 3))(keys)
    for i in range(3):
        single = kmeans.fit(keys[i], x, 3)
        np.testing.assert_allclose(np.asarray(batched.centroids[i]), np.asarray(single.centroids))
        assert int(batched.n_iter[i]) == int(single.n_iter)
    xs = np.stack([x, x[::-1] * 2.0])
    batched = jax.vmap(lambda xi: kmeans.fit(jax.random.key(0), xi, 3, init=xi[:3]))(xs)
    for i in range(2):
        sk = KMeans(3, init=xs[i][:3], n_init=1, algorithm="lloyd").fit(xs[i])
        np.testing.assert_allclose(float(batched.inertia[i]), sk.inertia_, rtol=1e-9)


def test_tol_is_traceable_and_vmappable(x64):
    x, _ = _blobs(800, 2, 5, 2.5, seed=12)
    c0 = x[:5]
    tols = jnp.array([1e-1, 1e-4, 0.0])
    batched = jax.vmap(lambda t: kmeans.fit(jax.random.key(0), x, 5, init=c0, tol=t))(tols)
    for i, t in enumerate([1e-1, 1e-4, 0.0]):
        sk = KMeans(5, init=c0, n_init=1, algorithm="lloyd", tol=t).fit(x)
        assert int(batched.n_iter[i]) == sk.n_iter_


def test_predict_transform_under_vmap(x64):
    x, _ = _blobs(100, 3, 3, 1.0, seed=2)
    cs = np.stack([x[:4], x[:4] + 0.5])
    labs = jax.vmap(kmeans.predict, in_axes=(None, 0))(x, cs)
    dists = jax.vmap(kmeans.transform, in_axes=(None, 0))(x, cs)
    for i, c in enumerate(cs):
        ref_d = np.sqrt(((x[:, None] - c[None]) ** 2).sum(-1))
        np.testing.assert_array_equal(np.asarray(labs[i]), ref_d.argmin(1))
        chex.assert_trees_all_close(dists[i], ref_d, rtol=1e-9, atol=1e-9)


def test_lloyd_iteration_is_traced_once_per_compiled_fit(monkeypatch):
    """One trace of the Lloyd iteration serves every iteration, every vmapped restart and
    later calls with other keys, tolerances and weights."""
    traces = []
    iteration = kmeans._lloyd_iteration

    def counted(*args, **kwargs):
        traces.append(1)
        return iteration(*args, **kwargs)

    monkeypatch.setattr(kmeans, "_lloyd_iteration", chex.assert_max_traces(counted, n=1))
    x, _ = _blobs(233, 2, 6, 3.0, seed=4)  # a shape no other test compiles
    x = x.astype(np.float32)
    runs = [
        kmeans.fit(jax.random.key(s), x, 5, n_init=3, tol=tol, sample_weight=w)
        for s, tol, w in ((0, 0.0, None), (1, 1e-2, np.full(233, 2.0, np.float32)))
    ]
    assert len(traces) == 1
    assert int(runs[0].n_iter) > 1  # the body ran more than once on that one trace


# --------------------------------------------------------------------------- bad input

GOOD_X = np.random.default_rng(0).normal(size=(20, 2))
BAD_INPUTS = [
    ("x_1d", dict(x=np.ones(5), k=2), "x must be 2-D"),
    ("x_nan", dict(x=np.where(np.eye(20, 2) > 0, np.nan, GOOD_X), k=2), "NaN"),
    ("x_inf", dict(x=np.where(np.eye(20, 2) > 0, np.inf, GOOD_X), k=2), "inf"),
    ("k_zero", dict(x=GOOD_X, k=0), "k must satisfy"),
    ("k_above_n", dict(x=GOOD_X, k=21), "k must satisfy"),
    ("k_float", dict(x=GOOD_X, k=2.0), "k must be"),
    ("init_unknown", dict(x=GOOD_X, k=2, init="kmeans||"), "init must be one of"),
    ("init_shape", dict(x=GOOD_X, k=2, init=np.zeros((3, 2))), "init centroids must have shape"),
    ("weight_shape", dict(x=GOOD_X, k=2, sample_weight=np.ones(19)), "sample_weight must have"),
    ("weight_negative", dict(x=GOOD_X, k=2, sample_weight=-np.ones(20)), "sample_weight must be"),
    ("n_init_zero", dict(x=GOOD_X, k=2, n_init=0), "n_init"),
    ("max_iter_zero", dict(x=GOOD_X, k=2, max_iter=0), "max_iter"),
    ("tol_negative", dict(x=GOOD_X, k=2, tol=-1.0), "tol"),
]


@pytest.mark.parametrize("name,kwargs,match", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_value_error(name, kwargs, match):
    kwargs = dict(kwargs)
    x, k = kwargs.pop("x"), kwargs.pop("k")
    with pytest.raises(ValueError, match=match):
        kmeans.fit(jax.random.key(0), x, k, **kwargs)


def test_predict_bad_centroids():
    with pytest.raises(ValueError, match="centroids must have shape"):
        kmeans.predict(GOOD_X, np.zeros((3, 5)))


def test_zero_weights_equal_dropping_the_points(x64):
    # Zero-weight rows (e.g. other classes masked out) must not move centres nor be chosen
    # to refill an empty cluster; the far centre below is empty after the first step.
    x, _ = _blobs(400, 2, 3, 1.0, seed=13)
    keep = np.arange(400) % 3 != 0
    c0 = np.concatenate([x[keep][:3], [[50.0, 50.0]]])
    w = keep.astype(float)
    masked = kmeans.fit(jax.random.key(0), x, 4, init=c0, sample_weight=w)
    subset = KMeans(4, init=c0, n_init=1, algorithm="lloyd").fit(x[keep])
    np.testing.assert_allclose(np.asarray(masked.centroids), subset.cluster_centers_, rtol=1e-6)
    np.testing.assert_allclose(float(masked.inertia), subset.inertia_, rtol=1e-9)
    np.testing.assert_array_equal(np.asarray(masked.labels)[keep], subset.labels_)
    pp = np.asarray(kmeans.kmeans_plusplus(jax.random.key(1), x, 4, sample_weight=w))
    assert all(np.any(np.all(x[keep] == c, axis=1)) for c in pp)


def _fit_temp_bytes(n, d, k, chunk, init):
    x = jax.ShapeDtypeStruct((n, d), jnp.float32)

    def f(key, x):
        return kmeans.fit(key, x, k, init=init, chunk_size=chunk, max_iter=3)

    compiled = jax.jit(f).lower(jax.random.key(0), x).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("init", ["k-means++", "random"])
@pytest.mark.slow
def test_fit_memory_has_no_copy_of_x(init):
    """XLA's own buffer assignment: with the chunk fixed, 4x the rows adds only the O(n)
    labels / distances / k-means++ candidate rows, far less than a centred or padded copy of
    ``x`` (``4 d`` bytes a row)."""
    d, k, chunk = 64, 4, 1024
    small = _fit_temp_bytes(2**14, d, k, chunk, init)
    large = _fit_temp_bytes(2**16, d, k, chunk, init)
    per_row = (large - small) / (2**16 - 2**14)
    assert per_row < 0.5 * 4 * d, (small, large, per_row)


def test_restarts_share_one_wide_distance_product(lowered_text):
    """n_init restarts read each chunk of x once for all of them: in the lowered program the
    chunk [256, d] meets the stacked centroids of every restart [R, d, k] in one dot_general
    ([256, R, k] out), and no product batches x per restart."""
    d = kmeans.ELEMENTWISE_SCORES_MAX_D + 1  # the smallest d whose scores are a matmul
    x = np.random.default_rng(0).normal(size=(600, d)).astype(np.float32)
    lowered = lowered_text(kmeans, "_fit_jit")
    kmeans.fit(jax.random.key(0), x, 3, init="random", n_init=4, max_iter=2, chunk_size=256)
    dots = [ln for ln in lowered["text"].splitlines() if "dot_general" in ln]
    with_chunk = [ln for ln in dots if f"tensor<256x{d}xf32>" in ln]
    assert with_chunk and not any("batching_dims" in ln for ln in with_chunk)
    assert any(ln.rstrip().endswith("-> tensor<256x4x3xf32>") for ln in with_chunk)


def test_narrow_rows_score_without_a_matmul(lowered_text):
    """Up to ELEMENTWISE_SCORES_MAX_D features the scores are elementwise multiply-adds: no
    dot_general touches a chunk of x in the lowered fit (restarts included)."""
    d = kmeans.ELEMENTWISE_SCORES_MAX_D
    x = np.random.default_rng(0).normal(size=(600, d)).astype(np.float32)
    lowered = lowered_text(kmeans, "_fit_jit")
    kmeans.fit(jax.random.key(0), x, 3, init="random", n_init=4, max_iter=2, chunk_size=256)
    dots = [ln for ln in lowered["text"].splitlines() if "dot_general" in ln]
    assert not any(f"tensor<256x{d}xf32>" in ln for ln in dots)


@pytest.mark.parametrize("d", [1, 2, kmeans.ELEMENTWISE_SCORES_MAX_D, 5, 32])
def test_scores_equal_numpy_either_side_of_the_elementwise_limit(x64, d):
    """||c_j||²/2 - x·c_j, elementwise (d <= ELEMENTWISE_SCORES_MAX_D) or by a matmul, equals
    float64 numpy's, also vmapped over stacked centroids as the restarts run it."""
    rng = np.random.default_rng(d)
    x, c = rng.normal(size=(300, d)), rng.normal(size=(3, 7, d))
    half = 0.5 * np.sum(c**2, axis=-1)
    want = half[:, None, :] - np.einsum("nd,rkd->rnk", x, c)
    scores = jax.jit(jax.vmap(kmeans._scores, in_axes=(None, 0, 0)))
    got = scores(jnp.asarray(x), jnp.asarray(c), jnp.asarray(half))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "k", [1, 2, 8, kmeans.UNROLLED_ARGMIN_MAX_K, kmeans.UNROLLED_ARGMIN_MAX_K + 1, 40]
)
def test_first_argmin_is_numpys_first_index_on_ties_either_side_of_the_unroll_limit(k):
    """Both forms (column scan up to UNROLLED_ARGMIN_MAX_K, two reductions above) give numpy's
    argmin (the first index among equal minima) and the minimum, on scores with many ties."""
    d2 = np.random.default_rng(k).integers(0, 4, size=(300, k)).astype(np.float32)
    lab, m = jax.jit(kmeans._first_argmin)(jnp.asarray(d2))
    np.testing.assert_array_equal(np.asarray(lab), np.argmin(d2, axis=1))
    np.testing.assert_array_equal(np.asarray(m), d2.min(axis=1))
    assert lab.dtype == jnp.int32


@pytest.mark.parametrize("k", [3, kmeans.UNROLLED_ARGMIN_MAX_K + 4])
def test_predict_and_fit_programs_return_the_rows_best_scores(k):
    """predict's and fit's jitted programs return the rows' best scores (predict) and their
    weighted sum (fit's final pass) beside the labels, so that XLA materialises the row minimum
    instead of recomputing it inside the argmin's fusion (1.6-2x faster predict at 200k×32,
    K=32). The scores are ||c_j||²/2 - x·c_j with x and c centred on the centroids' mean (predict) or the
    data mean (fit): checked against numpy in float64, chunks not dividing n."""
    rng = np.random.default_rng(k)
    x = rng.normal(size=(517, 6)).astype(np.float32)
    c = x[:k] + 0.1

    def best_scores(x, c, shift):
        xc, cc = x.astype(np.float64) - shift, c.astype(np.float64) - shift
        return (0.5 * np.sum(cc * cc, axis=1)[None, :] - xc @ cc.T).min(axis=1)

    labels, scores = kmeans._predict(jnp.asarray(x), jnp.asarray(c), 100)
    np.testing.assert_array_equal(np.asarray(labels), np.asarray(kmeans.predict(x, c)))
    np.testing.assert_allclose(np.asarray(scores), best_scores(x, c, c.mean(0)), atol=1e-5)

    res, score_sum = kmeans._fit_jit(
        jax.random.key(0), jnp.asarray(x), jnp.ones(517), jnp.float32(0), None,
        k=k, init="random", n_init=1, max_iter=5, chunk_size=100,
    )  # fmt: skip
    want = best_scores(x, np.asarray(res.centroids), x.mean(0)).sum()
    np.testing.assert_allclose(float(score_sum), want, rtol=1e-5, atol=1e-3)
