"""Smoke test of ``python -m benchmarks.gmm --quick`` (no timing assertions), checked against
values the test computes itself: the flop count of the quick case by hand and a stopwatch around
the whole run."""

import json

import numpy as np
import pytest
from _independent import assert_timed_calls_fit, timed_main

from benchmarks import gmm as bench


@pytest.mark.slow
def test_quick_benchmark_writes_rows(tmp_path, capsys):
    out = tmp_path / "gmm.json"
    rc, wall = timed_main(bench.main, ["--quick", "--out", str(out), "--case", "diag"])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert {r["anchor"].split()[0] for r in rows} == {"sklearn", "gmmx"}
    for r in rows:
        assert set(r) == {
            "case", "ours_s", "anchor", "anchor_s", "ratio", "compile_s", "agreement",
            "ours_gflops", "peak_gflops", "ours_gbs", "peak_gbs",
        }  # fmt: skip
        assert r["peak_gflops"] > 0 and r["peak_gbs"] > 0
        # One read of the 2,000 × 4 float32 points (32,000 bytes) per iteration.
        np.testing.assert_allclose(r["ours_gbs"] * r["ours_s"] * 1e9, 32_000, rtol=1e-9)
        # One diagonal EM iteration on 2,000 × 4 points, K = 3, responsibilities kept: the E pass
        # is two [2000, 4] × [4, 3] products (x² and x against the precisions), 96,000 flops;
        # the M pass's block product of the responsibilities is 2·2000·3·3·4 = 144,000.
        np.testing.assert_allclose(r["ours_gflops"] * r["ours_s"] * 1e9, 240_000, rtol=1e-9)
        assert r["ratio"] > 0 and (r["ratio"] > 1) == (r["anchor_s"] > r["ours_s"])
        # Our float32 answer agrees with the float64 reference.
        assert float(r["agreement"].split("ours ")[1].split(",")[0]) < 1e-3
    # Per-iteration times: ours and gmmx ran 2 fits of 5 iterations (first call, one warm),
    # scikit-learn one; the two rows share our time, so it counts once.
    sk, gx = sorted(rows, key=lambda r: r["anchor"].split()[0] != "sklearn")
    assert_timed_calls_fit([(sk["ours_s"], 10), (sk["anchor_s"], 5), (gx["anchor_s"], 10)], wall)
    assert "| diag 2k×4 K=3 |" in capsys.readouterr().out
