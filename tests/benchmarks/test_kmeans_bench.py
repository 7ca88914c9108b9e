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


@pytest.mark.parametrize("d", [4, 6])
def test_pass_parts_compute_what_they_name(d):
    """The --parts functions, chunked (256 rows, not dividing n) and not: the scores' sum, the
    row minima, the labels and the cluster sums against numpy on the centred data, for narrow
    rows (elementwise scores, d = 4) and wider ones (a matmul, d = 6)."""
    x = bench._data(1000, d, 3)
    c0 = x[[3, 500, 900]]
    x64 = x.astype(np.float64)
    xc, cc = x64 - x64.mean(0), c0 - x64.mean(0)
    scores = 0.5 * np.sum(cc**2, 1)[None] - xc @ cc.T
    labels = np.argmin(((x64[:, None] - c0[None]) ** 2).sum(-1), axis=1)
    for chunk in (256, 0):
        parts = dict(bench.pass_parts(x, c0, chunk))
        # Each row once (the shifted last chunk's repeats have weight 0).
        np.testing.assert_allclose(float(parts["product"](x)), scores.sum(), rtol=1e-5)
        if chunk == 0:
            assert list(parts) == ["product"]
            continue
        np.testing.assert_allclose(np.asarray(parts["+ row minimum"](x)), scores.min(1), atol=1e-5)
        np.testing.assert_array_equal(np.asarray(parts["+ argmin (labels)"](x)[0]), labels)
        lab, _, sums, weights = parts["+ cluster sums (whole pass)"](x)
        np.testing.assert_array_equal(np.asarray(lab), labels)
        want = np.stack([xc[labels == j].sum(0) for j in range(3)])
        np.testing.assert_allclose(np.asarray(sums), want, rtol=1e-4, atol=1e-3)
        np.testing.assert_array_equal(np.asarray(weights), np.bincount(labels, minlength=3))


@pytest.mark.slow
def test_parts_table_rows(tmp_path, capsys):
    """--parts: four chunked parts and the unchunked product for the single-restart quick case,
    each against scikit-learn's time of that case's row / 1.5."""
    out = tmp_path / "k.json"
    rc, _ = timed_main(bench.main, ["--quick", "--case", "2k×4 K=3", "--parts", "--out", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())
    case, parts = rows[0], [r for r in rows if "part" in r]
    assert [r["part"] for r in parts] == [
        "product", "+ row minimum", "+ argmin (labels)", "+ cluster sums (whole pass)", "product",
    ]  # fmt: skip
    assert [r["chunk_rows"] for r in parts] == [2000] * 5  # the default chunk is all 2,000 rows
    for r in parts:
        np.testing.assert_allclose(r["target_s"], case["anchor_s"] / 1.5, rtol=1e-12)
        if r["part"] == "product":  # 2·2000·4·3 flops
            np.testing.assert_allclose(r["product_gflops"] * r["ours_s"] * 1e9, 48_000, rtol=1e-9)
    assert "Parts of our assignment pass" in capsys.readouterr().out
