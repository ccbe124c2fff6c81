"""/20190101/modelDeployments/{id}/logs: a deployment's access and predict logs (a dockyard
extension; OCI sends them to its Logging service instead).

GET answers a JSON array of entries, oldest first, and always an `opc-next-page` cursor: asking
again with `page=<cursor>` returns only what was stored since, which is how `dockyard logs
--follow` follows.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from dockyard.api.common import json_reply
from dockyard.api.requests import caller, services
from dockyard.errors import InvalidParameter
from dockyard.store.log_times import parse_log_time
from dockyard.store.logs import CATEGORIES, DEFAULT_PAGE, MAX_PAGE

router = APIRouter()

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str, now: datetime | None = None) -> tuple[int | None, datetime | None]:
    """`since` as (after this seq, from this time): a seq number, an RFC 3339 time, or a
    duration back from now (30s, 10m, 2h, 1d). InvalidParameter names the accepted forms."""
    text = value.strip()
    if _whole_number(text):
        return int(text), None
    try:
        match = _DURATION.match(text)
        if match:
            seconds = float(match.group(1)) * _UNITS[match.group(2)]
            return None, (now or datetime.now(timezone.utc)) - timedelta(seconds=seconds)
        return None, parse_log_time(text)
    except (ValueError, OverflowError):  # not a time, or one before year 1
        raise InvalidParameter(
            f"since={value!r} is not a log cursor, a time or a duration; use a seq number from opc-next-page, "
            "an RFC 3339 time (2026-01-31T12:00:00Z) or a duration back from now (30s, 10m, 2h, 1d)"
        ) from None


def _whole_number(text: str) -> bool:
    """0-9 only: str.isdigit() also accepts digits int() refuses (superscripts)."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def _bounded(name: str, value: str | None, default: int | None, low: int, high: int) -> int | None:
    if value is None:
        return default
    if not _whole_number(value.strip()) or not low <= int(value) <= high:
        raise InvalidParameter(f"{name}={value!r} is not a whole number from {low} to {high}; pass one in that range")
    return int(value)


@router.get("/modelDeployments/{deployment_id}/logs")
async def list_deployment_logs(
    request: Request,
    deployment_id: str,
    category: str | None = Query(None),
    since: str | None = Query(None),
    page: str | None = Query(None),
    limit: str | None = Query(None),
    tail: str | None = Query(None),
) -> Response:
    bundle = services(request)
    # 404 for an unknown deployment (or one the caller may not read)
    await run_in_threadpool(bundle.deployments.get, deployment_id, caller(request))
    if category is not None and category not in CATEGORIES:
        raise InvalidParameter(f"category={category!r} is not a log category; use one of {', '.join(CATEGORIES)} "
                               "(or leave it out for both)")
    after_seq, since_time = parse_since(since) if since else (None, None)
    if page is not None:
        if not _whole_number(page.strip()):
            raise InvalidParameter(f"page={page!r} is not a log cursor; pass the opc-next-page value of the previous answer")
        after_seq = max(after_seq or 0, int(page))
    size = _bounded("limit", limit, DEFAULT_PAGE, 1, MAX_PAGE)
    last = _bounded("tail", tail, None, 0, MAX_PAGE)
    result = await run_in_threadpool(bundle.logs.read, deployment_id, category, after_seq=after_seq, since=since_time,
                                     tail=last, limit=size or DEFAULT_PAGE)
    return json_reply([entry.wire() for entry in result.entries], opc_next_page=str(result.cursor))
