"""Smoke test of experiments.pca_logreg --quick (needs Fashion-MNIST, installed by Debian here)."""

import json

import numpy as np
import pytest

import experiments
from experiments import pca_logreg
from mljax.experiment import cli_main


@pytest.mark.realdata("fashion_mnist")
@pytest.mark.slow
def test_quick_run_writes_metrics_and_figures(tmp_path):
    out = tmp_path / "e7"
    assert cli_main(pca_logreg, ["--quick", "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    # PCA(2) + k-means finds some of the class structure, far from all (the report's overlap).
    assert 0.1 < m["pca_kmeans"]["ari"] < 0.6
    cv = m["cv"]
    assert set(cv) == {"2", "5", "10", "none"}
    for v in cv.values():
        assert set(v) == {"cv_acc_mean", "cv_acc_std", "test_acc", "seconds_per_fold"}
        assert 0.3 < v["cv_acc_mean"] <= 1 and 0 <= v["cv_acc_std"] < 0.1
        assert 0.3 < v["test_acc"] <= 1 and v["seconds_per_fold"] > 0
    # More components: higher accuracy (the report's Figure 13), pixels best of all.
    accs = [cv[k]["cv_acc_mean"] for k in ("2", "5", "10", "none")]
    assert np.all(np.diff(accs) > 0)
    for fig in ("pca2_kmeans.png", "accuracy_vs_components.png"):
        assert (out / fig).stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "≈ 85 %" in report and "≈ 90 s" in report


def test_registered():
    info = experiments.get("pca_logreg")
    assert info.spec == "E7" and info.load() is pca_logreg


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(pca_logreg, ["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--components", "--folds", "--C", "--max-iter", "--data-dir", "--quick"):
        assert opt in text


@pytest.mark.parametrize(
    "args", [["--folds", "1"], ["--C", "0"], ["--components", "0"], ["--max-iter", "0"]]
)
def test_bad_option_is_an_error(args):
    assert cli_main(pca_logreg, [*args, "--quick"]) == 2
