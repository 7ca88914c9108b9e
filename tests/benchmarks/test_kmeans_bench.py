"""Smoke test of benchmarks.kmeans --quick (no timing assertions)."""

import json

from benchmarks import kmeans as bench


def test_quick_writes_rows(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == len(bench.QUICK_CASES)
    for r in rows:
        assert {"case", "ours_s", "anchor", "anchor_s", "ratio", "compile_s", "agreement"} <= set(r)
        assert r["ours_s"] > 0 and r["anchor_s"] > 0
        # The GFLOP/s column is the flop model over our time, beside the measured peak.
        n, d, k = next(c[1:4] for c in bench.QUICK_CASES if c[0] == r["case"])
        flops = bench.matmul_flops(n, d, k)
        assert abs(r["ours_gflops"] - flops / r["ours_s"] / 1e9) <= 1e-9 * r["ours_gflops"]
        assert r["peak_gflops"] > 0
    # Same start, same iterations: same answer as scikit-learn.
    assert rows[0]["agreement"] < 1e-4
    assert rows[0]["iterations"][0] == rows[0]["iterations"][1]
    assert "| case |" in capsys.readouterr().out
