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
        name="sigmoid_net",
        seed_file="002_427b848819f7c5b5.txt",
        section="Question 2",
        description="δ table of the 5-neuron sigmoid net; 1-3-1 net trained over seeds; "
        "the report's swapped backward_pass call caught by the gradient check",
        spec="E2",
    ),
    ExperimentInfo(
        name="gradcheck",
        seed_file="001_d113d5d4bcc95e56.txt",
        section="gradient check (and seeds 000, 002, 003, 004 models)",
        description="manual backprop vs jax.grad vs central differences, every seed model "
        "and parameter leaf, float64",
        spec="E3, E4",
    ),
    ExperimentInfo(
        "twolayer",
        "001_d113d5d4bcc95e56.txt",
        "Questions 3 and 4",
        "two-layer net on CIFAR-10 (49k/1k/1k): baseline, iterations, lr, hidden, batch, λ, "
        "dropout, PCA and depth sweeps as vmapped programs over seeds; best net's test accuracy",
        "E3",
    ),
    ExperimentInfo(
        "mnist_table",
        "004_f61361a430c64d2a.txt",
        "Parts 1 and 2",
        "MNIST error table of models a-d: lr sweep with early stopping as one vmapped sweep "
        "per model, each model also trained by our manual backprop (twin curves equal)",
        "E4",
    ),
    ExperimentInfo(
        "playground",
        "003_7a64f05ef5897792.txt",
        "§1",
        "TensorFlow Playground tables (datasets x features x activation x L1/L2 x seeds) "
        "as one vmapped sweep; decision boundaries, loss curves, activation comparison",
        "E5",
    ),
    ExperimentInfo(
        "fashion_mnist",
        "003_7a64f05ef5897792.txt",
        "§2.1-2.2",
        "Fashion-MNIST MLP (dropout, batch norm, Nesterov, early stopping; seeds as one vmapped "
        "sweep, manual-backprop twin) and the two CNNs (checkpointed, resumable): test accuracy",
        "E6",
    ),
    ExperimentInfo(
        "pca_logreg",
        "003_7a64f05ef5897792.txt",
        "§2.3",
        "PCA(2) + k-means on the Fashion-MNIST test set (ARI); logistic regression after PCA "
        "(n in 2..100) and on 784 pixels, 5-fold CV with folds and sizes vmapped; time per fold",
        "E7",
    ),
    ExperimentInfo(
        "nn_vs_cnn",
        "000_83718215b190346b.txt",
        "CSC2515 A2 Question 3",
        "NN (16, 8) vs CNN (5x5x8, 5x5x16) on Fashion-MNIST/MNIST: lr x momentum, batch size "
        "and layer-size sweeps over seeds; filters, uncertain examples, parameter counts",
        "E8",
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
