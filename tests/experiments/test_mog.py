"""Smoke test of experiments.mog --quick (needs Fashion-MNIST, installed by Debian here)."""

import json

import numpy as np
import pytest

from experiments import mog
from mljax.experiment import cli_main


@pytest.mark.realdata("fashion_mnist")
@pytest.mark.slow
def test_quick_run_writes_metrics_and_figures(tmp_path):
    out = tmp_path / "e9"
    assert cli_main(mog, ["--quick", "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["init"]) == {"rand_const", "kmeans"}
    for v in m["init"].values():
        assert set(v) == {"final_ll_mean", "n_iter_mean"}
        assert np.isfinite(v["final_ll_mean"]) and 1 <= v["n_iter_mean"] <= 15
    c = m["classifier"]
    assert set(c) == {"K", "train_error", "val_error", "test_error"}
    assert len(c["K"]) == len(c["train_error"]) == len(c["val_error"]) == len(c["test_error"])
    # Far better than chance (0.9) on 10 classes, as the report's error curves are.
    assert max(c["test_error"]) < 0.45 and max(c["val_error"]) < 0.45
    # More components fit the training set at least as well (the report's 4.4b).
    assert c["train_error"][-1] <= c["train_error"][0] + 0.02
    for fig in ("init_loglik.png", "classifier_error.png"):
        assert (out / fig).stat().st_size > 1000


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(mog, ["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--min-variance" in text and "--rand-const" in text and "--ks" in text


def test_bad_option_is_an_error():
    assert cli_main(mog, ["--classifier-init", "pca", "--quick"]) == 2
