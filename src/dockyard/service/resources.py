"""What every catalog service shares: ids, create-once with retry tokens, lists, compartments."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from dockyard.domain import ids
from dockyard.errors import InvalidatedRetryToken, InvalidParameter, NotAuthorizedOrNotFound
from dockyard.service.context import RetryToken
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

    def __init__(self, store: SqlMetadataStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def new_id(self) -> str:
        return ids.new_ocid(self.ocid_type, self.settings.realm, self.settings.region)

    def get_record(self, resource_id: str, tx: Connection | None = None) -> Record:
        check_id(resource_id, self.ocid_type, self.label)
        return self.store.require(resource_id, self.kind, self.label, tx)

    def create_once(
        self,
        operation: str,
        token: RetryToken | None,
        create: Callable[[Connection], tuple[Record, str | None]],
    ) -> tuple[Record, str | None]:
        """Run `create` in a transaction, at most once per `opc-retry-token`.

        The same token with the same request returns what the first request created; the same
        token with a different request is refused (409), since the client is confused.
        """
        if token is not None:
            earlier = self._replay(operation, token)
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
            earlier = self._replay(operation, token)
            if earlier is None:
                raise
            return earlier
        return record, work_request_id

    def _replay(self, operation: str, token: RetryToken) -> tuple[Record, str | None] | None:
        seen = self.store.get_retry_token(operation, token.token)
        if seen is None:
            return None
        if seen.request_hash != token.request_hash:
            raise InvalidatedRetryToken(
                f"opc-retry-token {token.token!r} was already used for a different request; "
                "use a new token for a new request"
            )
        return self.store.require(seen.resource_id, self.kind, self.label), seen.work_request_id

    def list_records(
        self,
        filters: dict[str, Any],
        limit: int | None,
        page: str | None,
        sort_by: str | None,
        sort_order: str | None,
        view: Callable[[Record], dict[str, Any]],
    ) -> ListResult:
        check_compartment(filters["compartmentId"])
        limit = check_limit(limit)
        offset = decode_page(page)
        sort_field, descending = check_sort(sort_by, sort_order, self.sort_fields, "timeCreated")
        result = self.store.list(self.kind, filters, sort_field, descending, offset, limit)
        return ListResult([view(r) for r in result.items], next_page(offset, len(result.items), result.has_more))
