"""The JSONPath subset ``DataProcessing`` filters are written in.

At most 63 characters: ``$``, ``.name``, ``*`` (``.*``, ``[*]``),
``['a','b']``, ``[i,j]`` (negative counts from the end) and
``[start:end]`` with either end omitted; indexes and slices may share one
bracket (``$[0,5:]``, as in the service's own examples). Not supported
(refused with a :class:`~serving.errors.ConfigError` naming the field):
``..``, filters ``?()``, scripts, ``@``, slice steps, double quotes.

Results: a path made only of ``.name``, ``['a']`` and single ``[i]`` steps
gives one value; any other gives a list, except ``['a','b']`` as the last
step, which gives an object with those members. An index outside the
array and a missing member (on a one-value path, or in ``['a','b']``) are
errors; slices are clipped to the array. Whether the service's slice end
is inclusive is **unconfirmed**: exclusive by default (like Python and
JavaScript), inclusive with ``inclusive_end=True``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from serving.errors import ConfigError, TransformError

_T = TypeVar("_T")

MAX_EXPRESSION = 63
SUBSET = "$, .name, *, ['a','b'], [i,j] (negative counts from the end), [start:end]"


@dataclass(frozen=True)
class _Slice:
    start: int | None
    end: int | None


@dataclass(frozen=True)
class _Names:
    names: tuple[str, ...]


@dataclass(frozen=True)
class _Wildcard:
    pass


@dataclass(frozen=True)
class _Indexes:
    items: tuple[int | _Slice, ...]


_Step = _Names | _Wildcard | _Indexes
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_INT = re.compile(r"-?\d+")
_QUOTED = re.compile(r"'([^']+)'")


class _PathFailure(Exception):
    """A path does not fit the record it is applied to (wrapped into a TransformError)."""


@dataclass(frozen=True)
class JsonPath:
    """A parsed expression of the subset; see the module docstring.

    Attributes:
        text: the expression as written.
        steps: what follows ``$``.
    """

    text: str
    steps: tuple[_Step, ...]

    @property
    def is_root(self) -> bool:
        """True for ``$``: the record as it is."""
        return not self.steps

    @property
    def index_only(self) -> bool:
        """True when no step names a member (what a CSV record allows)."""
        return not any(isinstance(s, _Names) for s in self.steps)

    def evaluate(self, doc: Any, *, inclusive_end: bool = False) -> Any:
        """Apply the path to ``doc`` (parsed JSON, or a CSV row as a list of strings).

        Raises:
            TransformError: an index outside the record, a missing member, a
                step into something that is not an array or an object.
        """
        try:
            return self._evaluate(doc, inclusive_end)
        except _PathFailure as err:
            raise TransformError(f"{self.text}: {err}", reason="DataProcessing") from None

    def _evaluate(self, doc: Any, inclusive_end: bool) -> Any:
        nodes, definite = [doc], True
        last = len(self.steps) - 1
        for number, step in enumerate(self.steps):
            if isinstance(step, _Names) and len(step.names) > 1 and number == last:
                return _pick(nodes[0], step.names) if definite else [
                    _pick(n, step.names) for n in nodes if isinstance(n, dict)]
            single = (isinstance(step, _Names) and len(step.names) == 1) or (
                isinstance(step, _Indexes) and len(step.items) == 1
                and isinstance(step.items[0], int))
            out: list[Any] = []
            for node in nodes:
                out.extend(_apply(step, node, strict=definite, inclusive_end=inclusive_end))
            nodes, definite = out, definite and single
        return nodes[0] if definite else nodes


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    return "an array" if isinstance(value, list) else "a single value"


def _pick(node: Any, names: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise _PathFailure(f"{_kind(node)} has no members {list(names)}")
    missing = [n for n in names if n not in node]
    if missing:
        raise _PathFailure(f"no member {missing[0]!r} in the record")
    return {n: node[n] for n in names}


def _apply(step: _Step, node: Any, *, strict: bool, inclusive_end: bool) -> list[Any]:
    if isinstance(step, _Wildcard):
        if isinstance(node, dict):
            return list(node.values())
        return list(node) if isinstance(node, list) else []
    if isinstance(step, _Names):
        if not isinstance(node, dict):
            if strict:
                raise _PathFailure(f"{_kind(node)} has no member {step.names[0]!r}")
            return []
        if strict and step.names[0] not in node and len(step.names) == 1:
            raise _PathFailure(f"no member {step.names[0]!r} in the record")
        return [node[n] for n in step.names if n in node]
    if not isinstance(node, list):
        if strict:
            raise _PathFailure(f"{_kind(node)} cannot be indexed")
        return []
    out: list[Any] = []
    size = len(node)
    for item in step.items:
        if isinstance(item, int):
            index = item + size if item < 0 else item
            if not 0 <= index < size:
                raise _PathFailure(f"index {item} is outside the record ({size} items)")
            out.append(node[index])
            continue
        end = item.end
        if end is not None and inclusive_end:
            end = end + size if end < 0 else end
            end += 1
        out.extend(node[item.start:end])
    return out


class _Parser:
    def __init__(self, text: str, field: str) -> None:
        self.text, self.field, self.pos = text, field, 0

    def fail(self, what: str) -> ConfigError:
        return ConfigError(f"{self.field}={self.text!r} is outside the supported JSONPath subset "
                           f"({what} at character {self.pos}); use {SUBSET}", field=self.field,
                           value=self.text)

    def peek(self) -> str:
        return self.text[self.pos:self.pos + 1]

    def spaces(self) -> None:
        while self.peek() == " ":
            self.pos += 1

    def parse(self) -> JsonPath:
        if self.peek() != "$":
            raise self.fail("an expression must start with $")
        self.pos = 1
        steps: list[_Step] = []
        while self.pos < len(self.text):
            char = self.peek()
            if char == ".":
                self.pos += 1
                if self.peek() == ".":
                    raise self.fail("recursive descent '..'")
                if self.peek() == "*":
                    self.pos += 1
                    steps.append(_Wildcard())
                    continue
                match = _NAME.match(self.text, self.pos)
                if not match:
                    raise self.fail("a member name after '.' (use ['name'] for other names)")
                self.pos = match.end()
                steps.append(_Names((match.group(),)))
            elif char == "[":
                self.pos += 1
                steps.append(self.bracket())
            else:
                raise self.fail(f"unexpected {char!r}")
        return JsonPath(self.text, tuple(steps))

    def close(self) -> None:
        self.spaces()
        if self.peek() != "]":
            raise self.fail("a missing ']'" if not self.peek() else f"unexpected {self.peek()!r}")
        self.pos += 1

    def bracket(self) -> _Step:
        self.spaces()
        if self.peek() == "*":
            self.pos += 1
            self.close()
            return _Wildcard()
        if self.peek() == "'":
            return _Names(self.listed(self.quoted))
        return _Indexes(self.listed(self.item))

    def listed(self, one: Callable[[], _T]) -> tuple[_T, ...]:
        """``one()``, again after each ``,``, up to and with the closing ``]``."""
        items = [one()]
        self.spaces()
        while self.peek() == ",":
            self.pos += 1
            self.spaces()
            items.append(one())
            self.spaces()
        self.close()
        return tuple(items)

    def quoted(self) -> str:
        match = _QUOTED.match(self.text, self.pos)
        if not match:
            raise self.fail("a name in single quotes")
        self.pos = match.end()
        return match.group(1)

    def item(self) -> int | _Slice:
        match = _INT.match(self.text, self.pos)
        start = int(match.group()) if match else None
        if match:
            self.pos = match.end()
        self.spaces()
        if self.peek() != ":":
            if start is None:
                raise self.fail(self._what_instead())
            return start
        self.pos += 1
        self.spaces()
        match = _INT.match(self.text, self.pos)
        end = int(match.group()) if match else None
        if match:
            self.pos = match.end()
        self.spaces()
        if self.peek() == ":":
            raise self.fail("a slice step")
        return _Slice(start, end)

    def _what_instead(self) -> str:
        char = self.peek()
        if not char:
            return "a missing ']'"
        if char in "?(@":
            return "filter and script expressions"
        if char == '"':
            return "a name in double quotes (use ['name'])"
        return "an index, a slice or a 'name'"


def parse_path(text: str, field: str = "JSONPath") -> JsonPath:
    """Parse an expression of the subset; ``""`` means ``$``.

    Args:
        text: the expression.
        field: how errors name it (``DataProcessing.InputFilter``).

    Raises:
        ConfigError: longer than 63 characters, or outside the subset; names ``field``.
    """
    if not isinstance(text, str):
        raise ConfigError(f"{field}={text!r} must be a string", field=field, value=text)
    if len(text) > MAX_EXPRESSION:
        raise ConfigError(f"{field}={text!r} has {len(text)} characters; use 0..{MAX_EXPRESSION}",
                          field=field, value=text)
    if text == "":
        return JsonPath("$", ())
    return _Parser(text, field).parse()


