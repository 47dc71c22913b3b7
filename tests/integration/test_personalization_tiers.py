"""Interpolation personalization at a real regional: with a validation set in its configuration,
the model it serves its silos after a round is the mix of its own model and the global one that
is most accurate on that set, recorded with the mixing weight, and never less accurate there
than the global model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rounds_support import ARCH, CALL_S, SPEC, Cluster, write_plan

from jurisfed.personalization.interpolation import interpolate
from jurisfed.tensors import weights_sha256
from jurisfed.wire.models import receive_model
from jurisfed.wire.v1 import rounds_pb2
from regional.personalization import ServedModels

pytestmark = pytest.mark.slow


def test_the_regional_serves_the_mix_most_accurate_on_its_validation_set(
    cluster: Cluster, tmp_path: Path
) -> None:
    rng = np.random.default_rng(7)
    features = rng.normal(size=(60, ARCH.input_dim)).astype(np.float32)
    labels = rng.integers(0, ARCH.num_classes, size=60)
    validation = tmp_path / "validation.npz"
    np.savez(validation, features=features, labels=labels)
    cluster.start_global(plan=str(write_plan(tmp_path / "plan.yaml", rounds=1)))
    cluster.start_regional("EU", ["silo-a", "silo-b"], min_silos=2, validation_set=str(validation))
    a, b = cluster.silo("EU", "silo-a"), cluster.silo("EU", "silo-b")

    task = a.next_round(0)
    global_model = a.fetch(task.round, task.base_model_sha256)  # round 1: no local layers of its own yet
    rng_update = np.random.default_rng(11)
    for silo in (a, b):
        update = {t.name: rng_update.normal(scale=0.5, size=t.shape).astype(np.float32) for t in SPEC.tensors}
        assert silo.submit(task.round, update, examples=50, key=f"{silo.node}-1").accepted
    cluster.wait_until_finished()

    state, blobs = cluster.state("regional-EU"), cluster.blobs("regional-EU")
    own_model = blobs.get_weights(state.checkpoint(1).blob_sha256, SPEC)
    served = ServedModels(cluster.directory / "regional-EU" / "state.sqlite").served(1)
    assert served is not None
    served_model = blobs.get_weights(served.blob_sha256, SPEC)
    expected = interpolate(own_model, global_model, served.mixing_weight)
    for name, values in expected.items():
        np.testing.assert_allclose(served_model[name], values, atol=1e-6)
    assert served.global_validation_accuracy == pytest.approx(ARCH.accuracy(global_model, features, labels))
    assert served.validation_accuracy == pytest.approx(ARCH.accuracy(served_model, features, labels))
    assert served.validation_accuracy >= served.global_validation_accuracy
    for weight in np.linspace(0.0, 1.0, 11):  # no other weight of the grid does better on validation
        mix = interpolate(own_model, global_model, float(weight))
        assert ARCH.accuracy(mix, features, labels) <= served.validation_accuracy + 1e-9

    # What a silo of the jurisdiction fetches is exactly the served mixture.
    request = rounds_pb2.FetchModelRequest(round=1)
    fetched = receive_model(
        a.stub.FetchPersonalizedModel(request, timeout=CALL_S), SPEC, weights_sha256(SPEC, served_model)
    )
    assert sorted(fetched) == sorted(served_model)
