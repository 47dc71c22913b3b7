"""The regional's validation set: loaded or refused at start-up, and mixing only what fits it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jurisfed.errors import ConfigError
from jurisfed.modeling.examples import LabelledExamples
from jurisfed.modeling.mlp import Mlp
from regional.personalization import Personalizer

ARCH = Mlp.parse("mlp-4-8-3")


def test_a_validation_file_that_is_not_features_and_labels_stops_the_regional_at_start_up(
    tmp_path: Path,
) -> None:
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((3, 4)))
    (tmp_path / "text.npz").write_text("not an archive")

    for path in (wrong, tmp_path / "text.npz", tmp_path / "missing.npz"):
        with pytest.raises(ConfigError, match=f"validation_set {path}"):
            Personalizer.load(path, min_gain=0.0)
    good = tmp_path / "good.npz"
    np.savez(good, features=np.zeros((3, 4)), labels=np.array([0, 1, 2]))
    with pytest.raises(ConfigError, match="personalization_min_gain"):
        Personalizer.load(good, min_gain=1.5)
    assert Personalizer.load(good, min_gain=0.02).validation.labels.tolist() == [0, 1, 2]


def test_the_jurisdiction_model_is_served_when_it_is_better_on_validation_and_the_global_when_not() -> None:
    rng = np.random.default_rng(3)
    features = rng.normal(size=(90, 4)).astype(np.float32)
    teacher = ARCH.initial_weights(seed=1)
    labels = np.argmax(ARCH.logits(teacher, features), axis=1).astype(np.int64)
    personalizer = Personalizer(LabelledExamples(features, labels))
    stranger = ARCH.initial_weights(seed=2)

    own_is_right = personalizer.mix(ARCH.name, stranger, teacher)
    global_is_right = personalizer.mix(ARCH.name, teacher, stranger)

    assert own_is_right is not None
    assert global_is_right is not None
    assert own_is_right.choice.mixing_weight > 0.0
    assert own_is_right.choice.validation_accuracy == 1.0
    assert global_is_right.choice.mixing_weight == 0.0  # never worse than the global model there
    assert global_is_right.choice.validation_accuracy == global_is_right.choice.global_validation_accuracy


def test_a_validation_set_of_another_shape_is_not_used_and_the_round_keeps_its_own_model() -> None:
    personalizer = Personalizer(LabelledExamples(np.zeros((5, 7), np.float32), np.zeros(5, np.int64)))

    assert personalizer.mix(ARCH.name, ARCH.initial_weights(1), ARCH.initial_weights(2)) is None
    assert personalizer.mix("resnet-50", ARCH.initial_weights(1), ARCH.initial_weights(2)) is None
