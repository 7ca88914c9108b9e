"""What every benchmark's command line shares: parsing its dataclass config (exit status 2 and
a message naming the option on a bad value), selecting cases by name, and writing the JSON rows
to ``--out`` or ``results/bench/<name>.json``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from mljax.config import parse
from mljax.experiment import default_out_dir
from mljax.results import atomic_write_json

C = TypeVar("C")


def parse_or_none(config_cls: type[C], argv: Sequence[str] | None, name: str, doc: str | None):
    """The validated config of ``python -m benchmarks.<name>``, or None after printing the
    error (the caller returns exit status 2)."""
    try:
        return parse(config_cls, argv, prog=f"python -m benchmarks.{name}",
                     description=(doc or "").strip())  # fmt: skip
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def select_cases(cases: Sequence[tuple], patterns: Sequence[str]) -> list[tuple]:
    """The cases (tuples whose first entry is the name) whose name contains one of
    ``patterns`` (all cases when there are none); ``ValueError`` when none matches."""
    picked = [c for c in cases if not patterns or any(p in c[0] for p in patterns)]
    if not picked:
        names = [c[0] for c in cases]
        raise ValueError(f"--case {' '.join(patterns)} matches none of {names}")
    return picked


def write_rows(rows: list[dict], out: str | None, name: str) -> Path:
    """Writes the rows atomically to ``out`` or ``results/bench/<name>.json`` (under
    ``$MLJAX_RESULTS_DIR`` when set) and says where."""
    path = Path(out) if out else default_out_dir("bench") / f"{name}.json"
    atomic_write_json(path, rows)
    print(f"rows written to {path}")
    return path
