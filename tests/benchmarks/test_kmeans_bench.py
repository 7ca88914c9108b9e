"""Smoke test of benchmarks.kmeans --quick (no timing assertions), checked against values the
test computes itself: the flop count of the quick case by hand, scikit-learn's own fit from the
same start, and a stopwatch around the whole run."""

import json

import numpy as np
import pytest
from _independent import assert_timed_calls_fit, timed_main
from sklearn.cluster import KMeans

from benchmarks import kmeans as bench


@pytest.mark.slow
def test_quick_writes_rows(tmp_path, capsys, monkeypatch):
    # No --out: the rows go to the results directory, as for the other benchmarks.
    monkeypatch.setenv("MLJAX_RESULTS_DIR", str(tmp_path))
    out = tmp_path / "bench" / "kmeans.json"
    rc, wall = timed_main(bench.main, ["--quick"])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert [r["case"] for r in rows] == ["2k×4 K=3", "n_init=2, 2k×4 K=3"]
    for r in rows:
        assert {"case", "ours_s", "anchor", "anchor_s", "ratio", "compile_s", "agreement"} <= set(r)
        assert r["ratio"] > 0 and (r["ratio"] > 1) == (r["anchor_s"] > r["ours_s"])
        # One Lloyd iteration on 2,000 × 4 points and 3 centres: the distance product
        # [2000, 4] × [4, 3] is 2·2000·4·3 = 48,000 flops (4-wide rows: scatter-add sums).
        np.testing.assert_allclose(r["ours_gflops"] * r["ours_s"] * 1e9, 48_000, rtol=1e-9)
        assert r["peak_gflops"] > 0 and r["peak_gbs"] > 0
    # One read of the 2,000 × 4 float32 points (32,000 bytes) per iteration of all restarts.
    for r, restarts in zip(rows, (1, 2), strict=True):
        np.testing.assert_allclose(r["ours_gbs"] * r["ours_s"] * restarts * 1e9, 32_000, rtol=1e-9)
    # Per-iteration times: each side ran at least 2 fits × 5 iterations × n_init restarts.
    assert_timed_calls_fit(
        [(rows[0]["ours_s"], 10), (rows[0]["anchor_s"], 10), (rows[1]["ours_s"], 20),
         (rows[1]["anchor_s"], 20)],
        wall,
    )  # fmt: skip
    # Same start, same iterations: the row's inertia difference is what scikit-learn's own fit
    # from that start gives here.
    x = bench._data(2000, 4, 3)
    c0 = x[np.random.default_rng(1).choice(2000, 3, replace=False)]
    sk = KMeans(3, init=c0, n_init=1, max_iter=5, tol=0.0, algorithm="lloyd").fit(x)
    assert rows[0]["iterations"] == [5, int(sk.n_iter_)]
    assert rows[0]["agreement"] < 1e-4
    assert "| 2k×4 K=3 |" in capsys.readouterr().out


@pytest.mark.slow
def test_chunks_table_times_each_chunk_size(tmp_path, capsys):
    """--chunks 0 256 700: one row per size for the single-restart quick case, sizes and bytes
    as the test computes them (2,000 × 4 float32 points, 3 centres; 0 is the default chunk)."""
    out = tmp_path / "k.json"
    rc, wall = timed_main(bench.main, ["--quick", "--case", "2k×4 K=3", "--chunks", "0", "256",
                                       "700", "--out", str(out)])  # fmt: skip
    assert rc == 0
    rows = [r for r in json.loads(out.read_text()) if "chunk_rows" in r]
    assert [r["chunk_rows"] for r in rows] == [2000, 256, 700]  # the default: one chunk here
    assert [r["default"] for r in rows] == [True, False, False]
    assert [r["x_chunk_bytes"] for r in rows] == [2000 * 16, 256 * 16, 700 * 16]
    assert [r["dist_chunk_bytes"] for r in rows] == [2000 * 12, 256 * 12, 700 * 12]
    # Each size: a first fit and one timed fit of 5 iterations.
    assert_timed_calls_fit([(r["ours_s"], 5) for r in rows], wall)
    assert "ms per Lloyd iteration against chunk size" in capsys.readouterr().out


def test_negative_chunk_is_refused(capsys):
    assert bench.main(["--chunks", "-5"]) == 2
    assert "--chunks must be >= 0" in capsys.readouterr().err
