"""Smoke test of benchmarks.linear --quick (no timing assertions; needs Fashion-MNIST)."""

import json

import pytest

from benchmarks import linear as bench


@pytest.mark.realdata("fashion_mnist")
@pytest.mark.slow
def test_quick_writes_rows(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["anchor"] for r in rows] == [
        "scikit-learn PCA(full)",
        "scikit-learn PCA(randomized)",
        "scikit-learn LogisticRegression(lbfgs)",
        "scikit-learn cross_val_score(LogisticRegression)",
    ]
    for r in rows:
        assert {"case", "ours_s", "anchor", "anchor_s", "ratio", "compile_s", "agreement"} <= set(r)
        assert r["ours_s"] > 0 and r["anchor_s"] > 0
        assert abs(r["ratio"] - r["anchor_s"] / r["ours_s"]) <= 1e-9 * r["ratio"]
    # Same answers as scikit-learn: PCA variances (float32) and accuracies within a point.
    assert rows[0]["agreement"] < 1e-3
    assert rows[2]["agreement"] < 0.01 and rows[2]["prediction_agreement"] > 0.97
    assert rows[3]["agreement"] < 0.01
    assert "| case |" in capsys.readouterr().out
