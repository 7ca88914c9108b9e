"""experiments.mnist_table (SPEC E4): selection rules by hand, the missing-data path and the
Fashion-MNIST fallback on small IDX files written here, and a quick run on the real MNIST."""

from __future__ import annotations

import dataclasses
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

import experiments
from experiments import mnist_table as mt
from experiments import reproduce
from mljax.data import images
from mljax.experiment import cli_main, execute

# ----------------------------------------------------------------------------- selection


def _stage(lr, seed, val, test, epochs_run=None):
    val, test = np.asarray(val, float), np.asarray(test, float)
    best = np.nanargmin(val, axis=1)
    runs = np.isfinite(val).sum(1) if epochs_run is None else np.asarray(epochs_run)
    return mt.Stage(
        lr=np.asarray(lr, float),
        seed=np.asarray(seed),
        history={"train_error": val, "val_error": val, "test_error": test},
        best_epoch=best,
        epochs_run=runs,
        diverged=np.zeros(len(lr), bool),
        test_error_best=test[np.arange(len(lr)), best],
        confusion=np.zeros((len(lr), 10, 10)),
        strategy="vmap",
        seconds=1.0,
    )


NAN = np.nan
# Two lrs × two seeds, three epochs. lr 0.1: best val 0.05 (seed 0, epoch 2) and 0.07
# (seed 1, epoch 1), mean 0.06; lr 0.01: best 0.04 and 0.10, mean 0.07 -> lr 0.1 chosen.
STAGE = _stage(
    [0.1, 0.1, 0.01, 0.01],
    [0, 1, 0, 1],
    [[0.20, 0.05, 0.06], [0.07, 0.08, NAN], [0.30, 0.20, 0.04], [0.30, 0.20, 0.10]],
    [[0.21, 0.06, 0.05], [0.09, 0.07, NAN], [0.31, 0.21, 0.03], [0.31, 0.21, 0.11]],
)


def test_choose_picks_lr_by_mean_best_validation_error_and_reads_test_at_each_best_epoch():
    ch = mt.choose(STAGE)
    assert ch.lr == 0.1
    assert ch.val_by_lr == pytest.approx({0.1: 0.06, 0.01: 0.07})
    np.testing.assert_array_equal(ch.members, [0, 1])
    np.testing.assert_array_equal(ch.best_epoch, [2, 1])  # 1-based
    np.testing.assert_allclose(ch.test_error, [0.06, 0.09])
    assert ch.best_member == 0


def test_twin_difference_over_common_epochs():
    manual = _stage(
        [0.1, 0.1, 0.01, 0.01],
        [0, 1, 0, 1],
        [[0.20, 0.05, 0.06], [0.07, 0.08, 0.09], [0.30, 0.25, 0.04], [0.30, 0.20, 0.10]],
        STAGE.history["test_error"],
    )
    # lr 0.1: identical on the epochs both ran (seed 1's autodiff run stopped after 2).
    d = mt.twin_difference(STAGE, manual, lrs=(0.1,))
    assert d == {"max_abs_diff": 0.0, "pairs": 2, "same_stop_epoch": 1}
    every = mt.twin_difference(STAGE, manual)
    assert every["max_abs_diff"] == pytest.approx(0.05) and every["pairs"] == 4
    # A twin trained at the chosen lr only pairs with that lr's runs.
    only = _stage([0.1], [0], [[0.20, 0.05, 0.07]], [[0.2, 0.1, 0.1]])
    assert mt.twin_difference(STAGE, only)["pairs"] == 1
    assert mt.twin_difference(STAGE, only)["max_abs_diff"] == pytest.approx(0.01)


def test_cnn_options_reach_the_cnn_only():
    cfg = mt.Config(lrs=(0.1, 0.01), epochs=100, patience=100, cnn_lrs=(0.1,), cnn_epochs=30,
                    cnn_patience=10)  # fmt: skip
    assert mt.model_settings(cfg, "c") == mt.ModelSettings((0.1, 0.01), 100, 100)
    assert mt.model_settings(cfg, "d") == mt.ModelSettings((0.1,), 30, 10)
    plain = mt.Config(patience=7)
    assert mt.model_settings(plain, "d").patience == 7
    assert mt.train_config(cfg, mt.model_settings(cfg, "d"), "manual").patience == 10
    # Patience >= the epoch limit is the report's protocol: no early stopping.
    assert mt._patience({"patience": 100, "max_epochs": 100}) == "none"
    assert mt._patience({"patience": 10, "max_epochs": 100}) == "10"


def _report_of(model, stage):
    cfg = mt.Config(lrs=(0.1,), epochs=8, patience=100)
    out = mt.model_metrics(cfg, model, {"autodiff": stage}, {"autodiff": mt.choose(stage)},
                           mt.model_settings(cfg, model))  # fmt: skip
    metrics = {
        "dataset": "mnist",
        "models": {model: out},
        "sizes": {"train": 55_000, "val": 5_000, "test": 10_000},
        "protocol": {"batch_size": 200, "patience": 100, "seeds": 2, "grad": "autodiff",
                     "twin_lrs": "all", "val_fraction": 1 / 12, "quick": False},
    }  # fmt: skip
    return out, mt.report_notes(metrics)


def test_report_compares_the_training_pace_after_six_epochs_with_the_reports_curve():
    val = np.linspace(0.05, 0.02, 8)
    slow = 3 * mt.SEED_TRAIN_ERROR_EPOCH6["c"]  # three times the report's 0.99 %
    stage = _stage([0.1, 0.1], [0, 1], [val, val], [val, val])
    stage.history["train_error"] = np.array([np.full(8, slow - 0.001), np.full(8, slow + 0.001)])
    out, notes = _report_of("c", stage)
    assert out["train_error_epoch6_mean"] == pytest.approx(slow)
    assert "training error is 2.97 % (mean over seeds) against the report's 0.99 %" in notes
    assert "fitted its training set 3.0x faster than the protocol it states" in notes
    assert "sizes of the report's split" in notes and "| none |" in notes
    same = np.full((2, 8), mt.SEED_TRAIN_ERROR_EPOCH6["a"])
    stage.history["train_error"] = same
    assert "within a factor of 2 of each other" in _report_of("a", stage)[1]
    # Runs that stopped before epoch 6 give no comparison.
    short = _stage([0.1], [0], [[0.3, 0.2, 0.1]], [[0.3, 0.2, 0.1]])
    out, notes = _report_of("a", short)
    assert out["train_error_epoch6_mean"] is None and "after 6 epochs" not in notes


# ----------------------------------------------------------------------------- command line


def test_registered():
    info = experiments.get("mnist_table")
    assert info.spec == "E4" and info.load() is mt
    assert info.seed_file.startswith("004_")


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(mt, ["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--dataset", "--data-dir", "--models", "--lrs", "--epochs", "--patience",
                "--grad", "--seeds", "--twin-lrs", "--cnn-lrs", "--cnn-epochs",
                "--cnn-patience", "--fresh", "--quick"):  # fmt: skip
        assert opt in text
    assert "fashion_mnist" in text and "autodiff" in text


@pytest.mark.parametrize(
    "args",
    [
        ["--lrs", "0"],
        ["--lrs", "0.1", "0.1"],
        ["--cnn-lrs", "-1"],
        ["--epochs", "0"],
        ["--patience", "0"],
        ["--cnn-patience", "0"],
        ["--models", "a", "a"],
        ["--models", "e"],
        ["--grad", "numeric"],
        ["--dataset", "cifar10"],
        ["--val-fraction", "1.5"],
        ["--n-train", "100"],
        ["--n-test", "0"],
        ["--seeds", "0"],
    ],
)
def test_bad_option_is_an_error_before_any_work(args, tmp_path, capsys):
    out = tmp_path / "run"
    try:
        code = cli_main(mt, [*args, "--quick", "--out", str(out)])
    except SystemExit as e:  # a value outside the option's choices: tyro's usage error
        code = e.code
    assert code == 2
    assert not (out / "metrics.json").exists()
    assert capsys.readouterr().err.strip()


# ----------------------------------------------------------------------------- small IDX data


def _idx(arr: np.ndarray) -> bytes:
    return (
        bytes([0, 0, 0x08, arr.ndim])
        + b"".join(struct.pack(">I", s) for s in arr.shape)
        + (arr.tobytes())
    )


def _blocks(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable images: class c lights a 5×5 block at its own place, over noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    rng.shuffle(y)
    x = rng.integers(0, 90, (n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(y):
        r, col = 2 + (c // 5) * 13, 1 + (c % 5) * 5
        x[i, r : r + 5, col : col + 5] = 255
    return x, y.astype(np.uint8)


def write_dataset(d: Path, n_train: int = 800, n_test: int = 200) -> None:
    d.mkdir(parents=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        x, y = _blocks(n, seed)
        (d / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(x)))
        (d / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(y)))


@pytest.fixture
def only_written_data(monkeypatch, tmp_path):
    """Only the datasets a test writes under tmp/data exist (no TFDS download either)."""
    monkeypatch.setenv("MLJAX_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(images, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")

    def no_tfds(*args, **kwargs):
        raise RuntimeError("no tensorflow-datasets download in tests")

    monkeypatch.setattr(images, "_load_tfds", no_tfds)
    return tmp_path


def test_missing_mnist_stops_with_the_data_layers_install_commands(only_written_data, capsys):
    out = only_written_data / "run"
    assert cli_main(mt, ["--quick", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "dataset 'mnist' (split 'train') was found nowhere" in err
    assert "How to obtain mnist" in err and "train-images-idx3-ubyte.gz" in err
    assert not (out / "metrics.json").exists()


@dataclasses.dataclass(frozen=True)
class SmallConfig(mt.Config):
    """The defaults reproduce uses, cut to model (a) on the small files."""

    models: tuple = ("a",)
    batch_size: int = 60


@pytest.mark.slow
def test_reproduce_runs_fashion_mnist_where_mnist_is_missing(only_written_data, monkeypatch):
    write_dataset(only_written_data / "data" / "fashion_mnist")
    monkeypatch.setattr(mt, "Config", SmallConfig)
    out = only_written_data / "repro"
    info = experiments.get("mnist_table")
    outcome = reproduce.run_one(info, reproduce.Config(quick=True, out=str(out), quiet=True))
    assert outcome.status == "ok", outcome.reason
    assert "dataset 'mnist' (split 'train') was found nowhere" in outcome.reason
    assert "ran --dataset fashion_mnist instead" in outcome.reason
    first = outcome.rows[0]
    assert first.figure == "(not run) --dataset mnist" and "found nowhere" in first.note
    run = out / "mnist_table"
    m = json.loads((run / "metrics.json").read_text())
    assert m["dataset"] == "fashion_mnist"
    assert m["sizes"] == {"train": 720, "val": 80, "test": 200}
    a = m["models"]["a"]
    # The blocks are linearly separable: far below chance (0.9) after 2 epochs.
    assert a["test_error_mean"] < 0.3
    # Twins from the same keys: the manual rules repeat jax.grad's bits, so the same run.
    assert a["manual_vs_autodiff_max_abs_diff"] == 0
    assert a["twin_test_error_diff"] == 0
    # The test curve at the best epoch is the early-stopping parameters' test error.
    assert a["test_curve_vs_params_max_diff"] < 1e-6
    assert a["strategy"] == "vmap" and a["best_lr"] in (0.1, 0.01)
    for fig in ("error_curves.png", "val_error_per_lr.png", "confusion_matrices.png",
                "error_table.png"):  # fmt: skip
        assert (run / fig).stat().st_size > 1000
    # Rerun with the same settings: the finished stages are reused, not retrained.
    stages = sorted(p.name for p in (run / "stages").iterdir())
    assert len(stages) == 4  # (a, autodiff) and (a, manual): npz + json each
    again, _ = execute(mt, mt.fallback_config(SmallConfig(quick=True, out=str(run), quiet=True)))
    assert again["models"]["a"]["seconds"] == a["seconds"]
    assert again["models"]["a"]["test_errors"] == a["test_errors"]


# ----------------------------------------------------------------------------- real MNIST


@pytest.mark.slow
@pytest.mark.realdata("mnist")
def test_quick_run_on_mnist(tmp_path):
    cfg = mt.Config(quick=True, quiet=True, models=("a",), lrs=(0.1,), out=str(tmp_path))
    split = mt.load_split(cfg)
    assert split.sizes == {"train": 2700, "val": 300, "test": 1000}
    # Stratified: every class keeps its share (10 %) of the 3000 images in validation.
    counts = np.bincount(np.asarray(split.data.y_train), minlength=10) + np.bincount(
        np.asarray(split.data.y_val), minlength=10
    )
    np.testing.assert_allclose(np.bincount(np.asarray(split.data.y_val)), counts / 10, atol=1)
    m, _ = execute(mt, cfg)
    a = m["models"]["a"]
    # 2 epochs of 13 steps: far from the full run's 7 %, far below chance (90 %).
    assert a["test_error_mean"] < 0.4 and len(a["test_errors"]) == 2
    assert a["twin_test_error_diff"] == 0 and a["manual_vs_autodiff_max_abs_diff"] == 0
    report = (tmp_path / "report.md").read_text()
    assert "7.62 %" in report and "7.30 %" in report
    assert "not compared with the target" in report and "not met" not in report
