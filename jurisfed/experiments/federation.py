"""The in-process harness: silos -> one regional per jurisdiction -> global, with the tiers' parts.

Nothing is re-implemented here; each step calls what the tiers call:
  - a silo trains with `silo.trainer.train` (TensorFlow, traced; FedProx `proximal_mu`) on its
    `silo.data.LocalDataset`, and sends its delta over the silo -> regional hop (`hops.py`:
    the tiers' codecs, error feedback, chunks, signatures and byte meter; decoded by the
    tiers' TensorAssembler);
  - a regional reopens its privacy ledger (`PrivacyLedger`, SQLite in the run's state
    directory, as a restarted regional would) and refuses the round when the next release
    would exceed its epsilon cap (`would_exceed`); screens the updates
    (`diagnostics.screen_batch` with an `OutlierRule`), quarantines outliers in its
    `QuarantineRegistry` (same SQLite file) and leaves them out; aggregates the rest with its
    rule (`parse_rule(text).create(spec)`: mean, trimmed_mean, median, clip, zero,
    dp_gaussian, dp_adaptive) and records the DP release (`record_within`); keeps its
    jurisdiction's model and local layers (`jurisfed.personalization`); sends the shared part
    over the regional -> global hop;
  - the global combines the jurisdictions' decoded aggregates with the weighted `mean` rule,
    weights the example totals, and adds the result to the global model.
An operator re-admits every silo quarantined in a round once the round has closed, so each
silo sends again next round and detection is measured every round.
No gRPC channel, TLS handshake or process boundary is involved: messages are built, measured
and decoded in one process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jurisfed.aggregation.diagnostics import OutlierRule, screen_batch
from jurisfed.aggregation.differential_privacy import find_dp
from jurisfed.aggregation.factories import parse_rule
from jurisfed.aggregation.quarantine import QuarantineRegistry
from jurisfed.errors import InvalidInput, WrongState
from jurisfed.experiments.attacks import Attack
from jurisfed.experiments.hops import HopCodec, HopSender, regional_identity, silo_identity
from jurisfed.experiments.tasks import Jurisdiction, Task
from jurisfed.modeling.examples import LabelledExamples
from jurisfed.modeling.mlp import Mlp
from jurisfed.personalization.interpolation import personalize
from jurisfed.personalization.local_layers import local_tensor_names, shared_part, with_local_layers
from jurisfed.privacy.accounting import DEFAULT_DELTA, release_event
from jurisfed.privacy.ledger import Budget, PrivacyLedger
from jurisfed.tensors import FloatArray, Weights, add
from silo.trainer import train

GLOBAL_RULE = "mean"
BUDGET_PERIOD_DAYS = 365.0
OPERATOR = "experiment-operator"
RAW_HOP = HopCodec()


@dataclass(frozen=True)
class FederationSettings:
    regional_rule: str = "mean"
    screen: OutlierRule | None = None  # None: no screening, every update is aggregated
    silo_hop: HopCodec = RAW_HOP
    regional_hop: HopCodec = RAW_HOP
    local_layers: tuple[str, ...] = ()  # FedPer: layers that stay in the jurisdiction
    # Interpolation: the regional also keeps a jurisdiction model w_j that its silos train on
    # their own data only (started from the first global model, then continued round after
    # round, as APFL's local model), and serves a*w_j + (1-a)*w_g with a chosen on validation.
    interpolate: bool = False
    min_validation_gain: float = 0.0  # a mixture must beat the global model on validation by this
    epsilon_caps: tuple[tuple[str, float], ...] = ()  # (jurisdiction, cap) at `delta`
    delta: float = DEFAULT_DELTA
    attack: Attack | None = None
    attackers: frozenset[str] = frozenset()


@dataclass(frozen=True)
class JurisdictionRound:
    jurisdiction: str
    refusal: str  # why the regional refused the round; "" when it contributed
    global_accuracy: float  # the new global model on the jurisdiction's test split
    personalized_accuracy: float | None  # the model served to its silos, when personalized
    mixing_weight: float | None
    epsilon_spent: float | None  # by the ledger at `delta`, after this round
    silo_bytes: int  # all its silos' update streams
    regional_bytes: int  # its aggregate stream to the global
    attacker_updates: int
    attackers_flagged: int
    honest_updates: int
    honest_flagged: int


@dataclass(frozen=True)
class RoundRecord:
    number: int
    global_accuracy: float  # on all jurisdictions' test splits together
    jurisdictions: tuple[JurisdictionRound, ...]


@dataclass(frozen=True)
class _Outcome:
    contribution: Weights | None
    example_total: int
    jurisdiction_model: Weights | None
    refusal: str
    epsilon_spent: float | None
    silo_bytes: int = 0
    regional_bytes: int = 0
    counts: tuple[int, int, int, int] = (0, 0, 0, 0)  # attacker sent/flagged, honest sent/flagged


class Regional:
    """One jurisdiction's aggregator and its state (rule state, SQLite, residuals, local layers)."""

    def __init__(
        self, task: Task, jurisdiction: Jurisdiction, settings: FederationSettings, seed: int, state_dir: Path
    ) -> None:
        self.task = task
        self.jurisdiction = jurisdiction
        self.settings = settings
        self.seed = seed
        self.spec = task.arch.spec()
        self.local_names = local_tensor_names(self.spec, settings.local_layers)
        self.shared_spec = self.spec.without(self.local_names)
        factory = parse_rule(settings.regional_rule)
        self.dp = find_dp(factory)
        rng = np.random.default_rng([seed, sum(jurisdiction.name.encode())])
        self.process = factory.create(self.spec, rng=rng)
        self.rule_state = self.process.initialize()
        self.state_file = state_dir / f"{jurisdiction.name.lower()}-regional.sqlite"
        self.quarantine = QuarantineRegistry(self.state_file)
        self.cap = dict(settings.epsilon_caps).get(jurisdiction.name)
        name = jurisdiction.name
        self.senders = {
            silo.name: HopSender(silo_identity(name, silo.name), self.spec, settings.silo_hop, rng)
            for silo in jurisdiction.silos
        }
        self.upstream = HopSender(regional_identity(name), self.shared_spec, settings.regional_hop, rng)
        self.own_local: Weights | None = None
        self.personal: Weights | None = None  # w_j of interpolation personalization
        self.personal_process = parse_rule("mean").create(self.spec)

    def run_round(self, number: int, global_weights: Mapping[str, FloatArray]) -> _Outcome:
        name, settings = self.jurisdiction.name, self.settings
        event = release_event(self.dp.dp_event()) if self.dp is not None else None
        ledger = PrivacyLedger(self.state_file)  # reopened each round: a restart keeps the ledger
        budget = Budget(self.cap, settings.delta, BUDGET_PERIOD_DAYS) if self.cap is not None else None
        if event is not None and budget is not None:
            check = ledger.would_exceed(name, event, budget.cap_epsilon, budget.delta, budget.period_days)
            if check.exceeds:
                return _Outcome(None, 0, None, check.reason, check.epsilon_spent)

        start = with_local_layers(global_weights, self.own_local, self.local_names)
        updates, example_counts, silo_bytes = self._collect(number, start)
        flagged = self._screen(number, updates)
        admitted = [silo for silo in updates if silo not in flagged]
        attackers = set(updates) & settings.attackers
        counts = (
            len(attackers),
            len(attackers & flagged),
            len(updates) - len(attackers),
            len(flagged - attackers),
        )
        for silo in flagged:  # the operator reviews and re-admits once the round has closed
            self.quarantine.readmit(silo, by=OPERATOR, note=f"reviewed after round {number}")
        if not admitted:
            refused = len(self.jurisdiction.silos) - len(updates)
            why = f"no update to aggregate ({refused} refused on the wire, {len(flagged)} quarantined)"
            return _Outcome(None, 0, None, why, None, silo_bytes, 0, counts)

        output = self.process.next(
            self.rule_state, [updates[s] for s in admitted], [float(example_counts[s]) for s in admitted]
        )
        self.rule_state = output.state
        epsilon_spent = None
        if event is not None:
            release = f"round-{number}"
            if budget is not None:
                if not ledger.record_within(name, release, event, budget).recorded:
                    raise WrongState(f"{name}: release {release} no longer fits its budget")
            else:
                ledger.record(name, release, event)
            epsilon_spent = ledger.spent(name, delta=settings.delta)

        jurisdiction_model = add(start, output.result)
        if self.local_names:
            self.own_local = {n: jurisdiction_model[n] for n in self.local_names}
        if settings.interpolate:
            jurisdiction_model = self._train_personal(number, start)
        example_total = sum(example_counts[s] for s in admitted)
        try:
            delivery = self.upstream.send_aggregate(
                number, shared_part(output.result, self.local_names), len(admitted), example_total
            )
        except InvalidInput as error:  # the aggregate overflowed: the global's wire checks refuse it
            why = f"aggregate refused by the global: {error}"
            return _Outcome(None, 0, jurisdiction_model, why, epsilon_spent, silo_bytes, 0, counts)
        return _Outcome(
            delivery.received,
            example_total,
            jurisdiction_model,
            "",
            epsilon_spent,
            silo_bytes,
            delivery.wire_bytes,
            counts,
        )

    def _collect(self, number: int, start: Weights) -> tuple[dict[str, Weights], dict[str, int], int]:
        """Every silo not in quarantine trains from `start` and sends its (decoded) update."""
        attack = self.settings.attack
        updates: dict[str, Weights] = {}
        example_counts: dict[str, int] = {}
        wire_bytes = 0
        for index, silo in enumerate(self.jurisdiction.silos):
            if self.quarantine.is_quarantined(silo.name):
                continue
            malicious = attack is not None and silo.name in self.settings.attackers
            data = (
                attack.poisoned_data(silo.data, self.task.arch.num_classes)
                if attack and malicious
                else silo.data
            )
            result = train(
                self.task.arch,
                start,
                data,
                self.task.training,
                seed=self.seed * 1_000_003 + number * 1009 + index,
            )
            delta = attack.poisoned_update(result.delta) if attack and malicious else result.delta
            try:
                delivery = self.senders[silo.name].send_update(number, delta, result.example_count)
            except InvalidInput:  # NaN or overflow: the regional's wire checks refuse the stream
                continue
            updates[silo.name] = delivery.received
            example_counts[silo.name] = result.example_count
            wire_bytes += delivery.wire_bytes
        return updates, example_counts, wire_bytes

    def _train_personal(self, number: int, start: Weights) -> Weights:
        """One more round of the jurisdiction model on its silos' data alone (never exported)."""
        personal = self.personal if self.personal is not None else start
        results = [
            train(
                self.task.arch,
                personal,
                silo.data,
                self.task.training,
                seed=self.seed * 7919 + number * 1013 + k,
            )
            for k, silo in enumerate(self.jurisdiction.silos)
        ]
        output = self.personal_process.next(
            self.personal_process.initialize(),
            [r.delta for r in results],
            [float(r.example_count) for r in results],
        )
        self.personal = add(personal, output.result)
        return self.personal

    def _screen(self, number: int, updates: Mapping[str, Weights]) -> set[str]:
        if self.settings.screen is None:
            return set()
        flagged = set()
        for silo, diagnosis in screen_batch(self.spec, updates, self.settings.screen).items():
            if diagnosis.outlier:
                self.quarantine.quarantine(silo, number, diagnosis.reason, diagnosis.score)
                flagged.add(silo)
        return flagged


class Federation:
    def __init__(self, task: Task, settings: FederationSettings, *, seed: int, state_dir: Path) -> None:
        self.task = task
        self.settings = settings
        self.regionals = tuple(Regional(task, j, settings, seed, state_dir) for j in task.jurisdictions)
        self.global_weights: Weights = task.arch.initial_weights(seed)
        self.global_process = parse_rule(GLOBAL_RULE).create(self.regionals[0].shared_spec)
        self.global_state = self.global_process.initialize()
        self.all_tests = task.all_tests()

    def run_round(self, number: int) -> RoundRecord:
        outcomes = [regional.run_round(number, self.global_weights) for regional in self.regionals]
        contributions = [o for o in outcomes if o.contribution is not None]
        if contributions:
            output = self.global_process.next(
                self.global_state,
                [o.contribution for o in contributions if o.contribution is not None],
                [float(o.example_total) for o in contributions],
            )
            self.global_state = output.state
            shared = {name: self.global_weights[name] for name in output.result}
            self.global_weights = {**self.global_weights, **add(shared, output.result)}
        arch, tests = self.task.arch, self.all_tests
        rows = tuple(
            self._evaluate(regional, outcome)
            for regional, outcome in zip(self.regionals, outcomes, strict=True)
        )
        return RoundRecord(number, arch.accuracy(self.global_weights, tests.features, tests.labels), rows)

    def _evaluate(self, regional: Regional, outcome: _Outcome) -> JurisdictionRound:
        arch, test = self.task.arch, regional.jurisdiction.test
        personalized_accuracy = mixing_weight = None
        if regional.local_names:
            served = with_local_layers(self.global_weights, regional.own_local, regional.local_names)
            personalized_accuracy = _accuracy(arch, served, test)
        elif self.settings.interpolate and outcome.jurisdiction_model is not None:
            chosen = personalize(
                arch,
                self.global_weights,
                outcome.jurisdiction_model,
                regional.jurisdiction.validation,
                min_gain=self.settings.min_validation_gain,
            )
            personalized_accuracy = _accuracy(arch, chosen.weights, test)
            mixing_weight = chosen.choice.mixing_weight
        return JurisdictionRound(
            jurisdiction=regional.jurisdiction.name,
            refusal=outcome.refusal,
            global_accuracy=_accuracy(arch, self.global_weights, test),
            personalized_accuracy=personalized_accuracy,
            mixing_weight=mixing_weight,
            epsilon_spent=outcome.epsilon_spent,
            silo_bytes=outcome.silo_bytes,
            regional_bytes=outcome.regional_bytes,
            attacker_updates=outcome.counts[0],
            attackers_flagged=outcome.counts[1],
            honest_updates=outcome.counts[2],
            honest_flagged=outcome.counts[3],
        )


def _accuracy(arch: Mlp, weights: Weights, examples: LabelledExamples) -> float:
    return arch.accuracy(weights, examples.features, examples.labels)


@dataclass(frozen=True)
class FederationRun:
    records: tuple[RoundRecord, ...]
    quarantines_opened: int  # over all regionals' QuarantineRegistry
    readmissions: int


def run_federation(
    task: Task, settings: FederationSettings, *, seed: int, rounds: int, state_dir: Path
) -> FederationRun:
    """`rounds` rounds from the architecture's initial weights for `seed`; state lives in `state_dir`."""
    federation = Federation(task, settings, seed=seed, state_dir=state_dir)
    records = tuple(federation.run_round(number) for number in range(1, rounds + 1))
    counts = [regional.quarantine.counts() for regional in federation.regionals]
    return FederationRun(records, sum(c.quarantined for c in counts), sum(c.readmitted for c in counts))
