"""Who is calling, and the request-wide facts services need (ids, time, settings)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Caller:
    """The principal behind a request. `user_id` becomes `createdBy` on what they create."""

    user_id: str
    tenancy_id: str | None = None
    # The key a request was signed with: a Principal's (auth/identity.py) is a field; any other
    # caller signed with none. A class attribute, not a field, so callers still compare by identity
    # alone; and it is there to read, where asking for a missing one costs an exception.
    fingerprint = ""


ANONYMOUS = Caller(user_id="ocid1.user.oc1..anonymous")


@dataclass(frozen=True)
class RetryToken:
    """An `opc-retry-token` with the fingerprint of the request that carried it."""

    token: str
    request_hash: str

    @staticmethod
    def of(token: str | None, operation: str, body: Any) -> RetryToken | None:
        if not token:
            return None
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
        return RetryToken(token, hashlib.sha256(f"{operation}\n{canonical}".encode()).hexdigest())
