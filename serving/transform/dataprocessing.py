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

The expressions are the JSONPath subset of :mod:`serving.transform.jsonpath`;
whether a slice's end is inclusive is **unconfirmed**: ``slice_end=
"exclusive"`` (the default, like Python and JavaScript) or ``"inclusive"``
(a :class:`~serving.transform.dataplane.DataPlane` option).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from serving.errors import ConfigError, TransformError
from serving.transform.jsonpath import parse_path
from serving.transform.split import Record


class JobFields(Protocol):
    """What this module reads of a job (:class:`~serving.transform.spec.TransformJobSpec` has it).

    A protocol, so this module sits below ``spec`` and never imports it.
    """

    @property
    def content_type(self) -> str | None: ...
    @property
    def accept(self) -> str | None: ...
    @property
    def split_type(self) -> str: ...
    @property
    def assemble_with(self) -> str: ...
    @property
    def data_processing(self) -> Mapping[str, Any] | None: ...
    def has_data_processing(self) -> bool: ...

FORMATS = {"text/csv": "csv", "application/json": "json", "application/jsonlines": "json"}
SLICE_ENDS = ("exclusive", "inclusive")


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


def check_data_processing(spec: JobFields) -> None:
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

    def __init__(self, spec: JobFields, *, slice_end: str = "exclusive") -> None:
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
    def for_spec(cls, spec: JobFields, *, slice_end: str = "exclusive"
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
            doc = self._parse(record.data, self.in_fmt, where, index, "record")
            try:
                value = self.input_filter.evaluate(doc, inclusive_end=self.inclusive)
            except TransformError as err:
                raise _failed(where, index, f"InputFilter {err.message}",
                              "fix DataProcessing.InputFilter or the record") from None
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
                value = self._parse(piece, self.out_fmt, where, index, "answer")
                if self.join:
                    value = join(self._parse(records[index].data, self.in_fmt, where, index,
                                             "record"), value, self.out_fmt)
                try:
                    value = self.output_filter.evaluate(value, inclusive_end=self.inclusive)
                except TransformError as err:
                    raise _failed(where, index, f"OutputFilter {err.message}",
                                  "fix DataProcessing.OutputFilter or the record") from None
                out.append(dump_record(value, self.out_fmt))
        return out

    @staticmethod
    def _parse(data: bytes, fmt: str, where: str, index: int, what: str) -> Any:
        try:
            return parse_record(data, fmt)
        except TransformError as err:
            field = "TransformInput.ContentType" if what == "record" else "TransformOutput.Accept"
            whose = "the record" if what == "record" else "the container's answer"
            raise _failed(where, index, f"{whose} is {err.message}",
                          f"it must be JSON ({field})") from None


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


def _failed(where: str, index: int, what: str, hint: str) -> TransformError:
    return TransformError(f"{where}: record {index}: {what}; {hint}", reason="DataProcessing",
                          record=index)
