"""Smoke test of experiments.gmm_vs_kmeans --quick against the seed report's claims."""

import json

import jax
import numpy as np
import pytest

from experiments import gmm_vs_kmeans
from mljax.data import toy
from mljax.experiment import cli_main

SCHEMA = {
    "gmm": {"ari_mean", "ari_std", "log_likelihood_mean", "n_iter_mean"},
    "kmeans": {"ari_mean", "ari_std", "inertia_mean", "n_iter_mean"},
}


@pytest.mark.slow
def test_quick_run_writes_metrics_and_figures(tmp_path):
    out = tmp_path / "e1"
    assert cli_main(gmm_vs_kmeans, ["--quick", "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["restarts"] == 5
    for k in ("k3", "k4"):
        for part in (m[k], m["single_run"][k]):  # best of restarts, and the single-run protocol
            assert {name: set(v) for name, v in part.items()} == SCHEMA
            assert 1 <= part["gmm"]["n_iter_mean"] <= 200
            assert -1 <= part["kmeans"]["ari_mean"] <= 1
        # Per seed the best restart includes the single run, so its objective is no worse.
        assert (
            m[k]["gmm"]["log_likelihood_mean"] >= m["single_run"][k]["gmm"]["log_likelihood_mean"]
        )
        assert m[k]["kmeans"]["inertia_mean"] <= m["single_run"][k]["kmeans"]["inertia_mean"]
    # The seed: at k = 4 both methods recover the blobs (best restart by objective).
    assert m["best_of_seeds"]["k4"]["gmm_ari"] > 0.95
    assert m["best_of_seeds"]["k4"]["kmeans_ari"] > 0.95
    # Four blobs are explained better by four components than by three.
    assert m["k4"]["kmeans"]["inertia_mean"] < m["k3"]["kmeans"]["inertia_mean"]
    for fig in ("gmm_ellipses.png", "assignments.png"):
        assert (out / fig).stat().st_size > 1000
    assert "adjusted Rand index" in (out / "report.md").read_text()


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(gmm_vs_kmeans, ["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--max-iter" in text and "--cluster-std" in text and "--restarts" in text


def test_bad_option_is_an_error():
    assert cli_main(gmm_vs_kmeans, ["--tol", "-1", "--quick"]) == 2
    assert cli_main(gmm_vs_kmeans, ["--restarts", "0", "--quick"]) == 2


@pytest.mark.slow
def test_restarts_keep_the_best_start_and_the_single_run():
    """fit_seeds with R restarts against R separate single-start calls (the reference)."""
    x, y, _ = toy.blobs(jax.random.key(0), 300, 4, cluster_std=1.5)
    keys = jax.random.split(jax.random.key(1), 2)
    kw = {"max_iter": 20, "tol": 1e-6}
    best, single = gmm_vs_kmeans.fit_seeds(keys, x, y, 3, restarts=3, **kw)
    for s, key in enumerate(keys):
        rk = gmm_vs_kmeans.restart_keys(key, 3)
        sep, _ = gmm_vs_kmeans.fit_seeds(rk, x, y, 3, restarts=1, **kw)
        ig, ik = int(np.argmax(sep["gmm_ll"])), int(np.argmin(sep["km_inertia"]))
        np.testing.assert_allclose(best["gmm_ll"][s], sep["gmm_ll"][ig], rtol=1e-5)
        np.testing.assert_allclose(best["gmm_ari"][s], sep["gmm_ari"][ig], rtol=1e-5)
        np.testing.assert_allclose(best["km_inertia"][s], sep["km_inertia"][ik], rtol=1e-5)
        np.testing.assert_allclose(best["km_ari"][s], sep["km_ari"][ik], rtol=1e-5)
        # The single run is restart 0, whose key is the seed's own key.
        np.testing.assert_allclose(single["gmm_ll"][s], sep["gmm_ll"][0], rtol=1e-5)
        np.testing.assert_allclose(single["km_inertia"][s], sep["km_inertia"][0], rtol=1e-5)
