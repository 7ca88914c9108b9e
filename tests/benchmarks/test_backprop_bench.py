"""Smoke test of `python -m benchmarks.backprop --quick` (no timing assertions)."""

from __future__ import annotations

import json

import pytest
from _independent import assert_timed_calls_fit, timed_main

from benchmarks import backprop as bench

ROW_KEYS = {"case", "ours_s", "anchor", "anchor_s", "ratio", "compile_s", "agreement"}


@pytest.mark.slow
def test_quick_run_writes_rows(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc, wall = timed_main(bench.main, ["--quick", "--models", "mlp_c", "--out", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 1
    row = rows[0]
    assert set(row) >= ROW_KEYS
    assert row["anchor"] == "jax.grad"
    assert row["ours_s"] > 0 and row["anchor_s"] > 0 and row["compile_s"] > 0
    assert row["ratio"] > 0 and (row["ratio"] > 1) == (row["anchor_s"] > row["ours_s"])
    # Seconds per step; --quick times 2 blocks of 2 steps of each side.
    assert_timed_calls_fit([(row["ours_s"], 4), (row["anchor_s"], 4)], wall)
    # The manual rules and jax.grad compute the same float32 gradient.
    assert row["agreement"] < 1e-4
    assert "| seed004 mlp_c" in capsys.readouterr().out


@pytest.mark.slow
def test_default_output_goes_where_make_bench_writes(tmp_path, monkeypatch):
    """Without --out the rows land in $MLJAX_RESULTS_DIR/bench/, like `make bench`."""
    monkeypatch.setenv("MLJAX_RESULTS_DIR", str(tmp_path))
    assert bench.main(["--quick", "--models", "mlp_c"]) == 0
    assert len(json.loads((tmp_path / "bench" / "backprop.json").read_text())) == 1


def test_bad_option_is_an_error(capsys):
    assert bench.main(["--models", "resnet"]) == 2
    assert "--models" in capsys.readouterr().err


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--quick", "--out", "--batch", "--models"):
        assert option in out
