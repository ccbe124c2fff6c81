"""A check's report as text (one line per rule) and as JSON (the same content, for CI)."""

from __future__ import annotations

import json

from dockyard.checking.findings import Finding, Report, Verdict

_WIDTH_RULE = 5
_WIDTH_CHECK = 36


def heading(report: Report) -> list[str]:
    ran = f"ran {report.ran}" if report.ran != report.image else "ran the local image"
    ports = (f"port {report.server_port}" if report.server_port == report.health_port
             else f"server port {report.server_port}, health port {report.health_port}")
    return [f"dockyard check {report.image}",
            f"  {ran}; artifact: {report.artifact}; {ports}; MODEL_DEPLOYMENT_OCID={report.deployment_id}"]


def line(finding: Finding) -> str:
    """``VERDICT RULE  check  measured  [fix: ...]`` on one line."""
    text = (f"{finding.verdict.value:<4}  {finding.rule:<{_WIDTH_RULE}} {finding.check:<{_WIDTH_CHECK}} "
            f"{finding.measured}")
    if finding.cause:
        text += f" (because of {finding.cause})"
    if finding.fix and finding.verdict in (Verdict.FAIL, Verdict.WARN) and finding.root:
        text += f"  -> fix: {finding.fix}"
    return text


def summary(report: Report) -> str:
    counts = report.counts()
    flagged = ", ".join(f.rule for f in report.flagged())
    verdict = "PASS" if report.passed else "FAIL"
    words = ", ".join(f"{counts[v.value]} {v.value}" for v in Verdict)
    return f"{verdict}: {words} in {report.seconds:.1f} s" + (f"; to fix: {flagged}" if flagged else "")


def as_text(report: Report) -> str:
    return "\n".join([*heading(report), *(line(f) for f in report.findings), summary(report)]) + "\n"


def as_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2) + "\n"
