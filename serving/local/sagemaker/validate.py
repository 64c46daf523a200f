"""Validate a request against botocore's SageMaker service model, as the service does.

:class:`RequestValidator` walks an operation's input shape and checks what
the model declares: required members, types, string and collection lengths
(``min``/``max``), numeric ranges, enums and patterns (matched against the
whole value). It answers the way the service does:

- a member of the wrong type: ``SerializationException``;
- broken constraints: one ``ValidationException`` listing them all, worded
  like AWS, e.g. ``1 validation error detected: Value 'a_b' at
  'transformJobName' failed to satisfy constraint: Member must satisfy
  regular expression pattern: [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}``.

Members the model does not know are dropped, as the service ignores them.
Paths are the service's: lower camel case, list items numbered from 1
(``tags.1.member.key``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from serving.local.sagemaker.apierrors import SerializationException, ValidationException

#: Java character classes the model's patterns use, in Python ``re`` terms
#: (``\w`` covers letters and digits; the patterns that use them allow ``_`` too).
_JAVA_CLASSES = {
    r"\p{L}": r"\w",
    r"\p{N}": r"\w",
    r"\p{Z}": " \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000",
}
_SHOWN_CHARS = 256


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def _show(value: Any) -> str:
    """A value as the service's messages print it (Java's ``toString``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, Mapping):
        text = "{" + ", ".join(f"{k}={_plain(v)}" for k, v in value.items()) + "}"
    elif isinstance(value, list):
        text = "[" + ", ".join(_plain(v) for v in value) + "]"
    else:
        text = str(value)
    if len(text) > _SHOWN_CHARS:
        text = text[: _SHOWN_CHARS - 3] + "..."
    return f"'{text}'"


def _plain(value: Any) -> str:
    return _show(value)[1:-1] if value is not None else "null"


class RequestValidator:
    """Checks requests against one service model.

    Args:
        service_model: a botocore ``ServiceModel`` (default: SageMaker's, from
            the installed botocore).
    """

    def __init__(self, service_model: Any | None = None) -> None:
        if service_model is None:
            import botocore.session

            service_model = botocore.session.get_session().get_service_model("sagemaker")
        self._model = service_model
        self._patterns: dict[str, re.Pattern[str] | None] = {}

    def check(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``params`` for ``operation``.

        Returns:
            ``params`` without the members the model does not know.

        Raises:
            SerializationException: ``params`` or a member has the wrong type.
            ValidationException: constraints are broken; the message lists each.
        """
        shape = self._model.operation_model(operation).input_shape
        if shape is None:
            return {}
        errors: list[str] = []
        cleaned = self._value(shape, params, "", errors)
        if errors:
            n = len(errors)
            raise ValidationException(
                f"{n} validation error{'s' if n > 1 else ''} detected: " + "; ".join(errors))
        return dict(cleaned or {})

    # --- one value ---------------------------------------------------------------------

    def _value(self, shape: Any, value: Any, path: str, errors: list[str]) -> Any:
        kind = shape.type_name
        if kind == "structure":
            return self._structure(shape, value, path, errors)
        if kind == "list":
            self._need(isinstance(value, list), "a list", path, value)
            self._size(shape, value, path, errors)
            return [self._value(shape.member, item, f"{path}.{i}.member", errors)
                    for i, item in enumerate(value, start=1)]
        if kind == "map":
            return self._map(shape, value, path, errors)
        if kind == "string":
            self._need(isinstance(value, str), "a string", path, value)
            self._size(shape, value, path, errors)
            self._enum(shape, value, path, errors)
            self._pattern(shape, value, path, errors)
        elif kind in ("integer", "long"):
            self._need(isinstance(value, int) and not isinstance(value, bool), "an integer",
                       path, value)
            self._range(shape, value, path, errors)
        elif kind in ("float", "double"):
            self._need(isinstance(value, int | float) and not isinstance(value, bool),
                       "a number", path, value)
            self._range(shape, value, path, errors)
        elif kind == "boolean":
            self._need(isinstance(value, bool), "true or false", path, value)
        elif kind == "timestamp":
            self._need(isinstance(value, int | float | str) and not isinstance(value, bool),
                       "a timestamp (epoch seconds)", path, value)
        elif kind == "blob":
            self._need(isinstance(value, str), "a base64 string", path, value)
        return value

    def _structure(self, shape: Any, value: Any, path: str, errors: list[str]) -> dict[str, Any]:
        self._need(isinstance(value, Mapping), "a structure", path or "the request", value)
        out: dict[str, Any] = {}
        for name in shape.required_members:
            if value.get(name) is None:
                errors.append(f"Value null at '{_child(path, name)}' failed to satisfy "
                              "constraint: Member must not be null")
        for name, member in shape.members.items():
            if value.get(name) is not None:
                out[name] = self._value(member, value[name], _child(path, name), errors)
        return out

    def _map(self, shape: Any, value: Any, path: str, errors: list[str]) -> dict[str, Any]:
        self._need(isinstance(value, Mapping), "a map", path, value)
        self._size(shape, value, path, errors)
        out: dict[str, Any] = {}
        keys: list[str] = []
        values: list[str] = []
        for key, item in value.items():
            self._value(shape.key, key, path, keys)
            out[key] = self._value(shape.value, item, f"{path}.{key}.member", values)
        for what, found in (("Map keys", keys), ("Map value", values)):
            if found:
                errors.append(f"Value {_show(value)} at '{path}' failed to satisfy constraint: "
                              f"{what} must satisfy constraint: [{_constraints(found)}]")
        return out

    # --- constraints -------------------------------------------------------------------

    @staticmethod
    def _need(ok: bool, what: str, path: str, value: Any) -> None:
        if not ok:
            raise SerializationException(
                f"{path or 'the request'} must be {what}, not {type(value).__name__} "
                f"{_show(value)}")

    @staticmethod
    def _size(shape: Any, value: Any, path: str, errors: list[str]) -> None:
        meta, n = shape.metadata, len(value)
        if "min" in meta and n < meta["min"]:
            errors.append(f"Value {_show(value)} at '{path}' failed to satisfy constraint: "
                          f"Member must have length greater than or equal to {meta['min']}")
        if "max" in meta and n > meta["max"]:
            errors.append(f"Value {_show(value)} at '{path}' failed to satisfy constraint: "
                          f"Member must have length less than or equal to {meta['max']}")

    @staticmethod
    def _range(shape: Any, value: float, path: str, errors: list[str]) -> None:
        meta = shape.metadata
        if "min" in meta and value < meta["min"]:
            errors.append(f"Value {_show(value)} at '{path}' failed to satisfy constraint: "
                          f"Member must have value greater than or equal to {meta['min']}")
        if "max" in meta and value > meta["max"]:
            errors.append(f"Value {_show(value)} at '{path}' failed to satisfy constraint: "
                          f"Member must have value less than or equal to {meta['max']}")

    @staticmethod
    def _enum(shape: Any, value: str, path: str, errors: list[str]) -> None:
        allowed = shape.metadata.get("enum")
        if allowed and value not in allowed:
            errors.append(f"Value {_show(value)} at '{path}' failed to satisfy constraint: "
                          f"Member must satisfy enum value set: [{', '.join(allowed)}]")

    def _pattern(self, shape: Any, value: str, path: str, errors: list[str]) -> None:
        source = shape.metadata.get("pattern")
        if not source:
            return
        compiled = self._compiled(source)
        if compiled is not None and not compiled.fullmatch(value):
            errors.append(f"Value {_show(value)} at '{path}' failed to satisfy constraint: "
                          f"Member must satisfy regular expression pattern: {source}")

    def _compiled(self, source: str) -> re.Pattern[str] | None:
        if source not in self._patterns:
            self._patterns[source] = compile_java(source)
        return self._patterns[source]


def compile_java(source: str) -> re.Pattern[str] | None:
    """The model's (Java) pattern as a Python one; None when it cannot be translated."""
    text = source
    for java, python in _JAVA_CLASSES.items():
        text = text.replace(java, python)
    try:
        return re.compile(text, re.DOTALL)
    except re.error:
        return None


def _child(path: str, name: str) -> str:
    return f"{path}.{_camel(name)}" if path else _camel(name)


def _constraints(errors: list[str]) -> str:
    found = [e.split("failed to satisfy constraint: ", 1)[-1] for e in errors]
    return ", ".join(dict.fromkeys(found))
