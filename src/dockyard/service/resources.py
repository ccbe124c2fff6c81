"""What every catalog service shares: ids, create-once with retry tokens, lists, compartments."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from dockyard.domain import ids
from dockyard.errors import InvalidatedRetryToken, InvalidParameter, NotAuthorizedOrNotFound
from dockyard.service.access import FAMILY_OF_KIND, Access, Verb
from dockyard.service.context import Caller, RetryToken
from dockyard.service.paging import check_limit, check_sort, decode_page, next_page
from dockyard.settings import Settings
from dockyard.store.metadata import Record, RetryTokenTaken, SqlMetadataStore


@dataclass
class ListResult:
    items: list[dict[str, Any]]
    next_page: str | None


def check_compartment(value: str, field: str = "compartmentId") -> None:
    if not ids.is_ocid(value):
        raise InvalidParameter(
            f"{field} {value!r} is not an OCID; pass a compartment or tenancy id like 'ocid1.compartment.oc1..aaaa...'"
        )


def missing_message(label: str, resource_id: str) -> str:
    """What `SqlMetadataStore.require` says for an id it does not hold: a refusal says the same."""
    return f"{label} {resource_id} was not found, or you are not allowed to see it; check the id"


def check_id(value: str, expected_type: str, label: str) -> None:
    """A path id of the wrong shape or type is reported as such, not as a generic 404."""
    actual = ids.ocid_type(value)
    if actual is None:
        raise NotAuthorizedOrNotFound(
            f"{label} id {value!r} is not an OCID (ocid1.{expected_type}.<realm>.<region>.<unique>); check the id"
        )
    if actual != expected_type:
        raise NotAuthorizedOrNotFound(
            f"{value} is the id of a {actual}, not of a {label}; pass an id starting with ocid1.{expected_type}."
        )


class ResourceService:
    """Base of the project, model and deployment services."""

    kind: str = ""
    label: str = ""
    ocid_type: str = ""
    sort_fields: tuple[str, ...] = ("timeCreated", "displayName")

    def __init__(self, store: SqlMetadataStore, settings: Settings, access: Access | None = None) -> None:
        self.store = store
        self.settings = settings
        # Who may do what (service/access.py); without one, everything is allowed (unit tests).
        self.access = access or Access()

    @property
    def family(self) -> str:
        return FAMILY_OF_KIND[self.kind]

    def new_id(self) -> str:
        return ids.new_ocid(self.ocid_type, self.settings.realm, self.settings.region)

    def get_record(self, resource_id: str, tx: Connection | None = None) -> Record:
        """The record, whoever asks: for internal use after `authorized` (or by the reconciler)."""
        check_id(resource_id, self.ocid_type, self.label)
        return self.store.require(resource_id, self.kind, self.label, tx)

    def authorized(self, caller: Caller, resource_id: str, verb: Verb, tx: Connection | None = None) -> Record:
        """The record if `caller` may do `verb` on it; otherwise the very 404 an unknown id gets."""
        record = self.get_record(resource_id, tx)
        self.access.require(caller, verb, self.family, record.body["compartmentId"], missing_message(self.label, resource_id))
        return record

    def readable(self, caller: Caller, record: Record) -> bool:
        """Whether `caller` may read `record` (of any kind): a related resource they may not read
        is, to them, one that does not exist."""
        return self.access.allowed(caller, Verb.READ, FAMILY_OF_KIND[record.kind], record.body["compartmentId"])

    def require_in_compartment(self, caller: Caller, verb: Verb, compartment_id: str, field: str = "compartmentId") -> None:
        """The compartment id is well formed and `caller` may do `verb` on this family in it."""
        check_compartment(compartment_id, field)
        self.access.require_compartment(caller, verb, self.family, compartment_id)

    def create_once(
        self,
        operation: str,
        token: RetryToken | None,
        create: Callable[[Connection], tuple[Record, str | None]],
        caller: Caller,
    ) -> tuple[Record, str | None]:
        """Run `create` in a transaction, at most once per `opc-retry-token`.

        The same token with the same request returns what the first request created; the same
        token with a different request is refused (409), since the client is confused.
        """
        if token is not None:
            earlier = self._replay(operation, token, caller)
            if earlier is not None:
                return earlier
        try:
            with self.store.transaction() as tx:
                record, work_request_id = create(tx)
                if token is not None:
                    self.store.put_retry_token(operation, token.token, token.request_hash, record.id, work_request_id, tx)
        except RetryTokenTaken:
            # An identical request with the same token won the race: answer what it created.
            assert token is not None
            earlier = self._replay(operation, token, caller)
            if earlier is None:
                raise
            return earlier
        return record, work_request_id

    def _replay(self, operation: str, token: RetryToken, caller: Caller) -> tuple[Record, str | None] | None:
        seen = self.store.get_retry_token(operation, token.token)
        if seen is None:
            return None
        earlier = self.store.require(seen.resource_id, self.kind, self.label)
        # Tokens are one namespace: a caller who reuses someone else's token (same request or
        # not) is told it was used, never handed what the other one created.
        if seen.request_hash != token.request_hash or not self.readable(caller, earlier):
            raise InvalidatedRetryToken(
                f"opc-retry-token {token.token!r} was already used for a different request; "
                "use a new token for a new request"
            )
        return earlier, seen.work_request_id

    def list_records(
        self,
        caller: Caller,
        filters: dict[str, Any],
        limit: int | None,
        page: str | None,
        sort_by: str | None,
        sort_order: str | None,
        view: Callable[[Record], dict[str, Any]],
    ) -> ListResult:
        self.require_in_compartment(caller, Verb.INSPECT, filters["compartmentId"])
        limit = check_limit(limit)
        offset = decode_page(page)
        sort_field, descending = check_sort(sort_by, sort_order, self.sort_fields, "timeCreated")
        result = self.store.list(self.kind, filters, sort_field, descending, offset, limit)
        return ListResult([view(r) for r in result.items], next_page(offset, len(result.items), result.has_more))
