"""Poisoning attacks a malicious silo mounts, and which silos mount them.

  sign flip x10   trains honestly, sends -10 times its delta (pushes the model backwards)
  scaling x100    trains honestly, sends 100 times its delta (model replacement)
  label flip      trains on its data with every label y replaced by (classes - 1 - y)

Malicious silos are spread evenly over the jurisdictions (the same fraction in each regional,
at least one where the fraction is above zero), chosen at random inside each by the seed.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping

import numpy as np

from jurisfed.experiments.tasks import Task
from jurisfed.tensors import FloatArray, Weights
from silo.data import LocalDataset

SIGN_FLIP_FACTOR = -10.0
SCALING_FACTOR = 100.0


class Attack(enum.Enum):
    SIGN_FLIP = "sign flip x10"
    SCALING = "scaling x100"
    LABEL_FLIP = "label flip"

    def poisoned_data(self, data: LocalDataset, num_classes: int) -> LocalDataset:
        if self is not Attack.LABEL_FLIP:
            return data
        return LocalDataset(data.features, (num_classes - 1 - data.labels).astype(np.int64))

    def poisoned_update(self, delta: Mapping[str, FloatArray]) -> Weights:
        factor = {Attack.SIGN_FLIP: SIGN_FLIP_FACTOR, Attack.SCALING: SCALING_FACTOR}.get(self, 1.0)
        return {name: (np.float32(factor) * values).astype(np.float32) for name, values in delta.items()}


def choose_attackers(task: Task, fraction: float, seed: int) -> frozenset[str]:
    """round(fraction x silos) malicious silos in every jurisdiction (at least one if fraction > 0)."""
    if not 0.0 <= fraction < 0.5:
        raise ValueError(f"the malicious fraction must be in [0, 0.5), got {fraction}")
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for jurisdiction in task.jurisdictions:
        names = [silo.name for silo in jurisdiction.silos]
        count = max(1, math.floor(fraction * len(names) + 0.5)) if fraction > 0 else 0
        chosen.update(str(name) for name in rng.choice(names, size=count, replace=False))
    return frozenset(chosen)
