"""Smoke test of experiments.gmm_vs_kmeans --quick against the seed report's claims."""

import json

import pytest

from experiments import gmm_vs_kmeans
from mljax.experiment import cli_main


def test_quick_run_writes_metrics_and_figures(tmp_path):
    out = tmp_path / "e1"
    assert cli_main(gmm_vs_kmeans, ["--quick", "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    for k in ("k3", "k4"):
        assert set(m[k]) == {"gmm", "kmeans"}
        assert set(m[k]["gmm"]) == {"ari_mean", "ari_std", "log_likelihood_mean", "n_iter_mean"}
        assert set(m[k]["kmeans"]) == {"ari_mean", "ari_std", "inertia_mean", "n_iter_mean"}
        assert 1 <= m[k]["gmm"]["n_iter_mean"] <= 200
        assert -1 <= m[k]["kmeans"]["ari_mean"] <= 1
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
    assert "--max-iter" in text and "--cluster-std" in text


def test_bad_option_is_an_error():
    assert cli_main(gmm_vs_kmeans, ["--tol", "-1", "--quick"]) == 2
