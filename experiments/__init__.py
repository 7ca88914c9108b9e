"""The experiment registry: every study mljax reproduces, with its source report.

``python -m experiments --list`` prints it; ``python -m experiments.reproduce`` runs it.
Each entry's ``name`` is a module ``experiments/<name>.py`` following the protocol in
:mod:`mljax.experiment`.
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType


@dataclasses.dataclass(frozen=True)
class ExperimentInfo:
    """A registry entry.

    Attributes:
        name: module name under ``experiments`` (the contract: ``python -m experiments.<name>``).
        seed_file: the source report in ``shared/seeds/``.
        section: where in that report.
        description: one line saying what the experiment shows.
        spec: its entry in SPEC.md (e.g. ``"E1"``).
    """

    name: str
    seed_file: str
    section: str
    description: str
    spec: str = ""

    def load(self) -> ModuleType:
        return importlib.import_module(f"experiments.{self.name}")


# Add an entry here when an experiment module lands (keep the SPEC order).
REGISTRY: tuple[ExperimentInfo, ...] = (
    ExperimentInfo(
        "gmm_vs_kmeans",
        "002_427b848819f7c5b5.txt",
        "Question 1",
        "EM for a full-covariance GMM vs k-means on four blobs, k in {3, 4}: ARI, ellipses",
        "E1",
    ),
    ExperimentInfo(
        "mog",
        "000_83718215b190346b.txt",
        "CSC2515 A2 Question 4",
        "Diagonal MoG: rand_const vs k-means init; MoG classifier error vs components",
        "E9",
    ),
)


def get(name: str) -> ExperimentInfo:
    for info in REGISTRY:
        if info.name == name:
            return info
    known = ", ".join(i.name for i in REGISTRY) or "(none registered)"
    raise ValueError(f"unknown experiment {name!r}; registered: {known}")
