"""Registry authentication as the distribution spec and Docker do it.

A registry that wants credentials answers 401 with ``WWW-Authenticate``:

- ``Basic realm="..."``: send the username and password with every request;
- ``Bearer realm="https://auth.example/token",service="...",scope="repository:x:pull"``:
  get a token from ``realm`` (with the credentials, if any, as Basic auth; anonymously
  otherwise) and send ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: host[:port] -> (username, password)
Credentials = Mapping[str, tuple[str, str]]

# auth-param = token "=" ( token / quoted-string ), RFC 7235. Scopes contain commas inside
# quotes ("repository:x:pull,push"), so a plain split on "," would break them.
_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*,?')


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: the scheme in lower case and its parameters."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header values into challenges, in order.

    Tolerant by design: malformed parameters are skipped, never raised, because the
    caller reports a missing usable challenge with the registry's name.
    """
    challenges: list[Challenge] = []
    for value in values:
        text = value.strip()
        while text:
            scheme, _, text = text.partition(" ")
            params: dict[str, str] = {}
            while text and (match := _PARAM.match(text)):
                name, quoted, bare = match.groups()
                params[name.lower()] = (
                    re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
                )
                text = text[match.end() :]
            challenges.append(Challenge(scheme.strip(",").lower(), params))
            text = text.strip()
    return challenges


def basic_authorization(username: str, password: str) -> str:
    """The ``Authorization`` header value for Basic auth."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def token_request_params(challenge: Challenge, repository: str) -> dict[str, str]:
    """Query parameters for a Bearer token endpoint: the challenge's service and scope, with
    pull access to ``repository`` as the scope when the challenge names none."""
    params = {"scope": challenge.params.get("scope") or f"repository:{repository}:pull"}
    if challenge.params.get("service"):
        params["service"] = challenge.params["service"]
    return params


def token_from_response(document: Any) -> str | None:
    """The token of a token endpoint's JSON answer (``token``, or OAuth2's ``access_token``)."""
    if not isinstance(document, dict):
        return None
    for key in ("token", "access_token"):
        value = document.get(key)
        if isinstance(value, str) and value:
            return value
    return None
