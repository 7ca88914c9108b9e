"""Atomic writes and run directories."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax.numpy as jnp
import numpy as np
import pytest

from mljax import results
from mljax.results import RunDir, atomic_write_json, atomic_write_text, to_jsonable


class HalfWriter:
    """Wraps a file object so that a write stops half-way with a KeyboardInterrupt."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        raise KeyboardInterrupt

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_interrupted_write_keeps_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"accuracy": 0.9})
    real_fdopen = os.fdopen
    monkeypatch.setattr(results.os, "fdopen", lambda *a, **k: HalfWriter(real_fdopen(*a, **k)))
    with pytest.raises(KeyboardInterrupt):
        atomic_write_json(target, {"accuracy": 0.1, "padding": "x" * 10000})
    assert json.loads(target.read_text()) == {"accuracy": 0.9}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary left


def test_failed_rename_keeps_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "report.md"
    atomic_write_text(target, "old")

    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(results.os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_killed_writer_process_never_leaves_a_partial_file(tmp_path):
    """A process SIGKILLed while rewriting a file over and over leaves a complete version."""
    target = tmp_path / "big.json"
    code = textwrap.dedent(f"""
        import itertools, sys
        from mljax.results import atomic_write_json
        for i in itertools.count():
            atomic_write_json({str(target)!r}, {{"i": i, "data": list(range(200000))}})
            if i == 0:
                print("ready", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    value = json.loads(target.read_text())  # parses: complete
    assert value["data"][-1] == 199999


def test_to_jsonable_arrays_nan_and_dataclasses():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class C:
        lr: float = 0.1
        sizes: tuple = (1, 2)

    out = to_jsonable(
        {
            "a": jnp.arange(3),
            "b": np.float32(1.5),
            "c": float("nan"),
            "cfg": C(),
            "d": np.array([1.0, np.inf]),
        }
    )
    assert out == {
        "a": [0, 1, 2],
        "b": 1.5,
        "c": None,
        "cfg": {"lr": 0.1, "sizes": [1, 2]},
        "d": [1.0, None],
    }
    assert json.loads(json.dumps(out)) == out


def test_run_dir_files(tmp_path):
    rd = RunDir.create(tmp_path / "run")
    rd.write_config({"x": 1})
    rd.write_metrics({"m": np.float64(2.0)})
    rd.write_report("# hi\n")
    assert rd.read_metrics() == {"m": 2.0}
    assert (tmp_path / "run" / "config.json").exists() and (tmp_path / "run" / "report.md").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        RunDir.create(tmp_path / "file")


def test_save_figure_writes_png(tmp_path):
    import matplotlib.pyplot as plt

    from mljax.plots import curve_with_band, image_grid, save_figure

    fig, (a, b) = plt.subplots(1, 2)
    curve_with_band(a, np.arange(5), np.random.default_rng(0).normal(size=(3, 5)))
    canvas = image_grid(b, np.random.default_rng(0).random((5, 4, 4)), ncols=3)
    assert canvas.shape == (2 * 5 - 1, 3 * 5 - 1)
    p = save_figure(fig, tmp_path / "f.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"must end in \.png"):
        save_figure(plt.figure(), tmp_path / "f.jpg")


def test_curve_band_skips_steps_no_run_reached_without_warnings():
    import warnings

    import matplotlib.pyplot as plt

    from mljax.plots import curve_with_band

    runs = np.array([[1.0, 2.0, np.nan, np.nan], [3.0, np.nan, np.nan, np.nan]])
    fig, ax = plt.subplots()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "Mean of empty slice" would raise here
        line = curve_with_band(ax, np.arange(4), runs)
    np.testing.assert_array_equal(line.get_ydata(), [2.0, 2.0, np.nan, np.nan])
    band = ax.collections[0].get_paths()[0].vertices
    assert np.isclose(band[:, 1].max(), 3.0) and np.isclose(band[:, 1].min(), 1.0)
    plt.close(fig)


def test_results_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    import stat

    previous = os.umask(0o022)
    try:
        assert results.current_umask() == 0o022
        path = results.atomic_write_text(tmp_path / "a.txt", "x")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o077)
        path = results.atomic_write_json(tmp_path / "b.json", {"a": 1})
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(previous)


def test_run_dir_that_does_not_write(tmp_path):
    """writes=False (processes other than 0 of a multi-process run): every write_* method
    returns the path it would write and creates nothing, not even the directory."""
    import matplotlib.pyplot as plt

    run_dir = RunDir.create(tmp_path / "run", writes=False)
    fig = plt.figure()
    paths = [
        run_dir.write_config({"a": 1}),
        run_dir.write_metrics({"m": 1.0}),
        run_dir.write_report("# r\n"),
        run_dir.write_text("table.md", "x"),
        run_dir.write_bytes("a.npz", b"x"),
        run_dir.write_figure(fig, "f.png"),
    ]
    assert [p.name for p in paths] == [
        "config.json",
        "metrics.json",
        "report.md",
        "table.md",
        "a.npz",
        "f.png",
    ]
    assert not (tmp_path / "run").exists()
    assert not plt.fignum_exists(fig.number)  # closed all the same
    writing = RunDir.create(tmp_path / "run")
    writing.write_figure(plt.figure(), "f.png")
    writing.write_text("table.md", "x")
    assert (tmp_path / "run" / "table.md").read_text() == "x"
    assert (tmp_path / "run" / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_stage_round_trip_and_refusals(tmp_path):
    """A saved stage comes back for the same settings only: other settings, a half-written
    stage (npz without its json) and a json whose fingerprint was edited give None."""
    fp = {"model": "b", "lrs": (0.1, 0.01), "epochs": 3}
    arrays = {"lr": np.array([0.1, 0.01]), "history_val": np.arange(6.0).reshape(2, 3)}
    stem = results.save_stage(tmp_path, "b_autodiff", fp, arrays, {"seconds": 1.5})
    # The digest is the SHA-256 of the sorted JSON (tuples as lists), computed here by hand.
    digest = hashlib.sha256(
        json.dumps({"epochs": 3, "lrs": [0.1, 0.01], "model": "b"}, sort_keys=True).encode()
    ).hexdigest()[:12]
    assert stem == tmp_path / f"b_autodiff_{digest}"
    got, info = results.load_stage(tmp_path, "b_autodiff", dict(fp))
    assert info == {"seconds": 1.5} and set(got) == set(arrays)
    for k, v in arrays.items():
        np.testing.assert_array_equal(got[k], v)
    assert results.load_stage(tmp_path, "b_autodiff", {**fp, "epochs": 4}) is None
    assert results.load_stage(tmp_path, "c_autodiff", fp) is None
    meta = stem.with_suffix(".json")
    edited = json.loads(meta.read_text())
    edited["fingerprint"]["epochs"] = 9
    meta.write_text(json.dumps(edited))
    assert results.load_stage(tmp_path, "b_autodiff", fp) is None
    meta.unlink()  # the npz alone is a stage that never finished
    assert results.load_stage(tmp_path, "b_autodiff", fp) is None
