"""Small checks for request fields; each error names the field, the value and what is allowed."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from serving.errors import ConfigError

NAME_PATTERN = r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}"
_NAME = re.compile(NAME_PATTERN)


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def need_mapping(value: Any, name: str) -> Mapping[str, Any]:
    """``value`` itself, when it is a mapping."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name} must be an object (a dict), got {type(value).__name__}",
                          field=name)
    return value


def get_mapping(parent: Mapping[str, Any] | None, key: str, name: str, *,
                required: bool = False) -> Mapping[str, Any] | None:
    """``parent[key]`` as a mapping; None when absent and not required."""
    value = None if parent is None else parent.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{name} is required", field=name)
        return None
    return need_mapping(value, name)


def get_str(parent: Mapping[str, Any] | None, key: str, name: str, *,
            required: bool = False) -> str | None:
    """``parent[key]`` as a string; None when absent and not required."""
    value = None if parent is None else parent.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{name} is required", field=name)
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{name}={_show(value)} must be a string", field=name, value=value)
    return value


def get_int(parent: Mapping[str, Any] | None, key: str, name: str, *,
            required: bool = False) -> int | None:
    """``parent[key]`` as an int (not a bool, not a float); None when absent."""
    value = None if parent is None else parent.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{name} is required", field=name)
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}={_show(value)} must be a whole number", field=name,
                          value=value)
    return value


def req_mapping(parent: Mapping[str, Any], key: str, name: str) -> Mapping[str, Any]:
    """``parent[key]``, an object that must be there."""
    value = get_mapping(parent, key, name, required=True)
    assert value is not None
    return value


def req_str(parent: Mapping[str, Any], key: str, name: str) -> str:
    """``parent[key]``, a string that must be there."""
    value = get_str(parent, key, name, required=True)
    assert value is not None
    return value


def req_int(parent: Mapping[str, Any], key: str, name: str) -> int:
    """``parent[key]``, a whole number that must be there."""
    value = get_int(parent, key, name, required=True)
    assert value is not None
    return value


def check_name(value: str, name: str) -> None:
    """A SageMaker resource name: 1-63 characters, letters, digits and inner hyphens."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ConfigError(f"{name}={_show(value)} is not a valid name; use 1-63 letters, "
                          "digits and hyphens, starting and ending with a letter or digit "
                          f"(pattern {NAME_PATTERN})", field=name, value=value)


def check_choice(value: Any, name: str, allowed: Sequence[str], *, hint: str = "") -> None:
    """``value`` is one of ``allowed``."""
    if value not in allowed:
        extra = f" ({hint})" if hint else ""
        raise ConfigError(f"{name}={_show(value)} is not allowed; use one of "
                          f"{', '.join(allowed)}{extra}", field=name, value=value)


def check_range(value: int | None, name: str, low: int, high: int | None, *,
                hint: str = "") -> None:
    """``low <= value <= high`` (no upper bound when ``high`` is None); None passes."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}={_show(value)} must be a whole number", field=name,
                          value=value)
    if value < low or (high is not None and value > high):
        span = f"{low}..{high}" if high is not None else f">= {low}"
        extra = f"; {hint}" if hint else ""
        raise ConfigError(f"{name}={value} is out of range; use {span}{extra}", field=name,
                          value=value)


def check_len(value: str, name: str, high: int, *, low: int = 1) -> None:
    """``low <= len(value) <= high``."""
    if not isinstance(value, str):
        raise ConfigError(f"{name}={_show(value)} must be a string", field=name, value=value)
    if not low <= len(value) <= high:
        raise ConfigError(f"{name}={_show(value)} has {len(value)} characters; use "
                          f"{low}..{high}", field=name, value=value)
