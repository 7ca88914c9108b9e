"""experiments.fashion_mnist (SPEC E6): the seed's architectures by their printed parameter
counts, batch norm's evaluation mode in closed form, the command line, one quick run on small
IDX files written here (metrics keys, figures, manual-vs-autodiff twin), resuming a killed
CNN run, and a quick run on the installed Fashion-MNIST."""

from __future__ import annotations

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import experiments
from experiments import fashion_mnist as fm
from mljax.experiment import execute
from mljax.nn import backprop, models
from mljax.nn.layers import BatchNorm, Dense
from mljax.train import tasks

REPO = Path(__file__).resolve().parents[2]

# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize(
    ("model", "total", "trainable"),
    [("mlp", 244_591, 244_491), ("cnn", 380_675, 380_163), ("cnn_v2", 1_922_058, 1_920_330)],
)
def test_models_have_the_reports_parameter_counts(model, total, trainable):
    # Figures 5, 8 and 11 of seed 003 print these Keras summaries.
    count = models.count_params(fm.BUILDERS[model](), (1, 28, 28, 1))
    assert (count.total, count.trainable) == (total, trainable)


def test_batch_norm_eval_mode_uses_running_statistics_in_closed_form():
    task = tasks.layer_task((Dense(4), BatchNorm(momentum=0.9, epsilon=1e-3)), (1, 3))
    params, state = task.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    mean, var = rng.normal(size=4).astype(np.float32), rng.uniform(0.5, 2, 4).astype(np.float32)
    gamma, beta = rng.normal(size=4).astype(np.float32), rng.normal(size=4).astype(np.float32)
    params = {**params, "layer_1": {"scale": jnp.asarray(gamma), "bias": jnp.asarray(beta)}}
    state = {"layer_1": {"mean": jnp.asarray(mean), "var": jnp.asarray(var)}}
    x = rng.normal(size=(5, 3)).astype(np.float32)
    kernel, bias = np.asarray(params["layer_0"]["kernel"]), np.asarray(params["layer_0"]["bias"])
    h = x @ kernel + bias
    expected = gamma * (h - mean) / np.sqrt(var + 1e-3) + beta  # running stats, not the batch's
    out, new_state = task.apply(params, state, jnp.asarray(x), train=False, rng=None, hparams=None)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_equal(new_state, state)  # evaluation never moves the statistics
    # Each example alone gives its row of the batch (no batch statistic is involved).
    alone = task.apply(params, state, jnp.asarray(x[2:3]), train=False, rng=None, hparams=None)
    np.testing.assert_allclose(alone[0], expected[2:3], rtol=1e-5, atol=1e-5)
    # The manual engine's forward in evaluation mode agrees.
    layers = (Dense(4), BatchNorm(momentum=0.9, epsilon=1e-3))
    bp = backprop.grads(
        layers, params, jnp.asarray(x), jnp.zeros(5, jnp.int32), train=False, batch_stats=state
    )
    logp = expected - np.log(np.exp(expected).sum(1, keepdims=True))
    np.testing.assert_allclose(float(bp.loss), -logp[:, 0].mean(), rtol=1e-5)
    # Training mode normalises by the batch's statistics and moves the running ones by 0.1.
    out_t, st_t = task.apply(params, state, jnp.asarray(x), train=True, rng=None, hparams=None)
    mu, sig2 = h.mean(0), h.var(0)
    np.testing.assert_allclose(
        out_t, gamma * (h - mu) / np.sqrt(sig2 + 1e-3) + beta, rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(st_t["layer_1"]["mean"], 0.9 * mean + 0.1 * mu, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- command line


def test_registered():
    info = experiments.get("fashion_mnist")
    assert info.spec == "E6" and info.load() is fm and info.seed_file.startswith("003_")


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        fm.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in (
        "--models",
        "--epochs",
        "--patience",
        "--seeds",
        "--data-dir",
        "--quick",
        "--out",
        "--cnn-epochs",
        "--cnn-seeds",
        "--mlp-lr",
        "--cnn-lr",
        "--momentum",
        "--v2-decay",
        "--skip-manual-twin",
        "--checkpoint-every",
        "--fresh",
        "--peek",
    ):
        assert opt in text


@pytest.mark.parametrize(
    "args",
    [
        ["--epochs", "0"],
        ["--patience", "0"],
        ["--models", "mlp", "mlp"],
        ["--models", "rnn"],
        ["--mlp-lr", "0"],
        ["--momentum", "1"],
        ["--v2-decay", "0"],
        ["--n-train", "100"],
        ["--seeds", "0"],
    ],
)
def test_bad_option_is_an_error_before_any_work(args, tmp_path, capsys):
    out = tmp_path / "run"
    try:
        code = fm.main([*args, "--quick", "--out", str(out)])
    except SystemExit as e:  # a value outside the option's choices: tyro's usage error
        code = e.code
    assert code == 2 and not (out / "metrics.json").exists()
    assert capsys.readouterr().err.strip()


# ----------------------------------------------------------------------------- quick run

METRIC_KEYS = {"test_acc_mean", "test_acc_std", "best_epoch_mean", "seconds"}


def _idx(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    return head + arr.tobytes()


def write_dataset(d: Path, n_train: int, n_test: int) -> None:
    """Learnable IDX files: class c lights a 5×5 block at its own place, over noise."""
    d.mkdir(parents=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        rng = np.random.default_rng(seed)
        y = np.arange(n) % 10
        rng.shuffle(y)
        x = rng.integers(0, 90, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(y):
            r, col = 2 + (c // 5) * 13, 1 + (c % 5) * 5
            x[i, r : r + 5, col : col + 5] = 255
        (d / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(x)))
        (d / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(y.astype(np.uint8))))


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("fm") / "fashion_mnist"
    write_dataset(d, n_train=800, n_test=200)
    return d


@pytest.fixture(scope="module")
def quick_run(small_data, tmp_path_factory):
    """One quick run of the MLP on the small files (lr 0.01: a step size at which float32
    rounding is not amplified within the two epochs); the CNN path runs in the resume test."""
    out = tmp_path_factory.mktemp("quick")
    cfg = fm.Config(
        quick=True, quiet=True, data_dir=str(small_data), out=str(out), models=("mlp",), mlp_lr=0.01
    )
    metrics, _ = execute(fm, cfg)
    return metrics, out


@pytest.mark.slow
def test_quick_run_writes_the_issues_metrics_and_figures(quick_run):
    m, out = quick_run
    assert METRIC_KEYS <= set(m["mlp"])
    # The test curve at the best epoch is what the best parameters, restored from their
    # checkpoint, score on the test set.
    assert m["mlp"]["test_curve_vs_restored_max_diff"] < 1e-6
    assert m["mlp"]["seeds"] == 2 and m["mlp"]["strategy"] == "vmap"
    assert m["sizes"]["mlp"] == {"train": 720, "val": 80, "test": 200}
    # 4 steps at lr 0.01 on 720 images: above chance (10 %, i.e. 20 of 200), no more.
    assert m["mlp"]["test_acc_mean"] > 0.15
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["mlp"]["test_accs"] == m["mlp"]["test_accs"]
    for fig in ("curves.png", "first_layer_weights.png", "confusion_matrices.png"):
        assert (out / fig).stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "87.40 % validation" in report and "quick mode" in report


@pytest.mark.slow
def test_manual_backprop_twin_has_the_same_curves(quick_run):
    t = quick_run[0]["mlp"]["manual_twin"]
    # Same key: same initial parameters, batches and dropout masks; only the gradient code
    # differs (jax.grad vs mljax.nn.backprop), so the curves agree to float32 rounding.
    for k, v in t["max_abs_diff"].items():
        assert v <= (1e-4 if k.endswith("loss") else 1 / 80 + 1e-9), (k, v)
    assert t["epochs_run"][0] == t["epochs_run"][1]
    assert abs(t["test_acc"][0] - t["test_acc"][1]) <= 1 / 200 + 1e-9


# ----------------------------------------------------------------------------- resume


def _cli(out: Path, data: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.fashion_mnist",
        "--models",
        "cnn_v2",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--n-train",
        "200",
        "--n-test",
        "100",
        "--batch-size",
        "32",
        "--cnn-epochs",
        "3",
        "--checkpoint-every",
        "3",
        "--quiet",
    ]


@pytest.mark.slow
def test_killed_cnn_run_resumes_from_its_checkpoints(small_data, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(killed, small_data),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    ckpts = killed / "checkpoints"
    # Kill (SIGKILL: no handler runs) once a mid-run save exists, before the run ends.
    while time.monotonic() < deadline and proc.poll() is None:
        saves = [p for p in ckpts.glob("*/cnn_v2_seed0/*") if p.name.isdigit()]
        if saves:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists()
    again = subprocess.run(
        _cli(killed, small_data), cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = json.loads((killed / "metrics.json").read_text())["cnn_v2"]
    assert resumed["resumed_from_step"][0] is not None and resumed["resumed_from_step"][0] > 0
    # The uninterrupted reference, in this process: the same numbers, bit for bit.
    ref_out = tmp_path / "straight"
    cfg = fm.Config(
        models=("cnn_v2",),
        data_dir=str(small_data),
        out=str(ref_out),
        n_train=200,
        n_test=100,
        batch_size=32,
        cnn_epochs=3,
        checkpoint_every=3,
        quiet=True,
    )
    ref, _ = execute(fm, cfg)
    assert METRIC_KEYS <= set(ref["cnn_v2"]) and ref["cnn_v2"]["strategy"] == "sequential"
    assert ref["cnn_v2"]["projected"]["step_s"] > 0
    assert ref["cnn_v2"]["test_curve_vs_restored_max_diff"] < 1e-6
    assert ref["cnn_v2"]["resumed_from_step"] == [None]
    assert resumed["test_accs"] == ref["cnn_v2"]["test_accs"]
    assert resumed["epochs_run"] == ref["cnn_v2"]["epochs_run"]
    st_k = dict(np.load(next((killed / "stages").glob("*.npz"))))
    st_r = dict(np.load(next((ref_out / "stages").glob("*.npz"))))
    for k in st_r:
        np.testing.assert_array_equal(st_k[k], st_r[k], err_msg=k)


# ----------------------------------------------------------------------------- real data


@pytest.mark.slow
@pytest.mark.realdata("fashion_mnist")
def test_quick_mlp_on_fashion_mnist(tmp_path):
    cfg = fm.Config(
        quick=True, quiet=True, models=("mlp",), skip_manual_twin=True, out=str(tmp_path)
    )
    split = fm.load_split(cfg)
    assert split.sizes == {"train": 2700, "val": 300, "test": 1000}
    y_val = np.asarray(split.data.y_val)
    counts = np.bincount(np.asarray(split.data.y_train), minlength=10) + np.bincount(y_val)
    np.testing.assert_allclose(np.bincount(y_val), counts / 10, atol=1)  # stratified
    m, _ = execute(fm, cfg)
    assert 0.5 < m["mlp"]["test_acc_mean"] <= 1.0 and len(m["mlp"]["test_accs"]) == 2


# ----------------------------------------------------------------------------- report


def _model(name, accs, best, runs, cap, **extra):
    accs = np.asarray(accs)
    return {
        "name": fm.LABELS[name], "test_acc_mean": float(accs.mean()),
        "test_acc_std": float(accs.std()), "test_accs": accs.tolist(),
        "best_epoch_mean": float(np.mean(best)), "best_epochs": best, "epochs_run": runs,
        "max_epochs": cap, "val_acc_best_mean": 0.93, "seconds": 10.0,
        "seconds_per_epoch": 1.0, "seeds": len(accs),
        "strategy": "vmap" if name == "mlp" else "sequential",
        "test_curve_vs_restored_max_diff": 0.0, "resumed_from_step": [None] * len(accs),
        "projected": None, "seed_val_acc": fm.SEED_VAL[name], "target": fm.TARGETS[name],
        **extra,
    }  # fmt: skip


def test_report_sentences_follow_the_checks():
    twin = {
        "max_abs_diff": {"val_loss": 0.02, "val_accuracy": 0.009},
        "control_max_abs_diff": {"val_loss": 0.03, "val_accuracy": 0.013},
        "epochs_run": [54, 44], "best_epoch": [44, 34], "test_acc": [0.888, 0.886],
    }  # fmt: skip
    metrics = {
        "mlp": _model("mlp", [0.885, 0.895, 0.881], [33, 86, 17], [43, 96, 27], 100,
                      manual_twin=twin),
        "cnn": _model("cnn", [0.93], [9], [19], 100),
        "cnn_v2": _model("cnn_v2", [0.92], [4], [4], 4),
        "sizes": {"mlp": {"train": 54000, "val": 6000, "test": 10000}},
        "protocol": {"batch_size": 256, "momentum": 0.9, "mlp_lr": 0.05, "cnn_lr": 0.01,
                     "v2_decay": 0.9, "patience": 10, "val_fraction": 0.1, "quick": False,
                     "devices": ["cpu:0"]},
    }  # fmt: skip
    text = fm.report_notes(metrics)
    assert "mlp: test accuracy 88.70 %" in text and "1.30 points above the report's 87.40 %" in text
    assert "the target ≥ 88.50 % is met" in text
    assert "cnn: test accuracy 93.00 %" in text and "the target ≥ 93.60 % is not met" in text
    assert "3.00 points short of ≈ 95 %" in text and "still rising" in text
    assert "of the size of the control" in text and "differs by up to 0.03" in text
    rows = fm.report_rows(metrics)
    assert [r.note.split(":")[-1].strip() for r in rows[:2]] == ["met", "not met"]
    assert rows[2].note == "3.00 points below the report's ≈ 95 %"
    assert rows[2].seed_value == "≈ 95 % validation"
