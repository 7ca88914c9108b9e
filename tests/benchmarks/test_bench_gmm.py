"""Smoke test of ``python -m benchmarks.gmm --quick`` (no timing assertions)."""

import json

import numpy as np

from benchmarks import gmm as bench


def test_quick_benchmark_writes_rows(tmp_path, capsys):
    out = tmp_path / "gmm.json"
    assert bench.main(["--quick", "--out", str(out), "--case", "diag"]) == 0
    rows = json.loads(out.read_text())
    assert {r["anchor"].split()[0] for r in rows} == {"sklearn", "gmmx"}
    for r in rows:
        assert set(r) == {
            "case", "ours_s", "anchor", "anchor_s", "ratio", "compile_s", "agreement",
            "ours_gflops", "peak_gflops",
        }  # fmt: skip
        assert r["peak_gflops"] > 0
        np.testing.assert_allclose(
            r["ours_gflops"], bench.matmul_flops("diag", 2000, 4, 3) / r["ours_s"] / 1e9, rtol=1e-9
        )
        assert r["ours_s"] > 0 and r["anchor_s"] > 0
        np.testing.assert_allclose(r["ratio"], r["anchor_s"] / r["ours_s"], rtol=1e-12)
        # Our float32 answer agrees with the float64 reference.
        assert float(r["agreement"].split("ours ")[1].split(",")[0]) < 1e-3
    assert "| diag 2k×4 K=3 |" in capsys.readouterr().out
