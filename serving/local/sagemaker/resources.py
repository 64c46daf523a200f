"""What every resource of the embedded SageMaker API shares: ARNs, times, list pages."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from serving.local.sagemaker.apierrors import ValidationException

#: The account the embedded stack's resources belong to (moto's default account).
DEFAULT_ACCOUNT = "123456789012"
DEFAULT_MAX_RESULTS = 10

T = TypeVar("T")


def arn(region: str, account: str, kind: str, name: str) -> str:
    """``arn:aws:sagemaker:<region>:<account>:<kind>/<name>``; names are lower case in ARNs."""
    return f"arn:aws:sagemaker:{region}:{account}:{kind}/{name.lower()}"


def epoch(value: Any) -> float | None:
    """A request's timestamp (epoch seconds or ISO 8601) as epoch seconds."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValidationException(f"{value!r} is not a timestamp; use epoch seconds or "
                                  "ISO 8601") from None


def in_window(when: float, after: Any, before: Any) -> bool:
    """True when ``when`` is after ``after`` and before ``before`` (either may be None)."""
    low, high = epoch(after), epoch(before)
    return (low is None or when > low) and (high is None or when < high)


def sort_items(items: list[T], request: Mapping[str, Any],
               keys: Mapping[str, Callable[[T], Any]], default: str) -> list[T]:
    """``items`` ordered by the request's ``SortBy`` / ``SortOrder`` (default: descending)."""
    by = request.get("SortBy") or default
    order = request.get("SortOrder") or "Descending"
    return sorted(items, key=keys[by], reverse=order == "Descending")


def page(items: Sequence[T], request: Mapping[str, Any]) -> tuple[list[T], str | None]:
    """One page of ``items`` for the request's ``NextToken`` and ``MaxResults``.

    Returns:
        the page, and the token of the next one (None on the last page).

    Raises:
        ValidationException: the token is not one this API handed out.
    """
    size = request.get("MaxResults") or DEFAULT_MAX_RESULTS
    start = _offset(request.get("NextToken"))
    chunk = list(items[start:start + size])
    more = start + size < len(items)
    return chunk, (_token(start + size) if more else None)


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _offset(token: str | None) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        kind, _, number = text.partition(":")
        if kind == "offset" and number.isdigit():
            return int(number)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise ValidationException(f"Invalid pagination token {token!r}; pass the NextToken of the "
                              "previous answer, or none for the first page")
