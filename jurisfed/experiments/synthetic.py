"""Synthetic(alpha, beta), the heterogeneity benchmark of FedProx (Li et al. 2020), per jurisdiction.

In the paper every device k draws its own labelling model and its own feature distribution:

    u_k ~ N(0, alpha)      W_k ~ N(u_k, 1) [10 x 60]    b_k ~ N(u_k, 1) [10]
    B_k ~ N(0, beta)       v_k[j] ~ N(B_k, 1)           x ~ N(v_k, Sigma), Sigma_jj = j^-1.2
    y = argmax softmax(W_k x + b_k)

alpha controls how much the labelling models differ, beta how much the inputs differ. Here the
draw is per *jurisdiction*: a jurisdiction's silos share its (W, b, v) plus a small silo-level
perturbation of standard deviation `silo_noise`, so silos inside a jurisdiction look alike and
jurisdictions differ as much as alpha and beta say. Validation and test examples of a
jurisdiction come from its own, unperturbed parameters. Everything depends on the seed alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FEATURES = 60
CLASSES = 10
# Feature j (1-based) has variance j^-1.2, as in the paper.
_FEATURE_STDDEV = np.arange(1, FEATURES + 1, dtype=np.float64) ** -0.6

FloatArray = npt.NDArray[np.float32]
LabelArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class SyntheticSettings:
    alpha: float
    beta: float
    jurisdictions: tuple[str, ...]
    silos_per_jurisdiction: int
    train_examples_per_silo: int = 200
    validation_examples: int = 300
    test_examples: int = 1000
    silo_noise: float = 0.1

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0 or self.silo_noise < 0:
            raise ValueError("alpha, beta and silo_noise must be zero or positive")
        if not self.jurisdictions or self.silos_per_jurisdiction < 1:
            raise ValueError("at least one jurisdiction with at least one silo is needed")
        if min(self.train_examples_per_silo, self.validation_examples, self.test_examples) < 1:
            raise ValueError("every split needs at least one example")


@dataclass(frozen=True)
class LabellingModel:
    """One (W, b, v) draw: the labelling model and the mean of the inputs."""

    weights: npt.NDArray[np.float64]  # [CLASSES, FEATURES]
    bias: npt.NDArray[np.float64]  # [CLASSES]
    input_mean: npt.NDArray[np.float64]  # [FEATURES]

    def sample(self, count: int, rng: np.random.Generator) -> tuple[FloatArray, LabelArray]:
        features = self.input_mean + rng.standard_normal((count, FEATURES)) * _FEATURE_STDDEV
        labels = np.argmax(features @ self.weights.T + self.bias, axis=1)  # softmax keeps the argmax
        return features.astype(np.float32), labels.astype(np.int64)

    def perturbed(self, stddev: float, rng: np.random.Generator) -> LabellingModel:
        return LabellingModel(
            self.weights + stddev * rng.standard_normal(self.weights.shape),
            self.bias + stddev * rng.standard_normal(self.bias.shape),
            self.input_mean + stddev * rng.standard_normal(self.input_mean.shape),
        )


@dataclass(frozen=True)
class SyntheticJurisdiction:
    name: str
    model: LabellingModel
    silo_splits: tuple[tuple[FloatArray, LabelArray], ...]
    validation: tuple[FloatArray, LabelArray]
    test: tuple[FloatArray, LabelArray]


def draw_labelling_model(alpha: float, beta: float, rng: np.random.Generator) -> LabellingModel:
    u = rng.normal(0.0, np.sqrt(alpha))
    big_b = rng.normal(0.0, np.sqrt(beta))
    return LabellingModel(
        weights=rng.normal(u, 1.0, (CLASSES, FEATURES)),
        bias=rng.normal(u, 1.0, CLASSES),
        input_mean=rng.normal(big_b, 1.0, FEATURES),
    )


def generate(settings: SyntheticSettings, seed: int) -> tuple[SyntheticJurisdiction, ...]:
    """The federation's data: per jurisdiction its silos' training splits, validation and test."""
    rng = np.random.default_rng(seed)
    jurisdictions = []
    for name in settings.jurisdictions:
        model = draw_labelling_model(settings.alpha, settings.beta, rng)
        silos = tuple(
            model.perturbed(settings.silo_noise, rng).sample(settings.train_examples_per_silo, rng)
            for _ in range(settings.silos_per_jurisdiction)
        )
        validation = model.sample(settings.validation_examples, rng)
        test = model.sample(settings.test_examples, rng)
        jurisdictions.append(SyntheticJurisdiction(name, model, silos, validation, test))
    return tuple(jurisdictions)
