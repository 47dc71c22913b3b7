"""What goes wrong with a policy file. Every one of these stops a tier at start-up."""

from __future__ import annotations

from jurisfed.errors import ConfigError


class PolicyError(ConfigError):
    """A residency policy cannot be used: unreadable, invalid, unsigned, tampered or untrusted."""


class PolicyInvalid(PolicyError):
    """The file is not a valid policy; `problems` lists every mistake found, each naming its place."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"policy {source} is invalid ({len(problems)} problem(s)):\n{listing}")


class PolicySignatureError(PolicyError):
    """The policy is not approved by a trusted key: unsigned, tampered, or signed by a stranger."""
