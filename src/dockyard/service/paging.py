"""List parameters common to every List operation: limit, page tokens, sort order."""

from __future__ import annotations

import base64
import binascii

from dockyard.errors import InvalidParameter

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


def check_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidParameter(f"limit {limit} is outside 1-{MAX_LIMIT}; ask for fewer items per page")
    return limit


def encode_page(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def decode_page(page: str | None) -> int:
    """The offset behind an opaque page token from `opc-next-page`."""
    if not page:
        return 0
    try:
        text = base64.urlsafe_b64decode(page + "=" * (-len(page) % 4)).decode()
        kind, _, number = text.partition(":")
        offset = int(number)
        if kind != "o" or offset < 0:
            raise ValueError(text)
        return offset
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidParameter(
            f"page {page!r} is not a page token from this server; pass the opc-next-page header of the previous page"
        ) from exc


def next_page(offset: int, count: int, has_more: bool) -> str | None:
    """The token of the following page, or None on the last page (never an empty string)."""
    return encode_page(offset + count) if has_more else None


def check_sort(sort_by: str | None, sort_order: str | None, allowed: tuple[str, ...], default: str) -> tuple[str, bool]:
    sort_by = sort_by or default
    if sort_by not in allowed:
        raise InvalidParameter(f"sortBy {sort_by!r} is not one of {list(allowed)}")
    order = (sort_order or "DESC").upper()
    if order not in ("ASC", "DESC"):
        raise InvalidParameter(f"sortOrder {sort_order!r} is not ASC or DESC")
    return sort_by, order == "DESC"


def check_choice(name: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    if value is not None and value not in allowed:
        raise InvalidParameter(f"{name} {value!r} is not one of {list(allowed)}")
    return value
