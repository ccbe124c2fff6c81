"""Access policy: OCI-like statements and the decision they make (pure: no I/O).

A statement reads ``allow group <G>[, <G2>...] to <verb> <family> in <where>`` where

- verb is one of ``inspect < read < use < manage`` (each includes the ones before it);
- family is a resource family: ``data-science-projects``, ``data-science-models``,
  ``data-science-model-deployments``, ``data-science-work-requests``, or an aggregate that
  covers them: ``data-science-family`` (the four) and ``all-resources`` (everything);
- where is ``tenancy`` (every compartment of the tenancy), ``compartment <name>`` or
  ``compartment id <ocid>``.

Keywords are case-insensitive, as are group and compartment names (as in OCI). Conditions
(``where ...``) and other subjects (``any-user``, ``dynamic-group``) are not supported and are
refused with a message saying so, rather than silently read as something broader.

Every tenancy has the group ``Administrators`` with the built-in statement
``allow group Administrators to manage all-resources in tenancy``; it cannot be removed.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from dockyard.errors import InvalidParameter

ADMINISTRATORS = "Administrators"


class Verb(enum.IntEnum):
    """Ordered: a statement granting a verb grants every verb below it."""

    INSPECT = 1  # list
    READ = 2  # get, head, download
    USE = 3  # predict
    MANAGE = 4  # create, update, delete, activate, deactivate, change compartment

    @property
    def word(self) -> str:
        return self.name.lower()


PROJECTS = "data-science-projects"
MODELS = "data-science-models"
MODEL_DEPLOYMENTS = "data-science-model-deployments"
WORK_REQUESTS = "data-science-work-requests"
DATA_SCIENCE_FAMILY = "data-science-family"
ALL_RESOURCES = "all-resources"

RESOURCE_FAMILIES = (PROJECTS, MODELS, MODEL_DEPLOYMENTS, WORK_REQUESTS)
# What each family name in a statement covers.
FAMILY_COVERS: dict[str, frozenset[str]] = {name: frozenset({name}) for name in RESOURCE_FAMILIES} | {
    DATA_SCIENCE_FAMILY: frozenset(RESOURCE_FAMILIES),
    ALL_RESOURCES: frozenset(RESOURCE_FAMILIES),
}

_GRAMMAR = "allow group <group>[, <group>...] to <inspect|read|use|manage> <resource family> in <tenancy | compartment <name> | compartment id <ocid>>"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class Statement:
    """A parsed statement. `compartment` is None for ``in tenancy``; otherwise a name, or an OCID
    when `compartment_is_id` (names are resolved to ids when the statement is stored)."""

    groups: tuple[str, ...]
    verb: Verb
    family: str
    compartment: str | None = None
    compartment_is_id: bool = False

    def text(self, compartment_label: str | None = None) -> str:
        """The canonical statement; `compartment_label` replaces the compartment part (a name)."""
        if self.compartment is None:
            where = "tenancy"
        elif compartment_label is not None:
            where = f"compartment {compartment_label}"
        else:
            where = f"compartment id {self.compartment}" if self.compartment_is_id else f"compartment {self.compartment}"
        return f"allow group {', '.join(self.groups)} to {self.verb.word} {self.family} in {where}"


@dataclass(frozen=True)
class Grant:
    """A stored statement as decisions use it: one group, the compartment resolved to an id
    (None: the whole tenancy)."""

    group: str
    verb: Verb
    family: str
    compartment_id: str | None


ADMINISTRATORS_GRANT = Grant(ADMINISTRATORS, Verb.MANAGE, ALL_RESOURCES, None)


def _refuse(statement: str, problem: str) -> InvalidParameter:
    return InvalidParameter(f"policy statement {statement!r}: {problem}. The form is: {_GRAMMAR}")


def parse_statement(statement: str) -> Statement:
    """Parses one statement; raises InvalidParameter naming the statement, what is wrong and the form."""
    text = " ".join(statement.split())
    if not text:
        raise _refuse(statement, "it is empty")
    words = text.replace(",", " , ").split()
    lower = [w.lower() for w in words]
    if lower[0] != "allow":
        raise _refuse(statement, f"it must start with 'allow', not {words[0]!r} (only allow statements exist)")
    if len(lower) < 2 or lower[1] != "group":
        subject = words[1] if len(words) > 1 else "nothing"
        raise _refuse(statement, f"the subject must be 'group <name>', not {subject!r} (any-user and dynamic groups are not supported)")
    try:
        to = lower.index("to", 2)
    except ValueError:
        raise _refuse(statement, "'to' is missing after the group name(s)") from None
    groups = _groups(statement, words[2:to])
    rest, rest_lower = words[to + 1 :], lower[to + 1 :]
    if len(rest) < 2:
        raise _refuse(statement, "a verb and a resource family must follow 'to'")
    verb = _verb(statement, rest_lower[0])
    family = rest_lower[1]
    if family not in FAMILY_COVERS:
        raise _refuse(statement, f"{rest[1]!r} is not a resource family; use one of {', '.join(FAMILY_COVERS)}")
    where, where_lower = rest[2:], rest_lower[2:]
    if not where or where_lower[0] != "in":
        raise _refuse(statement, "'in tenancy' or 'in compartment <name>' must follow the resource family")
    if "where" in where_lower:
        raise _refuse(statement, "conditions ('where ...') are not supported; grant on a compartment of its own instead")
    location = where[1:]
    location_lower = where_lower[1:]
    if location_lower == ["tenancy"]:
        return Statement(groups, verb, family)
    if len(location) == 2 and location_lower[0] == "compartment":
        return Statement(groups, verb, family, _compartment_name(statement, location[1]))
    if len(location) == 3 and location_lower[:2] == ["compartment", "id"]:
        if not location[2].startswith("ocid1."):
            raise _refuse(statement, f"{location[2]!r} after 'compartment id' is not an OCID")
        return Statement(groups, verb, family, location[2], compartment_is_id=True)
    raise _refuse(statement, f"{' '.join(where)!r} is not a place; say 'in tenancy', 'in compartment <name>' or 'in compartment id <ocid>'")


def _groups(statement: str, words: list[str]) -> tuple[str, ...]:
    names = [w for w in words if w != ","]
    if not names:
        raise _refuse(statement, "a group name must follow 'group'")
    if any(a == "," and b == "," for a, b in zip(words, words[1:])) or words[0] == "," or words[-1] == ",":
        raise _refuse(statement, "group names are separated by single commas")
    if len(names) != len([w for w in words if w == ","]) + 1:
        raise _refuse(statement, f"several group names must be separated by commas ({' '.join(words)!r})")
    for name in names:
        if not _NAME.match(name):
            raise _refuse(statement, f"{name!r} is not a group name (letters, digits, '.', '_', '-'; 1 to 100)")
    return tuple(names)


def _verb(statement: str, word: str) -> Verb:
    try:
        return Verb[word.upper()]
    except KeyError:
        raise _refuse(statement, f"{word!r} is not a verb; use inspect, read, use or manage") from None


def _compartment_name(statement: str, name: str) -> str:
    if name.startswith("ocid1."):
        raise _refuse(statement, f"to name a compartment by its OCID write 'compartment id {name}'")
    if not _NAME.match(name):
        raise _refuse(statement, f"{name!r} is not a compartment name (letters, digits, '.', '_', '-'; 1 to 100)")
    return name


def check_name(what: str, name: str) -> str:
    """A group or compartment name as statements can refer to it; raises InvalidParameter."""
    if not _NAME.match(name):
        raise InvalidParameter(
            f"{what} name {name[:120]!r} must be 1 to 100 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit (statements refer to it by name); choose another"
        )
    return name


def allows(grants: Iterable[Grant], groups: Iterable[str], verb: Verb, family: str, compartment_id: str) -> bool:
    """Whether any grant to one of `groups` gives `verb` (or more) on `family` in `compartment_id`.

    The caller has already established that `compartment_id` belongs to the tenancy the grants
    come from; a grant ``in tenancy`` (compartment_id None) covers all of its compartments.
    """
    member_of = {g.lower() for g in groups}
    for grant in grants:
        if grant.group.lower() not in member_of or grant.verb < verb:
            continue
        if family not in FAMILY_COVERS[grant.family]:
            continue
        if grant.compartment_id is None or grant.compartment_id == compartment_id:
            return True
    return False
