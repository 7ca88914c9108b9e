"""Smoke test of benchmarks.shuffle --quick (no timing assertions): the identity flag against
permutations the test draws itself, the sizes, and a stopwatch around the whole run."""

import json

import jax
import numpy as np
from _independent import assert_timed_calls_fit, timed_main

from benchmarks import shuffle as bench


def test_quick_rows_against_the_tests_own_permutations(tmp_path, capsys):
    out = tmp_path / "s.json"
    rc, wall = timed_main(bench.main, ["--quick", "--out", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert [(r["nets"], r["points"]) for r in rows] == [(16, 40), (4, 2000)]
    for r in rows:
        keys = jax.random.split(jax.random.key(0), r["nets"])
        want = np.stack([np.asarray(jax.random.permutation(k, r["points"])) for k in keys])
        got = np.asarray(jax.vmap(lambda k, n=r["points"]: bench.permutation(k, n))(keys))
        assert r["agreement"] == int(np.sum(want != got)) == 0 and r["identical"]
        assert r["anchor"] == "jax.random.permutation"
        # The ratio's direction: the anchor's time over ours.
        assert r["ratio"] == r["anchor_s"] / r["ours_s"]
    # One untimed and one timed call per side (--quick).
    assert_timed_calls_fit([(r[k], 1) for r in rows for k in ("anchor_s", "ours_s")], wall)
    assert "| 16 × 40 |" in capsys.readouterr().out


def test_bad_case_is_an_error(capsys):
    assert bench.main(["--cases", "1024by500"]) == 2
    assert "NETSxPOINTS" in capsys.readouterr().err
    assert bench.main(["--repeats", "0"]) == 2
