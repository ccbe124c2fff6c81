"""The report model of a check: one `Finding` per rule, and the `Report` that holds them (pure)."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any


class Verdict(str, enum.Enum):
    PASS = "PASS"
    WARN = "WARN"  # a deployment works, but something will hurt (slow, lossy, unclean)
    FAIL = "FAIL"  # a deployment would be refused or would fail
    SKIP = "SKIP"  # not measurable, usually because of another line's failure (`cause`)


@dataclass(frozen=True)
class Finding:
    """One rule's line: what was measured, the verdict, and what to do about it.

    ``cause`` names the rule whose failure this line follows from (a SKIP that could not be
    measured, or a FAIL that is only a consequence); root findings have none.
    """

    rule: str
    check: str
    verdict: Verdict
    measured: str
    fix: str = ""
    cause: str | None = None

    @property
    def root(self) -> bool:
        return self.cause is None


@dataclass(frozen=True)
class Report:
    image: str  # as the user named it
    ran: str  # what the container was created from (the pinned digest when there is one)
    deployment_id: str  # the MODEL_DEPLOYMENT_OCID the container got
    artifact: str
    server_port: int
    health_port: int
    seconds: float
    findings: tuple[Finding, ...]

    @property
    def passed(self) -> bool:
        """Nothing FAILs (WARN and SKIP do not fail a check)."""
        return not any(f.verdict is Verdict.FAIL for f in self.findings)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def flagged(self) -> list[Finding]:
        """The root problems: FAIL and WARN lines that do not merely follow from another."""
        return [f for f in self.findings if f.verdict in (Verdict.FAIL, Verdict.WARN) and f.root]

    def finding(self, rule: str) -> Finding:
        for item in self.findings:
            if item.rule == rule:
                return item
        raise KeyError(rule)

    def counts(self) -> dict[str, int]:
        return {v.value: sum(1 for f in self.findings if f.verdict is v) for v in Verdict}

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "ran": self.ran,
            "deploymentId": self.deployment_id,
            "artifact": self.artifact,
            "serverPort": self.server_port,
            "healthCheckPort": self.health_port,
            "seconds": round(self.seconds, 2),
            "passed": self.passed,
            "counts": self.counts(),
            "flagged": [f.rule for f in self.flagged()],
            "findings": [asdict(f) | {"verdict": f.verdict.value} for f in self.findings],
        }
