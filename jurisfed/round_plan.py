"""The round plan: the file an ML engineer writes for `jurisfed round start --plan plan.yaml`.

One YAML file, validated at load into a frozen `RoundPlan` by jurisfed.config (so every
mistake is a ConfigError naming the key, unknown keys are refused, and environment variables
JURISFED_PLAN_<KEY> override keys as for every other file). Sections:

    name: demo                   carried by every contract derived from the plan
    rounds: 10
    cohort:       jurisdictions; min/max silos per jurisdiction
    quorum:       min_jurisdictions whose aggregates a round needs to commit
    deadlines:    silo_s <= regional_s < global_s, seconds from the round's opening
    training:     epochs, batch_size, learning_rate, proximal_mu (jurisfed.rounds.TrainingConfig)
    aggregation:  silos (the rule at each regional), jurisdictions (the rule at the global),
                  as jurisfed.aggregation.factories.parse_rule reads them
    compression:  silo_to_regional, regional_to_global: {codec, density, block_size}
    privacy:      max_epsilon per jurisdiction over the plan (needs a DP stage in aggregation.silos;
                  the regional's own policy cap wins when lower), delta
    gates:        jurisfed.gates.GateConfig
    eligibility:  jurisfed.eligibility.EligibilityRules

The global derives one signed round contract per round from it (round_contract.py).
See deploy/plans/demo.yaml.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from jurisfed.aggregation.differential_privacy import AdaptiveGaussianDP, GaussianDP
from jurisfed.aggregation.factories import parse_rule
from jurisfed.aggregation.process import AggregationFactory, Wrapper
from jurisfed.auth.identity import GLOBAL_JURISDICTION, check_jurisdiction
from jurisfed.compression.codec import Codec
from jurisfed.config import load_config, setting
from jurisfed.eligibility import EligibilityRules
from jurisfed.errors import ConfigError, InvalidInput
from jurisfed.gates import GateConfig
from jurisfed.rounds import TrainingConfig

ENV_PREFIX = "plan"
_PLAN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Cohort:
    jurisdictions: tuple[str, ...] = setting("jurisdictions invited to every round, e.g. [EU, IN, US]")
    min_silos_per_jurisdiction: int = setting(
        "fewest silo updates a regional needs before it forwards its aggregate", 1
    )
    max_silos_per_jurisdiction: int = setting("most silos a regional selects for one round", 100)

    def __post_init__(self) -> None:
        if not self.jurisdictions:
            raise ValueError("jurisdictions must name at least one jurisdiction")
        if len(set(self.jurisdictions)) != len(self.jurisdictions):
            raise ValueError(f"jurisdictions must be distinct, got {list(self.jurisdictions)}")
        for name in self.jurisdictions:
            check_jurisdiction(name)
            if name == GLOBAL_JURISDICTION:
                raise ValueError(
                    f"jurisdictions: {GLOBAL_JURISDICTION} is the global aggregator's, not a member"
                )
        if not 1 <= self.min_silos_per_jurisdiction <= self.max_silos_per_jurisdiction:
            raise ValueError(
                f"need 1 <= min_silos_per_jurisdiction ({self.min_silos_per_jurisdiction}) "
                f"<= max_silos_per_jurisdiction ({self.max_silos_per_jurisdiction})"
            )


@dataclass(frozen=True)
class Quorum:
    min_jurisdictions: int = setting("fewest jurisdiction aggregates a round needs to commit", 1)

    def __post_init__(self) -> None:
        if self.min_jurisdictions < 1:
            raise ValueError(f"min_jurisdictions must be at least 1, got {self.min_jurisdictions}")


@dataclass(frozen=True)
class Deadlines:
    silo_s: float = setting("seconds a silo has, from the round's opening, to train and upload", 100.0)
    regional_s: float = setting("seconds after which a regional closes its local round and forwards", 110.0)
    global_s: float = setting("seconds after which the global closes the round", 120.0)

    def __post_init__(self) -> None:
        for name in ("silo_s", "regional_s", "global_s"):
            value = getattr(self, name)
            if not 0.0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")
        if not self.silo_s <= self.regional_s < self.global_s:
            raise ValueError(
                f"need silo_s ({self.silo_s:g}) <= regional_s ({self.regional_s:g}) < global_s "
                f"({self.global_s:g}): each tier must close before the one above it does"
            )


@dataclass(frozen=True)
class Aggregation:
    silos: str = setting("rule combining a jurisdiction's silo updates at its regional", "mean")
    jurisdictions: str = setting("rule combining the jurisdictions' aggregates at the global", "mean")

    def __post_init__(self) -> None:
        for name in ("silos", "jurisdictions"):
            try:
                parse_rule(getattr(self, name))
            except InvalidInput as error:
                raise ValueError(f"{name}: {error}") from None

    def silos_rule(self) -> AggregationFactory:
        return parse_rule(self.silos)

    def jurisdictions_rule(self) -> AggregationFactory:
        return parse_rule(self.jurisdictions)

    def canonical(self) -> Aggregation:
        """The same rules, each in its one canonical spelling (every argument written out)."""
        return Aggregation(str(self.silos_rule()), str(self.jurisdictions_rule()))


@dataclass(frozen=True)
class HopCompression:
    codec: str = setting("raw, int8, int8-blocks, top-k or top-k-int8", "raw")
    density: float | None = setting("fraction of values top-k keeps; empty: the codec's default", None)
    block_size: int | None = setting("values per int8 scale of the blocked codecs; empty: default", None)

    def __post_init__(self) -> None:
        self.to_codec()

    def to_codec(self) -> Codec:
        """The codec this hop uses; ValueError naming the setting if the combination is invalid."""
        return Codec.named(self.codec, density=self.density, block_size=self.block_size)

    def canonical(self) -> HopCompression:
        """The same codec with every setting written out, so one codec has one spelling."""
        codec = self.to_codec()
        return HopCompression(codec.kind.value, codec.density, codec.block_size)


@dataclass(frozen=True)
class Compression:
    silo_to_regional: HopCompression = field(
        default_factory=HopCompression, metadata={"help": "how silos encode their updates"}
    )
    regional_to_global: HopCompression = field(
        default_factory=HopCompression, metadata={"help": "how regionals encode their aggregates"}
    )

    def canonical(self) -> Compression:
        return Compression(self.silo_to_regional.canonical(), self.regional_to_global.canonical())


@dataclass(frozen=True)
class Privacy:
    max_epsilon: float | None = setting(
        "epsilon each jurisdiction may spend over the plan's rounds; the regional's policy cap wins when "
        "lower; empty: no differential privacy required",
        None,
    )
    delta: float = setting("delta at which epsilon is accounted", 1e-5)

    def __post_init__(self) -> None:
        if self.max_epsilon is not None and not 0.0 < self.max_epsilon < math.inf:
            raise ValueError(f"max_epsilon must be a positive number, got {self.max_epsilon}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be between 0 and 1, got {self.delta}")


@dataclass(frozen=True)
class RoundPlan:
    name: str = setting("the plan's name, carried by every round contract derived from it")
    rounds: int = setting("rounds to run")
    cohort: Cohort = setting("who takes part")
    quorum: Quorum = field(default_factory=Quorum, metadata={"help": "when a round may commit"})
    deadlines: Deadlines = field(
        default_factory=Deadlines, metadata={"help": "when each tier closes the round"}
    )
    training: TrainingConfig = field(
        default_factory=TrainingConfig, metadata={"help": "local training every silo runs"}
    )
    aggregation: Aggregation = field(default_factory=Aggregation, metadata={"help": "the rule at each tier"})
    compression: Compression = field(
        default_factory=Compression, metadata={"help": "the encoding on each hop"}
    )
    privacy: Privacy = field(
        default_factory=Privacy, metadata={"help": "differential privacy the plan requires"}
    )
    gates: GateConfig = field(
        default_factory=GateConfig, metadata={"help": "what a candidate model must pass before it commits"}
    )
    eligibility: EligibilityRules = field(
        default_factory=EligibilityRules, metadata={"help": "which silos may take part"}
    )

    def __post_init__(self) -> None:
        if not _PLAN_NAME.fullmatch(self.name):
            raise ValueError(f"name {self.name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")
        check_sections(self.cohort, self.quorum, self.training, self.aggregation, self.privacy)


def check_sections(
    cohort: Cohort, quorum: Quorum, training: TrainingConfig, aggregation: Aggregation, privacy: Privacy
) -> None:
    """What no single section can check alone; ValueError naming the keys involved."""
    if quorum.min_jurisdictions > len(cohort.jurisdictions):
        raise ValueError(
            f"quorum.min_jurisdictions ({quorum.min_jurisdictions}) exceeds the "
            f"{len(cohort.jurisdictions)} jurisdiction(s) of cohort.jurisdictions"
        )
    if training.epochs < 1 or training.batch_size < 1:
        raise ValueError(
            f"training.epochs ({training.epochs}) and training.batch_size ({training.batch_size}) "
            "must be at least 1"
        )
    if not 0.0 < training.learning_rate < math.inf or not 0.0 <= training.proximal_mu < math.inf:
        raise ValueError(
            f"training.learning_rate ({training.learning_rate}) must be positive and training.proximal_mu "
            f"({training.proximal_mu}) not negative"
        )
    if privacy.max_epsilon is not None and not applies_dp(aggregation.silos_rule()):
        raise ValueError(
            f"privacy.max_epsilon is {privacy.max_epsilon:g}, but aggregation.silos ({aggregation.silos!r}) "
            "adds no noise: end it with dp_gaussian(...) or dp_adaptive(...)"
        )


def applies_dp(rule: AggregationFactory) -> bool:
    """Whether `rule`, or a rule it wraps, adds differential-privacy noise."""
    while isinstance(rule, Wrapper):
        rule = rule.inner
    return isinstance(rule, GaussianDP | AdaptiveGaussianDP)


def load_plan(path: Path, *, environ: Mapping[str, str]) -> RoundPlan:
    """Read and validate the plan in `path`; ConfigError naming the file and the key otherwise."""
    try:
        return load_config(RoundPlan, path, env_prefix=ENV_PREFIX, environ=environ)
    except ConfigError as error:
        raise ConfigError(f"round plan {path}: {error}") from error
