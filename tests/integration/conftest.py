"""The fixture most integration tests share: aggregator processes under one directory, with the
test CA and the example policies re-signed with one-silo cohorts (rounds_support.POLICY_EDITS)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rounds_support import POLICY_EDITS, Cluster


@pytest.fixture
def cluster(
    tmp_path: Path, pki: Path, signed_policy_set: Callable[[Path, dict[str, Callable[[str], str]]], Path]
) -> Iterator[Cluster]:
    running = Cluster.create(tmp_path / "run", pki, signed_policy_set(tmp_path / "policies", POLICY_EDITS))
    yield running
    running.close()
