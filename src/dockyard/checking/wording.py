"""Shared wording of the rules: sizes, ports, statuses, HTTP answers, dockyard messages (pure)."""

from __future__ import annotations

from dockyard.checking.measurements import HttpAnswer

GIB = 1024**3
MIB = 1024**2


def split(message: str) -> tuple[str, str]:
    """A dockyard message "problem; fix" as its two halves (rule prefix dropped)."""
    text = message.strip()
    head, colon, rest = text.partition(": ")
    if colon and head.isalnum() and head.isupper() and len(head) <= 6:
        text = rest  # "C11: registry ..." -> "registry ..."
    what, _, fix = text.partition("; ")
    return what, fix


def argv_bytes(argv: list[str]) -> int:
    return sum(len(arg.encode()) for arg in argv)


def describe_size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"


def human_bytes(n: int) -> str:
    for unit, size in (("GB", GIB), ("MB", MIB), ("KB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def port_roles(server_port: int, health_port: int) -> dict[int, str]:
    if server_port == health_port:
        return {server_port: "server and health port"}
    return {server_port: "server port", health_port: "health port"}


def port_flags(role: str, port: object) -> str:
    names = [name for name in ("server", "health") if name in role]
    return " ".join(f"--{name}-port {port}" for name in names)


def describe_ports(roles: dict[int, str]) -> str:
    return ", ".join(f"{port} ({role})" for port, role in roles.items())


def describe_statuses(statuses: dict[int, int]) -> str:
    if len(statuses) == 1:
        return str(next(iter(statuses)))
    return ", ".join(f"{code} x{count}" for code, count in sorted(statuses.items()))


def describe_answer(answer: HttpAnswer) -> str:
    kind = f" {answer.content_type}" if answer.content_type else ""
    body = " ".join(answer.body.split())
    body = body if len(body) <= 100 else body[:97] + "..."
    shown = f"{answer.method} {answer.path} -> {answer.status}{kind} in {answer.seconds:.2f} s"
    return f"{shown}: {body}" if body else shown


def last_lines(text: str, count: int) -> str:
    # Python 3.11+ tracebacks underline the failing expression with ^ and ~: not worth a line.
    lines = [line.strip() for line in text.splitlines() if line.strip().strip("^~ ")]
    return " | ".join(line[:200] for line in lines[-count:])
