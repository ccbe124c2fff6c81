"""The one error tree of dockyard.

Every error carries the OCI error code and HTTP status it is answered with, so a single table
(`api/errors.py`) turns any of them into an OCI error body ``{"code", "message"}``. Messages say
what was wrong and what to do about it; third-party failures are translated at the adapter that
met them (``raise InvalidParameter(...) from exc``).

Note on 409s: the OCI SDK retries ``IncorrectState`` for up to ten minutes, so a state error that
will never clear by waiting is a ``Conflict``.
"""

from __future__ import annotations


class DockyardError(Exception):
    """Root of every error dockyard raises on purpose."""

    code = "InternalServerError"
    status = 500

    def __init__(self, message: str, *, rule: str | None = None) -> None:
        if rule and not message.startswith(rule):
            message = f"{rule}: {message}"
        super().__init__(message)
        self.message = message
        self.rule = rule


class InvalidParameter(DockyardError):
    code, status = "InvalidParameter", 400


class MissingParameter(DockyardError):
    code, status = "MissingParameter", 400


class CannotParseRequest(DockyardError):
    code, status = "CannotParseRequest", 400


class RelatedResourceNotFound(DockyardError):
    code, status = "RelatedResourceNotAuthorizedOrNotFound", 400


class NotAuthenticated(DockyardError):
    code, status = "NotAuthenticated", 401


class NotAuthorizedOrNotFound(DockyardError):
    code, status = "NotAuthorizedOrNotFound", 404


class NotFound(DockyardError):
    """No such route (as opposed to no such resource)."""

    code, status = "NotFound", 404


class MethodNotAllowed(DockyardError):
    code, status = "MethodNotAllowed", 405


class Conflict(DockyardError):
    """A permanent conflict: retrying the same request will not help."""

    code, status = "Conflict", 409


class IncorrectState(DockyardError):
    """A transient state conflict: the SDK retries it, so use only when waiting helps."""

    code, status = "IncorrectState", 409


class InvalidatedRetryToken(DockyardError):
    code, status = "InvalidatedRetryToken", 409


class RequestTimeout(DockyardError):
    """The caller did not send its request in time; the connection closes after the reply."""

    code, status = "RequestTimeout", 408
    received = 0  # bytes of the body that did come, for the access log


class LengthRequired(DockyardError):
    code, status = "LengthRequired", 411


class NoEtagMatch(DockyardError):
    code, status = "NoEtagMatch", 412


class PayloadTooLarge(DockyardError):
    code, status = "PayloadTooLarge", 413


class TooManyRequests(DockyardError):
    code, status = "TooManyRequests", 429


class InternalServerError(DockyardError):
    code, status = "InternalServerError", 500


class BadGateway(DockyardError):
    code, status = "BadGateway", 502


class ServiceUnavailable(DockyardError):
    code, status = "ServiceUnavailable", 503


class GatewayTimeout(DockyardError):
    code, status = "GatewayTimeout", 504
