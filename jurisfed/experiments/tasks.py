"""The federations the experiments train: digits split by jurisdiction, and Synthetic(alpha, beta).

A task is what the tiers would hold: each jurisdiction's silos with their `LocalDataset` (the
silo trainer's own data type; digits silos are read back with the silo's own file adapter
from the files `jurisfed.demo.partition` writes), and at the regional a validation split
(for choosing personalization) and a test split of the jurisdiction's population. A digits
jurisdiction's held-out split is cut in two at random: half validation, half test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jurisfed.demo.partition import DEMO_TRAINING, load_split, partition_digits
from jurisfed.experiments.synthetic import CLASSES, FEATURES, SyntheticSettings, generate
from jurisfed.modeling.examples import LabelledExamples
from jurisfed.modeling.mlp import DIGITS_MLP, Mlp
from jurisfed.rounds import TrainingConfig
from silo.data import LocalDataset, load_dataset

# Held out of digits per class: the jurisdictions' validation and test splits come from it.
DIGITS_HELD_OUT_FRACTION = 0.3
# The FedProx paper's model for Synthetic: multinomial logistic regression (610 parameters). It
# cannot fit several jurisdictions' labelling models at once, which is what the benchmark tests.
SYNTHETIC_LOGISTIC = Mlp(input_dim=FEATURES, hidden_units=(), num_classes=CLASSES)
# A wider model for measuring codecs: with 610 parameters the signed header and chunk framing,
# a fixed cost per stream, would outweigh the payload the codecs shrink.
SYNTHETIC_MLP = Mlp(input_dim=FEATURES, hidden_units=(256,), num_classes=CLASSES)
SYNTHETIC_TRAINING = TrainingConfig(epochs=2, batch_size=16, learning_rate=0.05, proximal_mu=0.0)


@dataclass(frozen=True)
class Silo:
    name: str
    data: LocalDataset


@dataclass(frozen=True)
class Jurisdiction:
    name: str
    silos: tuple[Silo, ...]
    validation: LabelledExamples  # the regional's own, for choosing a personalization
    test: LabelledExamples

    @property
    def example_count(self) -> int:
        return sum(silo.data.example_count for silo in self.silos)


@dataclass(frozen=True)
class Task:
    name: str
    arch: Mlp
    training: TrainingConfig
    jurisdictions: tuple[Jurisdiction, ...]

    def all_tests(self) -> LabelledExamples:
        """The jurisdictions' test splits together: the federation's held-out population."""
        return LabelledExamples(
            np.concatenate([j.test.features for j in self.jurisdictions]),
            np.concatenate([j.test.labels for j in self.jurisdictions]),
        )


def digits_task(
    workdir: Path,
    *,
    jurisdictions: tuple[str, ...],
    silos_per_jurisdiction: int,
    alpha: float,
    seed: int,
    training: TrainingConfig = DEMO_TRAINING,
    arch: Mlp = DIGITS_MLP,
) -> Task:
    """Digits under Dirichlet(alpha) label skew per jurisdiction (jurisfed.demo.partition)."""
    partition = partition_digits(
        workdir / f"digits-alpha{alpha:g}-seed{seed}",
        jurisdictions,
        [silos_per_jurisdiction] * len(jurisdictions),
        alpha=alpha,
        seed=seed,
        test_fraction=DIGITS_HELD_OUT_FRACTION,
    )
    rng = np.random.default_rng(seed)
    built = []
    for part in partition.jurisdictions:
        features, labels = load_split(part.test_path)
        order = rng.permutation(len(labels))
        half = len(order) // 2
        built.append(
            Jurisdiction(
                name=part.name,
                silos=tuple(Silo(silo.name, load_dataset(silo.train_path)) for silo in part.silos),
                validation=LabelledExamples(features[order[:half]], labels[order[:half]]),
                test=LabelledExamples(features[order[half:]], labels[order[half:]]),
            )
        )
    return Task(f"digits (Dirichlet alpha={alpha:g})", arch, training, tuple(built))


def synthetic_task(
    *,
    jurisdictions: tuple[str, ...],
    silos_per_jurisdiction: int,
    alpha: float,
    beta: float,
    seed: int,
    arch: Mlp,
    training: TrainingConfig = SYNTHETIC_TRAINING,
) -> Task:
    """Synthetic(alpha, beta) with its heterogeneity drawn per jurisdiction."""
    settings = SyntheticSettings(alpha, beta, jurisdictions, silos_per_jurisdiction)
    built = tuple(
        Jurisdiction(
            name=drawn.name,
            silos=tuple(
                Silo(f"{drawn.name.lower()}-silo-{k + 1}", LocalDataset(features, labels))
                for k, (features, labels) in enumerate(drawn.silo_splits)
            ),
            validation=LabelledExamples(*drawn.validation),
            test=LabelledExamples(*drawn.test),
        )
        for drawn in generate(settings, seed)
    )
    return Task(f"Synthetic({alpha:g}, {beta:g}), {arch.name}", arch, training, built)


@dataclass(frozen=True)
class TaskChoice:
    """A task an experiment names: digits with Dirichlet label skew `alpha` (`beta` None) or
    Synthetic(alpha, beta) training `synthetic_arch`, over `jurisdictions` of
    `silos_per_jurisdiction` silos each."""

    name: str
    alpha: float
    beta: float | None
    jurisdictions: tuple[str, ...]
    silos_per_jurisdiction: int
    synthetic_arch: Mlp = SYNTHETIC_LOGISTIC

    def make(self, workdir: Path, seed: int) -> Task:
        if self.beta is None:
            return digits_task(
                workdir,
                jurisdictions=self.jurisdictions,
                silos_per_jurisdiction=self.silos_per_jurisdiction,
                alpha=self.alpha,
                seed=seed,
            )
        return synthetic_task(
            jurisdictions=self.jurisdictions,
            silos_per_jurisdiction=self.silos_per_jurisdiction,
            alpha=self.alpha,
            beta=self.beta,
            seed=seed,
            arch=self.synthetic_arch,
        )
