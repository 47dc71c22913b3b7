"""Synthetic(alpha, beta) per jurisdiction: shapes, determinism, heterogeneity that follows alpha and beta."""

from __future__ import annotations

import numpy as np

from jurisfed.experiments.synthetic import CLASSES, FEATURES, SyntheticSettings, generate

MANY = tuple(f"J{n:02d}" for n in range(30))


def _settings(alpha: float, beta: float, jurisdictions: tuple[str, ...] = ("EU", "US")) -> SyntheticSettings:
    return SyntheticSettings(
        alpha, beta, jurisdictions, silos_per_jurisdiction=3, train_examples_per_silo=50, test_examples=40
    )


def test_splits_have_the_benchmark_shapes_and_types() -> None:
    federation = generate(_settings(1.0, 1.0), seed=0)
    assert [j.name for j in federation] == ["EU", "US"]
    for jurisdiction in federation:
        assert len(jurisdiction.silo_splits) == 3
        for features, labels in [*jurisdiction.silo_splits, jurisdiction.validation, jurisdiction.test]:
            assert features.dtype == np.float32
            assert features.shape[1] == FEATURES
            assert labels.dtype == np.int64
            assert labels.shape == (features.shape[0],)
            assert labels.min() >= 0
            assert labels.max() < CLASSES
        assert jurisdiction.silo_splits[0][0].shape[0] == 50
        assert jurisdiction.test[0].shape[0] == 40


def test_the_same_seed_gives_the_same_data_and_another_seed_other_data() -> None:
    first, again, other = (generate(_settings(1.0, 1.0), seed) for seed in (3, 3, 4))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.silo_splits[1][0], b.silo_splits[1][0])
        np.testing.assert_array_equal(a.test[1], b.test[1])
    assert not np.array_equal(first[0].silo_splits[0][0], other[0].silo_splits[0][0])


def test_labelling_models_differ_more_across_jurisdictions_as_alpha_grows() -> None:
    def spread(alpha: float) -> float:
        models = [j.model for j in generate(_settings(alpha, 0.0, MANY), seed=1)]
        return float(np.std([m.weights.mean() for m in models]))

    assert spread(0.0) < spread(1.0) < spread(10.0)


def test_inputs_differ_more_across_jurisdictions_as_beta_grows() -> None:
    def spread(beta: float) -> float:
        federation = generate(_settings(0.0, beta, MANY), seed=2)
        return float(np.std([j.test[0].mean() for j in federation]))

    assert spread(0.0) < spread(1.0) < spread(10.0)


def test_silos_of_a_jurisdiction_are_closer_to_each_other_than_to_another_jurisdiction() -> None:
    eu, us = generate(_settings(1.0, 1.0), seed=5)
    eu_means = [features.mean(axis=0) for features, _ in eu.silo_splits]
    us_mean = us.silo_splits[0][0].mean(axis=0)
    assert np.linalg.norm(eu_means[0] - eu_means[1]) < np.linalg.norm(eu_means[0] - us_mean)
