"""Smoke test of `python -m benchmarks.train --quick` (no timing assertions).

The agreement numbers are real checks: PyTorch starts from our initial weights (kernels
transposed, the first dense layer's rows permuted from NHWC to NCHW flattening) and sees
our batches in our order, so a wrong gradient (e.g. in the custom conv / max-pool VJPs),
optimiser step or batch order in either side shows up as a loss difference.
"""

from __future__ import annotations

import json

import pytest
from _independent import assert_timed_calls_fit, timed_main

from benchmarks import train as bench

ROW_KEYS = {"case", "ours_s", "anchor", "anchor_s", "ratio", "compile_s", "agreement"}


@pytest.fixture(scope="module")
def quick_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "train.json"
    rc, wall = timed_main(bench.main, ["--quick", "--out", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())
    for row in rows:
        row["_wall"] = wall
    return rows


@pytest.mark.slow
def test_quick_run_writes_contract_rows(quick_rows):
    assert [r["strategy"] for r in quick_rows] == ["scan", "python", "vmap"]
    for row in quick_rows:
        assert set(row) >= ROW_KEYS
        assert row["anchor"].startswith("PyTorch CPU")
        assert row["ours_s"] > 0 and row["anchor_s"] > 0 and row["compile_s"] >= 0
        assert row["ratio"] > 0 and (row["ratio"] > 1) == (row["anchor_s"] > row["ours_s"])
    # The image rows' times are per timed run; each side ran at least two timed blocks.
    mlp, cnn = quick_rows[:2]
    assert_timed_calls_fit(
        [(mlp["ours_s"], 2), (mlp["anchor_s"], 2), (cnn["ours_s"], 2), (cnn["anchor_s"], 2)],
        mlp["_wall"],
    )
    assert "scaled" in quick_rows[2]["case"]
    assert quick_rows[2]["diverged"] == 0


@pytest.mark.parametrize("i", [0, 1], ids=["mlp", "cnn_d"])
@pytest.mark.slow
def test_same_start_same_batches_same_loss(quick_rows, i):
    """A few SGD steps from the same weights on the same batches: losses agree to 1e-4 ...

    ... while training moved the loss by far more than that (the check can fail).
    """
    row = quick_rows[i]
    assert abs(row["loss_after"] - row["loss_before"]) > 1e-2
    assert row["agreement"] < 1e-4


@pytest.mark.slow
def test_playground_subset_agrees_with_pytorch(quick_rows):
    assert quick_rows[2]["agreement"] < 1e-4


@pytest.mark.slow
def test_table_is_printed(capsys, tmp_path):
    out = tmp_path / "t.json"
    assert bench.main(["--quick", "--cases", "mlp", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| MLP 784-256-256-10" in text and "ratio" in text
    assert len(json.loads(out.read_text())) == 1


@pytest.mark.parametrize(
    "argv, option",
    [
        (["--cases", "resnet"], "--cases"),
        (["--playground-nets", "20"], "--playground-nets"),
        (["--steps", "0"], "--steps"),
    ],
)
def test_bad_option_is_an_error(capsys, argv, option):
    assert bench.main(argv) == 2
    assert option in capsys.readouterr().err


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--quick", "--out", "--cases", "--playground-torch"):
        assert option in out
