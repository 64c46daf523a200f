"""DataProcessing: the JSONPath subset, CSV and JSON joins, filters, and the data plane."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from serving.aws import ClientFactory
from serving.errors import ConfigError, TransformError
from serving.ports import free_port
from serving.transform.dataplane import DataPlane
from serving.transform.dataprocessing import (
    DataProcessor,
    dump_record,
    format_of,
    join,
    parse_record,
)
from serving.transform.jsonpath import parse_path
from serving.transform.result import JobResult
from serving.transform.spec import TransformJobSpec
from serving.transform.split import Record, split_lines
from tests.helpers import QuietHandler, serve_in_thread

DOC = {"id": 7, "features": [1, 2, 3, 4], "meta": {"tags": [{"k": "a"}, {"k": "b"}]}}
ROW = ["id-1", "0.5", "0.25", "x"]

# --- the JSONPath subset ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$", DOC),
        ("", DOC),
        ("$.id", 7),
        ("$['id']", 7),
        ("$.features[0]", 1),
        ("$.features[-1]", 4),
        ("$.features[0,-1]", [1, 4]),
        ("$.features[1:]", [2, 3, 4]),
        ("$.features[:2]", [1, 2]),
        ("$.features[1:3]", [2, 3]),
        ("$.features[-2:]", [3, 4]),
        ("$.features[0,2:]", [1, 3, 4]),
        ("$.features[*]", [1, 2, 3, 4]),
        ("$.features[ 0 , 1 ]", [1, 2]),
        ("$['id','features']", {"id": 7, "features": [1, 2, 3, 4]}),
        ("$.meta.tags[*].k", ["a", "b"]),
        ("$.meta.tags[*]['k']", ["a", "b"]),
        ("$.meta.*", [[{"k": "a"}, {"k": "b"}]]),
        ("$.*", [7, [1, 2, 3, 4], DOC["meta"]]),
    ],
)
def test_json_paths(path: str, expected: Any) -> None:
    assert parse_path(path).evaluate(DOC) == expected


def test_slice_end_is_exclusive_by_default_and_inclusive_on_request() -> None:
    letters = list("abcdef")
    path = parse_path("$[1:3]")
    assert path.evaluate(letters) == ["b", "c"]
    assert path.evaluate(letters, inclusive_end=True) == ["b", "c", "d"]
    assert parse_path("$[0:-2]").evaluate(letters, inclusive_end=True) == list("abcde")
    assert parse_path("$[2:]").evaluate(letters, inclusive_end=True) == list("cdef")
    assert parse_path("$[4:99]").evaluate(letters) == ["e", "f"]  # slices are clipped


@pytest.mark.parametrize(
    ("path", "doc", "message"),
    [
        ("$[4]", ROW, "$[4]: index 4 is outside the record (4 items)"),
        ("$[-5]", ROW, "index -5 is outside the record"),
        ("$[0,9]", ROW, "index 9 is outside"),
        ("$.missing", DOC, "no member 'missing'"),
        ("$['id','nope']", DOC, "no member 'nope'"),
        ("$.id[0]", DOC, "a single value cannot be indexed"),
        ("$.features.x", DOC, "an array has no member 'x'"),
    ],
)
def test_paths_that_do_not_fit_the_record_fail(path: str, doc: Any, message: str) -> None:
    with pytest.raises(TransformError) as info:
        parse_path(path).evaluate(doc)
    assert message in str(info.value)
    assert info.value.context["reason"] == "DataProcessing"


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("$..id", "recursive descent"),
        ("id", "must start with $"),
        ("$[?(@.id > 1)]", "filter and script expressions"),
        ("$[(@.length-1)]", "filter and script expressions"),
        ("$[0:4:2]", "slice step"),
        ('$["id"]', "double quotes"),
        ("$.", "a member name after '.'"),
        ("$[0", "missing ']'"),
        ("$[]", "an index, a slice or a 'name'"),
        ("$.a b", "unexpected ' '"),
        ("$.length()", "unexpected '('"),
    ],
)
def test_expressions_outside_the_subset_are_config_errors(expression: str,
                                                          fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_path(expression, "DataProcessing.OutputFilter")
    message = str(info.value)
    assert message.startswith(f"DataProcessing.OutputFilter={expression!r} is outside the "
                              "supported JSONPath subset")
    assert fragment in message
    assert info.value.context["field"] == "DataProcessing.OutputFilter"


def test_expressions_longer_than_63_characters_are_refused() -> None:
    ok = "$.a" + ".b" * 30  # 63 characters
    assert len(ok) == 63 and parse_path(ok).steps
    with pytest.raises(ConfigError, match=r"DataProcessing.InputFilter=.* has 65 characters; "
                                          r"use 0..63"):
        parse_path(ok + ".c", "DataProcessing.InputFilter")


def test_index_only_tells_csv_paths_apart() -> None:
    assert parse_path("$[1:]").index_only and parse_path("$").index_only
    assert not parse_path("$.features[0]").index_only


# --- record formats and joins -----------------------------------------------------------------


def test_formats() -> None:
    assert format_of("text/csv; charset=utf-8") == "csv"
    assert format_of("application/jsonlines") == format_of("Application/JSON") == "json"
    assert format_of("text/plain") is None and format_of(None) is None


def test_csv_record_is_an_array_of_strings() -> None:
    assert parse_record(b'1,"a,b",2.50\r', "csv") == ["1", "a,b", "2.50"]
    assert dump_record(["1", "a,b", "2.50"], "csv") == b'1,"a,b",2.50'
    assert dump_record("only", "csv") == b"only"
    assert parse_record(b"", "csv") == []


def test_json_record_keeps_numbers_as_written_and_is_written_compactly() -> None:
    value = parse_record(b'{"a": 1.50, "b": [1e3, -0, true, null], "c": "\xc3\xa9"}', "json")
    assert dump_record(value, "json") == '{"a":1.50,"b":[1e3,-0,true,null],"c":"é"}'.encode()


def test_not_json_is_an_error() -> None:
    with pytest.raises(TransformError, match="not one JSON value"):
        parse_record(b"{1}", "json")
    with pytest.raises(TransformError, match="not UTF-8"):
        parse_record(b"\xff", "json")


def test_joins() -> None:
    assert join(["1", "2", "3"], ["9"], "csv") == ["1", "2", "3", "9"]
    assert join({"id": 1}, [0.9], "json") == {"id": 1, "SageMakerOutput": [0.9]}
    assert join([1, 2], {"p": 1}, "json") == {"SageMakerInput": [1, 2], "SageMakerOutput": {"p": 1}}
    assert join("text", 3, "json") == {"SageMakerInput": "text", "SageMakerOutput": 3}


# --- job rules ---------------------------------------------------------------------------------


def spec(dp: dict[str, str] | None, **kw: Any) -> TransformJobSpec:
    options: dict[str, Any] = {"content_type": "text/csv", "accept": "text/csv"}
    options.update(kw)
    return TransformJobSpec.simple("dp-job", "model", "s3://bkt/in/", "s3://bkt/out/",
                                   data_processing=dp, **options)


@pytest.mark.parametrize(
    ("dp", "kw", "field", "fragment"),
    [
        ({"JoinSource": "Input"}, {"content_type": "text/plain"}, "TransformInput.ContentType",
         "works only with text/csv, application/json, application/jsonlines"),
        ({"InputFilter": "$[1:]"}, {"accept": None}, "TransformOutput.Accept", "works only"),
        ({"InputFilter": "$[1:]"}, {"split_type": "None", "batch_strategy": None},
         "TransformInput.SplitType", "text/csv needs SplitType=Line"),
        ({"OutputFilter": "$[0]"}, {"assemble_with": "None"}, "TransformOutput.AssembleWith",
         "needs AssembleWith=Line"),
        ({"InputFilter": "$.features"}, {}, "DataProcessing.InputFilter", "index paths"),
        ({"OutputFilter": "$['a']"}, {"content_type": "application/json"},
         "DataProcessing.OutputFilter", "text/csv record is an array"),
        ({"JoinSource": "Input"}, {"accept": "application/json"}, "DataProcessing.JoinSource",
         "make both CSV or both JSON"),
        ({"InputFilter": "$.a"}, {"content_type": "application/json",
                                  "accept": "application/json", "split_type": "RecordIO"},
         "TransformInput.SplitType", "JSON needs SplitType=Line"),
        ({"InputFilter": "$..a"}, {}, "DataProcessing.InputFilter", "outside the supported"),
    ],
)
def test_job_rules_name_the_field(dp: dict[str, str], kw: dict[str, Any], field: str,
                                  fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        spec(dp, **kw)
    assert info.value.context["field"] == field
    assert fragment in str(info.value)


def test_rules_apply_through_from_request_too() -> None:
    req = spec(None).to_request()
    req["DataProcessing"] = {"OutputFilter": "$[" + "0," * 30 + "12]"}
    with pytest.raises(ConfigError, match=r"DataProcessing.OutputFilter=.* has 65 characters"):
        TransformJobSpec.from_request(req)
    req["DataProcessing"] = {"InputFilter": "$[?(@[0]>1)]"}
    with pytest.raises(ConfigError, match=r"DataProcessing.InputFilter=.*outside the supported"):
        TransformJobSpec.from_request(req)


def test_defaults_need_no_supported_content_type() -> None:
    s = spec({"InputFilter": "$", "OutputFilter": "", "JoinSource": "None"},
             content_type="application/x-npy", accept=None, split_type="None")
    assert DataProcessor.for_spec(s) is None


def test_bad_slice_end_option() -> None:
    with pytest.raises(ConfigError, match="slice_end='both'"):
        DataProcessor.for_spec(spec(None), slice_end="both")


# --- the processor on records -------------------------------------------------------------------


def test_input_filter_then_join_with_the_original_then_output_filter() -> None:
    s = spec({"InputFilter": "$[1:]", "JoinSource": "Input", "OutputFilter": "$[0,-1]"})
    proc = DataProcessor(s)
    records = split_lines(b"a,1,2\nb,3,4\n")
    assert [r.data for r in proc.filter_inputs(records)] == [b"1,2", b"3,4"]
    outs = proc.outputs(records, [(0, 2, b"0.1\n0.9\n")])
    assert outs == [b"a,0.1", b"b,0.9"]


def test_a_batch_answer_needs_one_line_per_record() -> None:
    proc = DataProcessor(spec({"JoinSource": "Input"}))
    records = split_lines(b"a\nb\nc\n")
    with pytest.raises(TransformError, match=r"s3://b/k: records 0-2: the container answered 2 "
                                             r"line\(s\) for 3 records"):
        proc.outputs(records, [(0, 3, b"x\ny\n")], "s3://b/k")
    assert proc.outputs(records[:1], [(0, 1, b"one,two\n")]) == [b"a,one,two"]


def test_filter_failure_names_object_record_and_filter() -> None:
    proc = DataProcessor(spec({"InputFilter": "$[2]"}))
    with pytest.raises(TransformError) as info:
        proc.filter_inputs([Record(b"a,b,c"), Record(b"a,b")], "s3://b/k.csv")
    assert str(info.value) == ("s3://b/k.csv: record 1: InputFilter $[2]: index 2 is outside "
                               "the record (2 items); fix DataProcessing.InputFilter or the record")


def test_an_answer_that_is_not_json_names_accept() -> None:
    proc = DataProcessor(spec({"JoinSource": "Input"}, content_type="application/json",
                              accept="application/jsonlines"))
    with pytest.raises(TransformError, match=r"record 0: the container's answer is not one JSON "
                                             r"value .*TransformOutput.Accept"):
        proc.outputs([Record(b"{}")], [(0, 1, b"oops")])


def test_input_filter_only_leaves_answers_as_they_are() -> None:
    proc = DataProcessor(spec({"InputFilter": "$[0]"}))
    assert not proc.per_record


# --- through the data plane -----------------------------------------------------------------------


class Model:
    """A recording container whose answer per request line is made by ``answer``."""

    def __init__(self, answer: Callable[[bytes], bytes]) -> None:
        self.bodies: list[bytes] = []
        model = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                self._answer(404, b"")

            def do_POST(self) -> None:
                body = self._body()
                model.bodies.append(body)
                self._answer(200, b"\n".join(answer(line) for line in body.split(b"\n")))

        self.server, _ = serve_in_thread(Handler, free_port())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def csv_columns(line: bytes) -> bytes:
    return str(len(line.split(b","))).encode()


def json_echo(line: bytes) -> bytes:
    return json.dumps({"got": json.loads(line)}).encode()


@pytest.fixture()
def csv_model() -> Iterator[Model]:
    m = Model(csv_columns)
    yield m
    m.close()


@pytest.fixture()
def json_model() -> Iterator[Model]:
    m = Model(json_echo)
    yield m
    m.close()


def run_job(clients: ClientFactory, bucket: str, url: str, objects: dict[str, bytes],
            dp: dict[str, str], **kw: Any) -> tuple[JobResult, dict[str, bytes]]:
    s3 = clients.client("s3")
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=f"in/{key}", Body=body)
    plane_kw = {k: kw.pop(k) for k in ("slice_end",) if k in kw}
    options: dict[str, Any] = {"content_type": "text/csv", "accept": "text/csv"}
    options.update(kw)
    job = TransformJobSpec.simple("dp-job", "model", f"s3://{bucket}/in/", f"s3://{bucket}/out/",
                                  data_processing=dp, **options)
    result = DataPlane(s3, [url], job, backoff=0, sleep=lambda _s: None, **plane_kw).run()
    found = {}
    for item in s3.list_objects_v2(Bucket=bucket, Prefix="out/").get("Contents", []):
        found[item["Key"][4:]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return result, found


def test_csv_filter_join_filter_end_to_end(clients: ClientFactory, bucket: str,
                                           csv_model: Model) -> None:
    result, out = run_job(clients, bucket, csv_model.url, {"a.csv": b"id1,1,2,3\nid2,4,5,6\n"},
                          {"InputFilter": "$[1:]", "JoinSource": "Input",
                           "OutputFilter": "$[0,-1]"})
    assert result.ok
    assert csv_model.bodies == [b"1,2,3\n4,5,6"]  # the id column never reaches the model
    assert out == {"a.csv.out": b"id1,3\nid2,3\n"}


def test_csv_join_appends_output_columns(clients: ClientFactory, bucket: str,
                                         csv_model: Model) -> None:
    _, out = run_job(clients, bucket, csv_model.url, {"a.csv": b"1,2,3\n"},
                     {"JoinSource": "Input"}, batch_strategy="SingleRecord")
    assert out == {"a.csv.out": b"1,2,3,3\n"}


def test_json_lines_join_under_sagemaker_output(clients: ClientFactory, bucket: str,
                                                json_model: Model) -> None:
    lines = b'{"id": 1, "features": [0.50, 2]}\n[3, 4]\n'
    result, out = run_job(clients, bucket, json_model.url, {"a.jsonl": lines},
                          {"JoinSource": "Input"}, content_type="application/jsonlines",
                          accept="application/jsonlines")
    assert result.ok
    assert json_model.bodies == [lines.rstrip(b"\n")]  # "$" input filter: bytes untouched
    assert out["a.jsonl.out"] == (
        b'{"id":1,"features":[0.50,2],"SageMakerOutput":{"got":{"id":1,"features":[0.5,2]}}}\n'
        b'{"SageMakerInput":[3,4],"SageMakerOutput":{"got":[3,4]}}\n')


def test_json_input_and_output_filters(clients: ClientFactory, bucket: str,
                                       json_model: Model) -> None:
    _, out = run_job(clients, bucket, json_model.url,
                     {"a.jsonl": b'{"id": "a", "features": [1, 2]}\n'},
                     {"InputFilter": "$.features", "JoinSource": "Input",
                      "OutputFilter": "$['id','SageMakerOutput']"},
                     content_type="application/jsonlines", accept="application/json")
    assert json_model.bodies == [b"[1,2]"]
    assert out == {"a.jsonl.out": b'{"id":"a","SageMakerOutput":{"got":[1,2]}}\n'}


def test_whole_json_document_with_split_none(clients: ClientFactory, bucket: str,
                                             json_model: Model) -> None:
    _, out = run_job(clients, bucket, json_model.url, {"doc.json": b'{"x": [1, 2, 3]}'},
                     {"InputFilter": "$.x[-1]", "JoinSource": "Input",
                      "OutputFilter": "$.SageMakerOutput.got"},
                     content_type="application/json", accept="application/json",
                     split_type="None", batch_strategy=None, assemble_with="None")
    assert json_model.bodies == [b"3"]
    assert out == {"doc.json.out": b"3"}


def test_index_outside_the_record_fails_only_that_object(clients: ClientFactory, bucket: str,
                                                         csv_model: Model) -> None:
    result, out = run_job(clients, bucket, csv_model.url,
                          {"good.csv": b"1,2,3\n", "short.csv": b"1,2,3\n4,5\n"},
                          {"JoinSource": "Input", "OutputFilter": "$[3]"})
    assert list(out) == ["good.csv.out"]
    (failed,) = result.failed
    assert failed.key == "in/short.csv"
    assert failed.error == ("DataProcessing: record 1: OutputFilter $[3]: index 3 is outside the "
                            "record (3 items); fix DataProcessing.OutputFilter or the record")
    assert f"{bucket}/in/short.csv: DataProcessing: record 1" in result.failure_reason()


def test_input_filter_failure_sends_nothing_for_that_object(clients: ClientFactory,
                                                            bucket: str,
                                                            csv_model: Model) -> None:
    result, out = run_job(clients, bucket, csv_model.url, {"a.csv": b"1,2\n1\n"},
                          {"InputFilter": "$[1]"})
    assert out == {} and csv_model.bodies == []
    assert (result.failed[0].error or "").startswith("DataProcessing: record 1: InputFilter $[1]")


def test_not_json_fails_the_object(clients: ClientFactory, bucket: str,
                                   json_model: Model) -> None:
    result, _ = run_job(clients, bucket, json_model.url, {"a.jsonl": b"not json\n"},
                        {"InputFilter": "$.a"}, content_type="application/jsonlines",
                        accept="application/jsonlines")
    assert (result.failed[0].error or "").startswith(
        "DataProcessing: record 0: the record is not one JSON value (Expecting value); it must "
        "be JSON (TransformInput.ContentType)")


def test_inclusive_slice_end_option(clients: ClientFactory, bucket: str,
                                    csv_model: Model) -> None:
    _, out = run_job(clients, bucket, csv_model.url, {"a.csv": b"a,b,c,d\n"},
                     {"InputFilter": "$[0:1]"}, slice_end="inclusive")
    assert csv_model.bodies == [b"a,b"]
    assert out == {"a.csv.out": b"2\n"}
