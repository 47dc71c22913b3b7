"""What changed between two versions of a policy, each change one plain sentence.

`diff_policies(old, new)` compares meaning, not text: re-indenting or reordering keys is no
change. Each `Change` says whether it loosens what may flow, tightens it, or neither, so that
a reviewer can read the loosening ones first.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from jurisfed.policy import wording
from jurisfed.policy.model import Conditions, EndpointScope, Policy, PrivacyLimit, Rule

__all__ = ["Change", "Effect", "diff_policies", "render_changes"]


class Effect(enum.Enum):
    LOOSENS = "loosens"
    TIGHTENS = "tightens"
    NEUTRAL = "neutral"


@dataclass(frozen=True)
class Change:
    sentence: str
    effect: Effect = Effect.NEUTRAL


def diff_policies(old: Policy, new: Policy) -> list[Change]:
    """Every difference in meaning from `old` to `new`, in the order a reviewer reads a policy."""
    changes: list[Change] = []
    changes += _identity(old, new)
    changes += _names(old, new)
    changes += _restrictions(old, new)
    changes += _rules(old, new)
    changes += _retention(old, new)
    return changes


def render_changes(old: Policy, new: Policy, changes: list[Change]) -> str:
    """The changes as Markdown: a headline, then one bullet per change, its effect in brackets."""
    head = f"Policy {new.id}: version {old.version} → version {new.version}"
    if not changes:
        return f"{head}\n\nNo change in meaning: both versions say the same thing ({new.sha256}).\n"
    counts = {effect: sum(c.effect is effect for c in changes) for effect in Effect}
    summary = (
        f"{len(changes)} change{'s' if len(changes) != 1 else ''}: {counts[Effect.LOOSENS]} loosen, "
        f"{counts[Effect.TIGHTENS]} tighten, {counts[Effect.NEUTRAL]} neither"
    )
    lines = [head, "", summary, ""]
    lines += [
        f"- [{c.effect.value}] {c.sentence}" if c.effect is not Effect.NEUTRAL else f"- {c.sentence}"
        for c in changes
    ]
    return "\n".join(lines) + "\n"


def _identity(old: Policy, new: Policy) -> list[Change]:
    changes: list[Change] = []
    if old.id != new.id:
        changes.append(Change(f"The policy id changes from {old.id} to {new.id}."))
    if new.version <= old.version and old.sha256 != new.sha256:
        changes.append(
            Change(
                f"The version number does not increase ({old.version} → {new.version}) "
                "although the policy changed."
            )
        )
    if old.jurisdiction != new.jurisdiction:
        changes.append(
            Change(
                f"The policy now belongs to jurisdiction {new.jurisdiction} instead of {old.jurisdiction}."
            )
        )
    if old.title != new.title:
        changes.append(Change(f'The title changes from "{old.title}" to "{new.title}".'))
    if old.description != new.description:
        changes.append(Change(f'The introduction now reads: "{new.description}"'))
    if old.effective_from != new.effective_from:
        changes.append(
            Change(f"The policy now takes effect on {new.effective_from} (was {old.effective_from}).")
        )
    old_owners = {o.name: o for o in old.owners}
    new_owners = {o.name: o for o in new.owners}
    for name in sorted(new_owners.keys() - old_owners.keys()):
        changes.append(Change(f"{name} becomes an owner of the policy."))
    for name in sorted(old_owners.keys() - new_owners.keys()):
        changes.append(Change(f"{name} is no longer an owner of the policy."))
    if old.hosting_location != new.hosting_location:
        where = wording.location(new, new.hosting_location) if new.hosting_location else "no stated location"
        changes.append(
            Change(
                f"The nodes this policy governs now run in {where} "
                f"(was {old.hosting_location or 'not stated'})."
            )
        )
    return changes


def _names(old: Policy, new: Policy) -> list[Change]:
    changes: list[Change] = []
    old_groups = {g.name: g for g in old.groups}
    new_groups = {g.name: g for g in new.groups}
    for name, group in new_groups.items():
        before = old_groups.get(name)
        if before is None:
            changes.append(Change(f"A new group {name} lists {wording.join(list(group.jurisdictions))}."))
            continue
        added = [j for j in group.jurisdictions if j not in before.jurisdictions]
        removed = [j for j in before.jurisdictions if j not in group.jurisdictions]
        if added:
            changes.append(
                Change(f"The group {name} now also includes {wording.join(added)}.", Effect.LOOSENS)
            )
        if removed:
            changes.append(
                Change(f"The group {name} no longer includes {wording.join(removed)}.", Effect.TIGHTENS)
            )
    for name in sorted(old_groups.keys() - new_groups.keys()):
        changes.append(Change(f"The group {name} is removed."))
    old_locations = {loc.name: loc for loc in old.locations}
    for loc in new.locations:
        was = old_locations.get(loc.name)
        if was is None:
            changes.append(
                Change(f"A new hosting location {loc.name} is defined: {loc.place}, in {loc.jurisdiction}.")
            )
        elif (was.place, was.jurisdiction) != (loc.place, loc.jurisdiction):
            changes.append(
                Change(
                    f"The hosting location {loc.name} now means {loc.place}, in {loc.jurisdiction} "
                    f"(was {was.place}, in {was.jurisdiction}).",
                    Effect.LOOSENS,
                )
            )
    for name in sorted(old_locations.keys() - {loc.name for loc in new.locations}):
        changes.append(Change(f"The hosting location {name} is removed."))
    return changes


def _restrictions(old: Policy, new: Policy) -> list[Change]:
    changes: list[Change] = []
    old_classes = {r.data_class for r in old.restricted_data}
    new_classes = {r.data_class for r in new.restricted_data}
    for data_class in sorted(new_classes - old_classes):
        changes.append(
            Change(
                f"{new.jurisdiction} now forbids anything derived from {data_class} data from leaving "
                f"{new.jurisdiction}.",
                Effect.TIGHTENS,
            )
        )
    for data_class in sorted(old_classes - new_classes):
        changes.append(
            Change(
                f"{new.jurisdiction} no longer forbids everything derived from {data_class} data from "
                f"leaving {new.jurisdiction}.",
                Effect.LOOSENS,
            )
        )
    return changes


def _rules(old: Policy, new: Policy) -> list[Change]:
    changes: list[Change] = []
    old_rules = {rule.id: rule for rule in old.rules}
    new_ids = {rule.id for rule in new.rules}
    for rule in new.rules:
        before = old_rules.get(rule.id)
        if before is None:
            sentence = wording.permission(new, rule)
            clauses = wording.conditions(new, rule)
            tail = wording.provided(clauses) if clauses else ", with no conditions"
            changes.append(
                Change(
                    f"{new.jurisdiction} now allows: {sentence}{tail} (new rule {rule.id}).", Effect.LOOSENS
                )
            )
        else:
            changes += _rule_changes(old, new, before, rule)
    for rule in old.rules:
        if rule.id not in new_ids:
            changes.append(
                Change(
                    f"{new.jurisdiction} no longer allows: {wording.permission(old, rule)} "
                    f"(rule {rule.id} is removed).",
                    Effect.TIGHTENS,
                )
            )
    return changes


def _rule_changes(old: Policy, new: Policy, before: Rule, after: Rule) -> list[Change]:
    name = f"Rule {after.id}"
    changes: list[Change] = []
    if before.description != after.description:
        changes.append(Change(f'{name} is now described as "{after.description}".'))
    if before.legal_basis != after.legal_basis:
        changes.append(
            Change(f'{name} now cites "{after.legal_basis}" as its legal basis (was "{before.legal_basis}").')
        )
    added = [a for a in after.artifacts if a not in before.artifacts]
    removed = [a for a in before.artifacts if a not in after.artifacts]
    if added:
        changes.append(Change(f"{name} now also allows {wording.artifacts(tuple(added))}.", Effect.LOOSENS))
    if removed:
        changes.append(
            Change(f"{name} no longer allows {wording.artifacts(tuple(removed))}.", Effect.TIGHTENS)
        )
    for end, b, a in (("from", before.source, after.source), ("to", before.destination, after.destination)):
        change = _scope_change(old, new, name, end, b, a)
        if change:
            changes.append(change)
    changes += _condition_changes(new, name, before.conditions, after.conditions)
    return changes


def _scope_change(
    old: Policy, new: Policy, name: str, end: str, before: EndpointScope, after: EndpointScope
) -> Change | None:
    if (set(before.tiers), before.jurisdictions) == (set(after.tiers), after.jurisdictions):
        return None
    wider = set(after.tiers) >= set(before.tiers) and after.jurisdictions >= before.jurisdictions
    narrower = set(after.tiers) <= set(before.tiers) and after.jurisdictions <= before.jurisdictions
    effect = Effect.LOOSENS if wider else Effect.TIGHTENS if narrower else Effect.NEUTRAL
    direction = "sent from" if end == "from" else "sent to"
    return Change(
        f"{name} now covers what is {direction} {wording.party(new, after)} "
        f"(was {wording.party(old, before)}).",
        effect,
    )


def _condition_changes(new: Policy, name: str, b: Conditions, a: Conditions) -> list[Change]:
    changes: list[Change] = []
    if b.min_cohort_silos != a.min_cohort_silos:
        if a.min_cohort_silos is None:
            changes.append(
                Change(
                    f"{name} no longer requires a minimum number of silos (was {b.min_cohort_silos}).",
                    Effect.LOOSENS,
                )
            )
        elif b.min_cohort_silos is None:
            changes.append(
                Change(
                    f"{name} now requires at least {a.min_cohort_silos} silos to have contributed.",
                    Effect.TIGHTENS,
                )
            )
        else:
            rises = a.min_cohort_silos > b.min_cohort_silos
            changes.append(
                Change(
                    f"{name}: the minimum number of contributing silos {'rises' if rises else 'falls'} from "
                    f"{b.min_cohort_silos} to {a.min_cohort_silos}.",
                    Effect.TIGHTENS if rises else Effect.LOOSENS,
                )
            )
    changes += _privacy_changes(name, b.differential_privacy, a.differential_privacy)
    if b.compression_required != a.compression_required:
        if a.compression_required:
            changes.append(Change(f"{name} now requires compression before sending.", Effect.TIGHTENS))
        else:
            changes.append(Change(f"{name} no longer requires compression before sending.", Effect.LOOSENS))
    more = [x for x in a.layers_stay_local if x not in b.layers_stay_local]
    fewer = [x for x in b.layers_stay_local if x not in a.layers_stay_local]
    if more:
        changes.append(
            Change(
                f"{name}: the model layers {wording.join(more)} must now also stay local.", Effect.TIGHTENS
            )
        )
    if fewer:
        changes.append(
            Change(
                f"{name}: the model layers {wording.join(fewer)} no longer have to stay local.",
                Effect.LOOSENS,
            )
        )
    strip_more = [wording.METADATA_NOUNS[f] for f in a.strip_metadata if f not in b.strip_metadata]
    strip_fewer = [wording.METADATA_NOUNS[f] for f in b.strip_metadata if f not in a.strip_metadata]
    if strip_more:
        changes.append(
            Change(
                f"{name}: {wording.join(strip_more)} must now also be removed before sending.",
                Effect.TIGHTENS,
            )
        )
    if strip_fewer:
        changes.append(
            Change(
                f"{name}: {wording.join(strip_fewer)} no longer have to be removed before sending.",
                Effect.LOOSENS,
            )
        )
    changes += _hosting_changes(new, name, b.hosted_in, a.hosted_in)
    return changes


def _privacy_changes(name: str, b: PrivacyLimit | None, a: PrivacyLimit | None) -> list[Change]:
    if b == a:
        return []
    if a is None:
        return [Change(f"{name} no longer requires differential privacy.", Effect.LOOSENS)]
    if b is None:
        return [Change(f"{name} now requires that {wording.privacy(a)}.", Effect.TIGHTENS)]
    changes: list[Change] = []
    for label, old_value, new_value in (("ε", b.max_epsilon, a.max_epsilon), ("δ", b.max_delta, a.max_delta)):
        if old_value != new_value:
            rises = new_value > old_value
            changes.append(
                Change(
                    f"{name}: the privacy limit {label} {'rises' if rises else 'falls'} "
                    f"from {wording.number(old_value)} to {wording.number(new_value)}.",
                    Effect.LOOSENS if rises else Effect.TIGHTENS,
                )
            )
    if b.period_days != a.period_days:
        longer = a.period_days > b.period_days
        changes.append(
            Change(
                f"{name}: the privacy limits now apply to any {a.period_days} days (was {b.period_days}).",
                Effect.TIGHTENS if longer else Effect.LOOSENS,
            )
        )
    return changes


def _hosting_changes(new: Policy, name: str, b: tuple[str, ...], a: tuple[str, ...]) -> list[Change]:
    if b == a or set(b) == set(a):
        return []
    if not a:
        return [Change(f"{name} no longer restricts where the receiver is hosted.", Effect.LOOSENS)]
    places = [wording.location(new, x) for x in a]
    if not b:
        return [
            Change(
                f"{name} now requires the receiver to be hosted in {wording.join(places, 'or')}.",
                Effect.TIGHTENS,
            )
        ]
    changes: list[Change] = []
    added = [wording.location(new, x) for x in a if x not in b]
    removed = [x for x in b if x not in a]
    if added:
        changes.append(
            Change(
                f"{name} now also allows a receiver hosted in {wording.join(added, 'or')}.", Effect.LOOSENS
            )
        )
    if removed:
        changes.append(
            Change(
                f"{name} no longer allows a receiver hosted in {wording.join(removed, 'or')}.",
                Effect.TIGHTENS,
            )
        )
    return changes


def _retention(old: Policy, new: Policy) -> list[Change]:
    changes: list[Change] = []
    before = {(r.tier, r.artifact): r.days for r in old.retention}
    after = {(r.tier, r.artifact): r.days for r in new.retention}
    for (tier, artifact), days in after.items():
        what = f"{wording.ARTIFACT_NOUNS[artifact]} kept by the {tier.value} tier"
        if (tier, artifact) not in before:
            changes.append(
                Change(f"A retention period is set: {what} for at most {days} days.", Effect.TIGHTENS)
            )
        elif before[(tier, artifact)] != days:
            longer = days > before[(tier, artifact)]
            changes.append(
                Change(
                    f"The retention period of {what} {'grows' if longer else 'shrinks'} "
                    f"from {before[(tier, artifact)]} to {days} days.",
                    Effect.LOOSENS if longer else Effect.TIGHTENS,
                )
            )
    for tier, artifact in [key for key in before if key not in after]:
        changes.append(
            Change(
                f"No retention period is set any more for {wording.ARTIFACT_NOUNS[artifact]} "
                f"kept by the {tier.value} tier.",
                Effect.LOOSENS,
            )
        )
    return changes
