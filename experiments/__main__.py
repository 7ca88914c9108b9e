"""``python -m experiments --list``: print the experiment registry."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

import experiments
from mljax.config import parse
from mljax.experiment import markdown_table


@dataclasses.dataclass(frozen=True)
class Config:
    """List mljax's experiments. Run one with `python -m experiments.<name> --help`."""

    list: bool = False
    """Print the registry: name, source report and what each experiment shows."""


def main(argv: Sequence[str] | None = None) -> int:
    config = parse(Config, argv, prog="python -m experiments")
    if not config.list:
        print("usage: python -m experiments --list   (or python -m experiments.<name> --help)")
        return 0
    if not experiments.REGISTRY:
        print("no experiments registered")
        return 0
    rows = [
        [i.name, i.spec, f"{i.seed_file} {i.section}", i.description] for i in experiments.REGISTRY
    ]
    print("\n".join(markdown_table(["name", "spec", "source report", "what it shows"], rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
