"""The one seam every operation passes: may this caller do VERB on FAMILY in this compartment?

Operations map to verbs as in OCI: list -> inspect; get, head, download -> read; predict -> use
(on model deployments); create, update, delete, activate, deactivate, change compartment ->
manage. A refusal is the same 404 NotAuthorizedOrNotFound, with the same message, that the
operation gives for an id that does not exist (OCI answers not-authorized writes with 404
too), so nobody learns that another tenant's resource or compartment exists.

`Authorizer` is what decides (`auth.access_store.PolicyAuthorizer` in a server); `ALLOW_ALL`
is for code without principals (unit tests, the server's own calls).
"""

from __future__ import annotations

from typing import Protocol

from dockyard.auth.policy import MODEL_DEPLOYMENTS, MODELS, PROJECTS, WORK_REQUESTS, Verb
from dockyard.errors import NotAuthorizedOrNotFound
from dockyard.service.context import Caller

__all__ = ["ALLOW_ALL", "Access", "Authorizer", "Verb", "MODEL_DEPLOYMENTS", "MODELS", "PROJECTS", "WORK_REQUESTS"]

# The family of each resource kind of the metadata store.
FAMILY_OF_KIND = {"project": PROJECTS, "model": MODELS, "modeldeployment": MODEL_DEPLOYMENTS}


class Authorizer(Protocol):
    def allowed(self, caller: Caller, verb: Verb, family: str, compartment_id: str) -> bool: ...

    def registry_hosts_for(self, caller: Caller) -> set[str] | None:
        """Hosts whose configured registry credentials the caller's tenancy may use (C8); None: all."""
        ...


class _AllowAll:
    def allowed(self, caller: Caller, verb: Verb, family: str, compartment_id: str) -> bool:
        return True

    def registry_hosts_for(self, caller: Caller) -> set[str] | None:
        return None


ALLOW_ALL: Authorizer = _AllowAll()


class Access:
    """`require` raises; `allowed` answers. Blocking (the authorizer may read the database)."""

    def __init__(self, authorizer: Authorizer = ALLOW_ALL) -> None:
        self.authorizer = authorizer

    def allowed(self, caller: Caller, verb: Verb, family: str, compartment_id: str) -> bool:
        return self.authorizer.allowed(caller, verb, family, compartment_id)

    def require(self, caller: Caller, verb: Verb, family: str, compartment_id: str, not_found: str) -> None:
        """Raises NotAuthorizedOrNotFound(`not_found`): pass the message the operation gives for
        a missing resource (or compartment), so a refusal reads exactly like it."""
        if not self.authorizer.allowed(caller, verb, family, compartment_id):
            raise NotAuthorizedOrNotFound(not_found)

    def require_compartment(self, caller: Caller, verb: Verb, family: str, compartment_id: str) -> None:
        """For lists and creates: a compartment the caller may not act in reads as an unknown one."""
        self.require(caller, verb, family, compartment_id, compartment_not_found(compartment_id))

    def registry_hosts_for(self, caller: Caller) -> set[str] | None:
        return self.authorizer.registry_hosts_for(caller)


def compartment_not_found(compartment_id: str) -> str:
    return (
        f"compartment {compartment_id} was not found, or you are not allowed to use it; check the id "
        "(your tenancy OCID is your root compartment)"
    )
