"""``DataProcessing``: filter each input record, join each output with its input, filter that.

Order, per record: ``InputFilter`` on the input record -> invoke -> join
the output with the *original* input record (``JoinSource=Input``) ->
``OutputFilter``. Defaults ``$``, ``None``, ``$``: nothing changes.

Formats (``TransformInput.ContentType`` and ``TransformOutput.Accept``):
only ``text/csv``, ``application/json`` and ``application/jsonlines``.
A CSV record is one line, read as a JSON array of strings, so only index
paths apply to it; a join appends the output's columns to the input row
(``1,2,3`` + ``9`` -> ``1,2,3,9``). A JSON record is one JSON value; a join
puts the output under ``SageMakerOutput`` when the input is an object, and
otherwise makes ``{"SageMakerInput": input, "SageMakerOutput": output}``.
Joined and filtered JSON is written compactly, numbers exactly as they were
read; a CSV row is written with minimal quoting (a trailing ``\\r`` is
dropped). A record that is not what its content type says, an index
outside a record and a missing member fail that record's object.

When the output is needed record by record (a join, or an ``OutputFilter``),
each answer must carry one output line per record it was sent (one
answer per record with ``SingleRecord``).

JSONPath subset (at most 63 characters): ``$``, ``.name``, ``*`` (``.*``,
``[*]``), ``['a','b']``, ``[i,j]`` (negative counts from the end) and
``[start:end]`` with either end omitted; indexes and slices may share one
bracket (``$[0,5:]``). Not supported: ``..``, filters ``?()``, scripts,
``@``, slice steps. Whether the service's slice end is inclusive is
**unconfirmed**: ``slice_end="exclusive"`` (default, like Python and
JavaScript) or ``"inclusive"``.

A path with only ``.name``, ``['a']`` and single ``[i]`` steps gives one
value; any other gives a list, except ``['a','b']`` as the last step, which
gives an object with those members.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from serving.errors import ConfigError, TransformError
from serving.transform.split import Record

if TYPE_CHECKING:
    from serving.transform.spec import TransformJobSpec

MAX_EXPRESSION = 63
FORMATS = {"text/csv": "csv", "application/json": "json", "application/jsonlines": "json"}
SLICE_ENDS = ("exclusive", "inclusive")
SUBSET = "$, .name, *, ['a','b'], [i,j] (negative counts from the end), [start:end]"


# --- the JSONPath subset ---------------------------------------------------------------------


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
    return {dict: "an object", list: "an array"}.get(type(value), "a single value")


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
            names: list[str] = []
            while True:
                match = _QUOTED.match(self.text, self.pos)
                if not match:
                    raise self.fail("a name in single quotes")
                names.append(match.group(1))
                self.pos = match.end()
                self.spaces()
                if self.peek() != ",":
                    break
                self.pos += 1
                self.spaces()
            self.close()
            return _Names(tuple(names))
        items: list[int | _Slice] = []
        while True:
            items.append(self.item())
            self.spaces()
            if self.peek() != ",":
                break
            self.pos += 1
            self.spaces()
        self.close()
        return _Indexes(tuple(items))

    def item(self) -> int | _Slice:
        match = _INT.match(self.text, self.pos)
        start = int(match.group()) if match else None
        if match:
            self.pos = match.end()
        self.spaces()
        if self.peek() != ":":
            if start is None:
                raise self.fail("an index, a slice or a 'name'" if self.peek() not in "?(@"
                                else "filter and script expressions")
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


# --- record formats ---------------------------------------------------------------------------


class _Number(str):
    """A JSON number kept as the text it was read from."""


def _dump_json(value: Any) -> str:
    if isinstance(value, _Number):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k), ensure_ascii=False)}:{_dump_json(v)}"
                              for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump_json(v) for v in value) + "]"
    return json.dumps(value)


def media_type(content_type: str | None) -> str | None:
    """``text/csv; charset=utf-8`` -> ``text/csv``; None stays None."""
    if content_type is None:
        return None
    return content_type.split(";", 1)[0].strip().lower()


def format_of(content_type: str | None) -> str | None:
    """``csv``, ``json`` (JSON and JSON Lines), or None for any other content type."""
    return FORMATS.get(media_type(content_type) or "")


def parse_record(data: bytes, fmt: str) -> Any:
    """One record as a value: a CSV row as a list of strings, JSON as parsed.

    Raises:
        TransformError: JSON that is not UTF-8 or not one JSON value.
    """
    if fmt == "csv":
        text = data.decode("utf-8", "surrogateescape").removesuffix("\r")
        rows = list(csv.reader([text]))
        return rows[0] if rows else []
    try:
        return json.loads(data.decode("utf-8"), parse_float=_Number, parse_int=_Number,
                          parse_constant=_Number)
    except UnicodeDecodeError:
        raise TransformError("not UTF-8 text, so not JSON", reason="DataProcessing") from None
    except ValueError as err:
        raise TransformError(f"not one JSON value ({str(err).split(':')[0]})",
                             reason="DataProcessing") from None


def dump_record(value: Any, fmt: str) -> bytes:
    """The bytes of one record (a CSV row or compact JSON)."""
    if fmt == "json":
        return _dump_json(value).encode()
    row = value if isinstance(value, list) else [value]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(
        [v if isinstance(v, str) else _dump_json(v) for v in row])
    return buffer.getvalue().encode("utf-8", "surrogateescape")


def join(record: Any, output: Any, fmt: str) -> Any:
    """``JoinSource=Input``: a CSV row gets the output's columns; JSON see the module docstring."""
    if fmt == "csv":
        return list(record) + (list(output) if isinstance(output, list) else [output])
    if isinstance(record, dict):
        return {**record, "SageMakerOutput": output}
    return {"SageMakerInput": record, "SageMakerOutput": output}


# --- the processor ---------------------------------------------------------------------------


def _need(fmt: str | None, value: str | None, field: str) -> str:
    if fmt is None:
        raise ConfigError(f"{field}={value!r}: DataProcessing works only with "
                          f"{', '.join(FORMATS)}; set {field} to one of them or remove "
                          "DataProcessing", field=field, value=value)
    return fmt


def check_data_processing(spec: TransformJobSpec) -> None:
    """The rules a job with ``DataProcessing`` must follow (see the module docstring).

    Raises:
        ConfigError: naming the field to change.
    """
    dp = spec.data_processing or {}
    in_fmt = _need(format_of(spec.content_type), spec.content_type, "TransformInput.ContentType")
    out_fmt = _need(format_of(spec.accept), spec.accept, "TransformOutput.Accept")
    if "csv" in (in_fmt, out_fmt):
        if spec.split_type != "Line":
            raise ConfigError(f"TransformInput.SplitType={spec.split_type!r}: DataProcessing on "
                              "text/csv needs SplitType=Line", field="TransformInput.SplitType")
        if spec.assemble_with != "Line":
            raise ConfigError(f"TransformOutput.AssembleWith={spec.assemble_with!r}: "
                              "DataProcessing on text/csv needs AssembleWith=Line",
                              field="TransformOutput.AssembleWith")
    elif spec.split_type not in ("None", "Line"):
        raise ConfigError(f"TransformInput.SplitType={spec.split_type!r}: DataProcessing on "
                          "JSON needs SplitType=Line (one JSON value per line) or None",
                          field="TransformInput.SplitType")
    if dp.get("JoinSource", "None") == "Input" and in_fmt != out_fmt:
        raise ConfigError(f"DataProcessing.JoinSource='Input' joins records of one format, but "
                          f"ContentType is {spec.content_type} and Accept is {spec.accept}; "
                          "make both CSV or both JSON", field="DataProcessing.JoinSource")
    for name, fmt in (("InputFilter", in_fmt), ("OutputFilter", out_fmt)):
        path = parse_path(dp.get(name) or "", f"DataProcessing.{name}")
        if fmt == "csv" and not path.index_only:
            raise ConfigError(f"DataProcessing.{name}={path.text!r} names a member, but a "
                              "text/csv record is an array: use index paths like $[0], $[1:], "
                              "$[0,-1]", field=f"DataProcessing.{name}", value=path.text)


class DataProcessor:
    """Applies one job's ``DataProcessing`` to an object's records and answers.

    Args:
        spec: the job; its ``DataProcessing`` is checked with :func:`check_data_processing`.
        slice_end: ``exclusive`` (default) or ``inclusive`` (**unconfirmed** service behaviour).

    Raises:
        ConfigError: the job breaks a rule, or ``slice_end`` is not one of :data:`SLICE_ENDS`.
    """

    def __init__(self, spec: TransformJobSpec, *, slice_end: str = "exclusive") -> None:
        if slice_end not in SLICE_ENDS:
            raise ConfigError(f"slice_end={slice_end!r}; use one of {', '.join(SLICE_ENDS)}",
                              field="slice_end", value=slice_end)
        check_data_processing(spec)
        dp = spec.data_processing or {}
        self.input_filter = parse_path(dp.get("InputFilter") or "", "DataProcessing.InputFilter")
        self.output_filter = parse_path(dp.get("OutputFilter") or "",
                                        "DataProcessing.OutputFilter")
        self.join = dp.get("JoinSource", "None") == "Input"
        self.in_fmt = format_of(spec.content_type) or "json"
        self.out_fmt = format_of(spec.accept) or "json"
        self.inclusive = slice_end == "inclusive"

    @classmethod
    def for_spec(cls, spec: TransformJobSpec, *, slice_end: str = "exclusive"
                 ) -> DataProcessor | None:
        """A processor when ``spec`` asks for more than the defaults, else None."""
        if slice_end not in SLICE_ENDS:
            raise ConfigError(f"slice_end={slice_end!r}; use one of {', '.join(SLICE_ENDS)}",
                              field="slice_end", value=slice_end)
        return cls(spec, slice_end=slice_end) if spec.has_data_processing() else None

    @property
    def per_record(self) -> bool:
        """True when answers are needed record by record (a join or an OutputFilter)."""
        return self.join or not self.output_filter.is_root

    def filter_inputs(self, records: Sequence[Record], where: str = "object") -> list[Record]:
        """``InputFilter`` on each record (the same records when it is ``$``).

        Raises:
            TransformError: naming ``where`` and the record; the object fails.
        """
        if self.input_filter.is_root:
            return list(records)
        out = []
        for index, record in enumerate(records):
            try:
                value = self.input_filter.evaluate(parse_record(record.data, self.in_fmt),
                                                   inclusive_end=self.inclusive)
            except TransformError as err:
                raise _failed(where, index, "InputFilter", err) from None
            out.append(Record(dump_record(value, self.in_fmt)))
        return out

    def outputs(self, records: Sequence[Record], answers: Sequence[tuple[int, int, bytes]],
                where: str = "object") -> list[bytes]:
        """One output record per input record: split, joined and filtered.

        Args:
            records: the object's records as read (before ``InputFilter``).
            answers: ``(first record, record count, response body)`` per request.
            where: how messages name the object.

        Raises:
            TransformError: an answer with the wrong number of lines, a record or
                output that is not its format, a path that does not fit.
        """
        out: list[bytes] = []
        for first, count, body in answers:
            for offset, piece in enumerate(_pieces(body, first, count, where)):
                index = first + offset
                try:
                    value = parse_record(piece, self.out_fmt)
                    if self.join:
                        value = join(parse_record(records[index].data, self.in_fmt), value,
                                     self.out_fmt)
                    value = self.output_filter.evaluate(value, inclusive_end=self.inclusive)
                except TransformError as err:
                    raise _failed(where, index, "OutputFilter", err) from None
                out.append(dump_record(value, self.out_fmt))
        return out


def _pieces(body: bytes, first: int, count: int, where: str) -> list[bytes]:
    body = body.removesuffix(b"\n")
    if count == 1:
        return [body]
    pieces = body.split(b"\n")
    if len(pieces) != count:
        raise TransformError(
            f"{where}: records {first}-{first + count - 1}: the container answered "
            f"{len(pieces)} line(s) for {count} records; with DataProcessing each record needs "
            "one output line (or use BatchStrategy=SingleRecord)", reason="DataProcessing")
    return pieces


def _failed(where: str, index: int, stage: str, err: TransformError) -> TransformError:
    return TransformError(f"{where}: record {index}: {stage} {err.message}; fix "
                          f"DataProcessing.{stage} or the record", reason="DataProcessing",
                          record=index)
