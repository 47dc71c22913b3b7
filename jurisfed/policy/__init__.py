"""Residency policy: load, validate, decide, explain, diff, sign.

A tier loads its policy once at start-up with `load_policy(path, trusted_keys)`, which refuses
anything not approved by a trusted key, and asks `decide(policy, flow)` about every flow, in and
out. The engine is pure and imports neither TensorFlow nor anything slow.
"""

from jurisfed.policy.engine import Requirements, concerns, decide, requirements
from jurisfed.policy.errors import PolicyError, PolicyInvalid, PolicySignatureError
from jurisfed.policy.loader import load_policy, read_policy
from jurisfed.policy.model import (
    DEFAULT_DENY,
    RAW_DATA_NEVER_MOVES,
    Artifact,
    Decision,
    Endpoint,
    Flow,
    MetadataField,
    Policy,
    PrivacySpend,
    Rule,
)
from jurisfed.policy.signing import TrustedKeys, load_trusted_keys

__all__ = [
    "DEFAULT_DENY",
    "RAW_DATA_NEVER_MOVES",
    "Artifact",
    "Decision",
    "Endpoint",
    "Flow",
    "MetadataField",
    "Policy",
    "PolicyError",
    "PolicyInvalid",
    "PolicySignatureError",
    "PrivacySpend",
    "Requirements",
    "Rule",
    "TrustedKeys",
    "concerns",
    "decide",
    "load_policy",
    "load_trusted_keys",
    "read_policy",
    "requirements",
]
