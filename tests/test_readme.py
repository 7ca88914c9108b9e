"""The README's statements that can be checked mechanically stay true."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import experiments

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def test_quick_start_is_exactly_two_make_commands():
    block = re.search(r"```bash\n(.*?)```", section("Quick start"), re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


def test_experiment_table_matches_the_registry():
    table = README.split("<!-- experiments-table:start -->")[1].split(
        "<!-- experiments-table:end -->"
    )[0]
    names = re.findall(r"^\| `([a-z_0-9]+)` \|", table, re.M)
    assert names == [i.name for i in experiments.REGISTRY]
    for info in experiments.REGISTRY:
        assert info.seed_file.split("_")[0] in table


def test_make_targets_named_in_the_readme_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z0-9-]+):", makefile, re.M))
    for target in set(re.findall(r"`?make ([a-z0-9-]+)", README)):
        assert target in targets, f"README mentions make {target}, the Makefile lacks it"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_several_machines_commands_parse():
    """Every experiment command of "Several machines" is accepted by that experiment's CLI
    (the placeholders N and i standing for 2 and 1)."""
    from mljax.config import parse

    commands = re.findall(r"python -m experiments\.(\w+)([^\n&]*)", section("Several machines"))
    assert len(commands) >= 4
    for name, args in commands:
        module = importlib.import_module(f"experiments.{name}")
        argv = [{"N": "2", "i": "1"}.get(t, t) for t in args.split()]
        config = parse(module.Config, argv)
        assert config.distributed or config.coordinator, args
