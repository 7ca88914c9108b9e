"""The k-means, GMM, linear and shuffle benchmarks share the experiments' dataclass CLI (tyro): every
option documented in --help, bad values refused with exit status 2 and a message naming the
option, before any data is made or anything is compiled."""

import pytest

from benchmarks import gmm, kmeans, linear, shuffle
from benchmarks._cli import select_cases

MODULES = {"kmeans": kmeans, "gmm": gmm, "linear": linear, "shuffle": shuffle}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_help_documents_every_option(name, capsys):
    module = MODULES[name]
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert f"python -m benchmarks.{name}" in text
    for field in module.Config.__dataclass_fields__:
        assert f"--{field.replace('_', '-')}" in text
    assert f"bench/{name}.json" in text  # the default results file is stated


@pytest.mark.parametrize(
    ("name", "argv", "message"),
    [
        ("kmeans", ["--repeats", "0"], "--repeats must be >= 1, got 0"),
        ("kmeans", ["--case", "no-such-case"], "matches none of"),
        ("gmm", ["--iters", "0"], "--iters must be >= 1, got 0"),
        ("gmm", ["--quick", "--case", "tied"], "matches none of ['full 2k×2 K=3'"),
        ("linear", ["--cases", "pca", "svd"], "--cases must be a non-empty subset of"),
        ("linear", ["--repeats", "-1"], "--repeats must be >= 1, got -1"),
    ],
)
def test_bad_options_exit_2_naming_the_option(name, argv, message, capsys):
    assert MODULES[name].main(argv) == 2
    assert message in capsys.readouterr().err


def test_case_filter_selects_by_substring():
    # Independent of the implementation: the case names as listed in each module.
    picked = kmeans.Config(case=("n_init",)).cases()
    assert [c[0] for c in picked] == [c[0] for c in kmeans.CASES if "n_init" in c[0]] != []
    picked = gmm.Config(quick=True, case=("diag", "restarts")).cases()
    assert [c[0] for c in picked] == ["diag 2k×4 K=3", "restarts n_init=2 full 2k×2 K=3"]


def test_select_cases_refuses_a_pattern_that_matches_nothing():
    cases = [("a 1", 1), ("b 2", 2)]
    assert select_cases(cases, ()) == cases
    assert select_cases(cases, ("b", "zzz")) == [("b 2", 2)]
    with pytest.raises(ValueError, match=r"--case zzz matches none of \['a 1', 'b 2'\]"):
        select_cases(cases, ("zzz",))
