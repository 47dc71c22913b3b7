"""FedPer: local layers stay home, the shared part is all that leaves."""

from __future__ import annotations

import numpy as np
import pytest

from jurisfed.errors import InvalidInput
from jurisfed.modeling.mlp import DIGITS_MLP
from jurisfed.personalization.local_layers import local_tensor_names, shared_part, with_local_layers

SPEC = DIGITS_MLP.spec()


def test_a_layer_names_its_kernel_and_bias() -> None:
    assert local_tensor_names(SPEC, ["head"]) == ("head/kernel", "head/bias")
    with pytest.raises(InvalidInput, match="not part of model"):
        local_tensor_names(SPEC, ["decoder"])


def test_the_round_opens_on_the_global_body_and_the_jurisdictions_own_head() -> None:
    global_ = DIGITS_MLP.initial_weights(0)
    own = DIGITS_MLP.initial_weights(1)
    names = local_tensor_names(SPEC, ["head"])
    start = with_local_layers(global_, own, names)
    np.testing.assert_array_equal(start["head/kernel"], own["head/kernel"])
    np.testing.assert_array_equal(start["hidden_1/kernel"], global_["hidden_1/kernel"])
    first_round = with_local_layers(global_, None, names)
    np.testing.assert_array_equal(first_round["head/kernel"], global_["head/kernel"])


def test_the_shared_part_leaves_the_head_out() -> None:
    weights = DIGITS_MLP.initial_weights(0)
    shared = shared_part(weights, local_tensor_names(SPEC, ["head"]))
    assert sorted(shared) == sorted(t.name for t in SPEC.tensors if not t.name.startswith("head/"))
