"""serving.s3refs against the embedded moto server: parse, validate, fetch, write, skip."""

from __future__ import annotations

import concurrent.futures
import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from serving import s3refs
from serving.aws import ClientFactory
from serving.errors import (
    BadRequest,
    Forbidden,
    InputNotFound,
    InvalidInput,
    PayloadTooLarge,
    PredictionError,
    StorageError,
    UnsupportedContentType,
)
from serving.s3refs import RecordResult, RejectedRecord, RequestRecord, S3Refs, parse_records
from serving.settings import Settings

# --- helpers -------------------------------------------------------------------


def rec(bucket: str, out: str = "results/a.bin", overwrite: bool = False,
        **inputs: str) -> RequestRecord:
    return RequestRecord(bucket, inputs or {"x": "in/a.bin"}, out, overwrite)


def put(s3: Any, bucket: str, key: str, data: bytes) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=data)


def get(s3: Any, bucket: str, key: str) -> bytes | None:
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None


def keys(s3: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def upper(batch: list[dict[str, bytes]]) -> list[bytes]:
    return [b"|".join(v.upper() for v in inputs.values()) for inputs in batch]


@pytest.fixture()
def s3(clients: ClientFactory) -> Any:
    return clients.client("s3")


@pytest.fixture()
def refs(s3: Any, settings: Settings) -> Iterator[S3Refs]:
    r = S3Refs(s3, settings)
    yield r
    r.close()


# --- parse_records -----------------------------------------------------------

ONE = {"bucket": "b1", "inputs": {"video": "v/a.npy", "feat": "f/a.npz"},
       "output_path": "results/a.npy", "overwrite": True}


def test_parse_single_object() -> None:
    [r] = parse_records(json.dumps(ONE).encode())
    assert r == RequestRecord("b1", {"video": "v/a.npy", "feat": "f/a.npz"}, "results/a.npy", True)
    assert r.to_dict() == ONE


def test_parse_array_and_default_overwrite() -> None:
    two = [{"bucket": "b", "inputs": {"x": f"in/{i}"}, "output_path": f"out/{i}"} for i in (1, 2)]
    records = parse_records(json.dumps(two), "application/json; charset=utf-8")
    assert [r.output_path for r in records] == ["out/1", "out/2"]
    assert not any(r.overwrite for r in records)


@pytest.mark.parametrize("ctype", ["application/jsonlines", "application/x-jsonlines",
                                   "application/jsonl", "Application/JSONLines; charset=utf-8"])
def test_parse_jsonlines_skips_blank_lines(ctype: str) -> None:
    lines = [json.dumps({**ONE, "output_path": f"out/{i}"}) for i in range(3)]
    body = ("\ufeff" + lines[0] + "\r\n\n  \n" + lines[1] + "\n" + lines[2] + "\n").encode()
    records = parse_records(body, ctype)
    assert [r.output_path for r in records] == ["out/0", "out/1", "out/2"]


def test_dumps_records_round_trips() -> None:
    records = [RequestRecord("b", {"x": f"in/{i}"}, f"out/{i}") for i in range(3)]
    body = s3refs.dumps_records(records)
    assert body.endswith(b"\n") and body.count(b"\n") == 3
    assert parse_records(body, "application/jsonlines") == records


def test_record_is_hashable_and_copies_inputs() -> None:
    inputs = {"x": "in/a"}
    r = RequestRecord("b", inputs, "out/a")
    inputs["x"] = "in/changed"
    assert r.inputs == {"x": "in/a"}
    assert len({r, RequestRecord("b", {"x": "in/a"}, "out/a")}) == 1


def test_unsupported_content_type() -> None:
    with pytest.raises(UnsupportedContentType, match="text/csv"):
        parse_records(json.dumps(ONE), "text/csv")


@pytest.mark.parametrize(("body", "ctype", "match"), [
    (b"", "application/json", "not valid JSON"),
    (b"   \n\n", "application/jsonlines", "no records"),
    (b"[]", "application/json", "no records"),
    (b"{not json", "application/json", r"not valid JSON.*line 1"),
    (b"\xff\xfe", "application/json", "not UTF-8"),
    (json.dumps(ONE).encode() + b"\n" + json.dumps(ONE).encode(), "application/json",
     "application/jsonlines"),
    (json.dumps(ONE).encode() + b"\n{oops\n", "application/jsonlines",
     "line 2 is not valid JSON"),
    (b"[1, 2]", "application/json", r"record\[0\]: expected a JSON object"),
    (b'"just a string"', "application/json", "expected a JSON object"),
    (b"[[]]", "application/json", "expected a JSON object"),
    (b'{"bucket": "b", "bucket": "c", "inputs": {"x": "k"}, "output_path": "o"}',
     "application/json", "'bucket' appears twice"),
    (b"[" * 100_000 + b"]" * 100_000, "application/json", "nested too deeply|not valid"),
])
def test_parse_malformed(body: bytes, ctype: str, match: str) -> None:
    with pytest.raises(BadRequest, match=match):
        parse_records(body, ctype, strict=True)


@pytest.mark.parametrize(("body", "ctype", "match"), [
    (json.dumps(ONE).encode() + b"\n{oops\n", "application/jsonlines",
     "line 2 is not valid JSON"),
    (b"[1, 2]", "application/json", r"record\[0\]: expected a JSON object"),
    (b'"just a string"', "application/json", "expected a JSON object"),
    (b"[{}]", "application/json", r"record\[0\]: field 'bucket' is missing"),
])
def test_parse_keeps_a_malformed_record_in_its_place(body: bytes, ctype: str,
                                                    match: str) -> None:
    records = parse_records(body, ctype)
    rejected = [r for r in records if isinstance(r, RejectedRecord)]
    assert rejected
    assert re.search(match, str(rejected[0].error))


@pytest.mark.parametrize(("change", "match"), [
    ({"bucket": None}, "'bucket' is missing"),
    ({"inputs": None}, "'inputs' is missing"),
    ({"output_path": None}, "'output_path' is missing"),
    ({"bucket": 3}, "'bucket' must be a non-empty string"),
    ({"bucket": ""}, "'bucket' must be a non-empty string"),
    ({"inputs": ["v/a.npy"]}, "'inputs' must be a non-empty object"),
    ({"inputs": {}}, "'inputs' must be a non-empty object"),
    ({"inputs": {"x": 5}}, r"inputs\['x'\] must be a non-empty string"),
    ({"inputs": {"x": ""}}, r"inputs\['x'\] must be a non-empty string"),
    ({"inputs": {"": "k"}}, "input name '' must be non-empty"),
    ({"inputs": {f"i{n}": "k" for n in range(300)}}, "at most 256"),
    ({"output_path": ["o"]}, "'output_path' must be a non-empty string"),
    ({"overwrite": "false"}, "'overwrite' must be true or false"),
    ({"overwrite": 0}, "'overwrite' must be true or false"),
    ({"overwirte": True}, "unknown field.*'overwirte'"),
])
def test_parse_bad_record_names_index_and_field(change: dict[str, Any], match: str) -> None:
    bad = {**ONE, **change}
    bad = {k: v for k, v in bad.items() if v is not None}
    body = json.dumps([ONE, bad])
    with pytest.raises(BadRequest, match=r"record\[1\]") as info:
        parse_records(body, strict=True)
    assert info.match(match)
    lines = json.dumps({**ONE, "output_path": "other"}) + "\n" + json.dumps(bad)
    with pytest.raises(BadRequest, match=r"^line 2: "):
        parse_records(lines, "application/jsonlines", strict=True)
    # not strict: the bad record is kept in its place with its error; the good one is read
    good, rejected = parse_records(body)
    assert good == RequestRecord.from_dict(ONE)
    assert isinstance(rejected, RejectedRecord)
    assert re.search(match, str(rejected.error)) and "record[1]" in str(rejected.error)


def test_from_dict_uses_index() -> None:
    with pytest.raises(BadRequest, match=r"^record\[7\]: field 'bucket' is missing"):
        RequestRecord.from_dict({"inputs": {"x": "k"}, "output_path": "o"}, 7)


def test_parse_refuses_too_many_records() -> None:
    one = json.dumps({"bucket": "b", "inputs": {"x": "k"}, "output_path": "o"})
    with pytest.raises(PayloadTooLarge, match="10000"):
        parse_records("\n".join([one] * 10_001), "application/jsonlines")
    with pytest.raises(PayloadTooLarge, match="10000"):
        parse_records("[" + ",".join([one] * 10_001) + "]")


def test_parse_refuses_same_output_twice_but_allows_shared_inputs() -> None:
    a = {"bucket": "b", "inputs": {"x": "in/shared"}, "output_path": "out/a"}
    b = {**a, "output_path": "out/b"}
    assert len(parse_records(json.dumps([a, b]), strict=True)) == 2
    assert len(parse_records(json.dumps([a, b, a]), strict=True)) == 3  # a copy: done once
    clash = {**a, "inputs": {"x": "in/other"}}
    with pytest.raises(BadRequest, match=r"record\[0\], record\[2\] all write s3://b/out/a"):
        parse_records(json.dumps([a, b, clash]), strict=True)
    assert len(parse_records(json.dumps([a, {**a, "bucket": "other"}]), strict=True)) == 2
    with pytest.raises(BadRequest, match=r"is the output of record\[0\]"):
        parse_records(json.dumps([a, {"bucket": "b", "inputs": {"x": "out/a"},
                                      "output_path": "out/c"}]), strict=True)
    assert len(parse_records(json.dumps([a, b, clash]))) == 3  # process() answers each


# --- validate ----------------------------------------------------------------


def test_allow_list(s3: Any, settings: Settings, bucket: str) -> None:
    closed = S3Refs(s3, settings.with_changes(allowed_buckets=()))
    with pytest.raises(Forbidden, match=f"bucket '{bucket}' is not on the allow-list; add it to "
                                        "SMSERVE_ALLOWED_BUCKETS"):
        closed.validate(rec(bucket))
    only = S3Refs(s3, settings.with_changes(allowed_buckets=(bucket,)))
    only.validate(rec(bucket))
    with pytest.raises(Forbidden, match="allow-list"):
        only.validate(rec("someone-elses-bucket"))
    with pytest.raises(Forbidden):  # nothing was read or written on the way
        only.write(rec("someone-elses-bucket"), b"x")


@pytest.mark.parametrize(("key", "error", "match"), [
    ("../x", Forbidden, r"'\.\.' segment"),
    ("a/../b", Forbidden, r"'\.\.' segment"),
    ("a/./b", Forbidden, r"'\.' or"),
    ("/abs/key", Forbidden, "absolute"),
    ("a//b", BadRequest, "empty segment"),
    ("a/", BadRequest, "empty segment"),
    ("a\\..\\b", BadRequest, "backslash"),
    ("a\nb", BadRequest, "control character"),
    ("a\x00b", BadRequest, "control character"),
    ("\ud800", BadRequest, "not valid Unicode"),
    ("k" * 1025, BadRequest, "1025 bytes"),
    ("é" * 513, BadRequest, "1026 bytes"),
])
def test_bad_keys(refs: S3Refs, key: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=r"inputs\['x'\].*" + match):
        refs.validate(RequestRecord("b1", {"x": key}, "results/ok"))
    with pytest.raises(error, match="output_path.*" + match):
        refs.validate(RequestRecord("b1", {"x": "in/ok"}, key))


def test_good_keys(refs: S3Refs) -> None:
    refs.validate(RequestRecord("b1", {"x": "a..b/c.d/..e"}, "k" * 1024))


def test_bucket_name_and_inputs(refs: S3Refs) -> None:
    with pytest.raises(BadRequest, match="not a valid S3 bucket name"):
        refs.validate(RequestRecord("a/b", {"x": "k"}, "o"))
    with pytest.raises(BadRequest, match="at least one input"):
        refs.validate(RequestRecord("b1", {}, "o"))
    with pytest.raises(BadRequest, match="also an input"):
        refs.validate(RequestRecord("b1", {"x": "same"}, "same"))


def test_output_prefixes(s3: Any, settings: Settings) -> None:
    r = S3Refs(s3, settings.with_changes(output_prefixes=("results/m1", "tmp/")))
    r.validate(rec("b1", "results/m1/a.npy"))
    r.validate(rec("b1", "tmp/a"))
    for out in ("results/m1-evil/a", "results/other/a", "a.npy", "tmpx/a", "results/m1"):
        with pytest.raises(Forbidden, match=r"outside the allowed output prefixes.*"
                                            r"SMSERVE_OUTPUT_PREFIXES"):
            r.validate(rec("b1", out))
    with pytest.raises(Forbidden):
        S3Refs(s3, settings.with_changes(output_prefixes=())).validate(rec("b1"))


# --- fetch / write / output_exists -------------------------------------------


def test_fetch_write_exists(refs: S3Refs, s3: Any, bucket: str) -> None:
    put(s3, bucket, "in/v", b"video")
    put(s3, bucket, "in/f", b"feat")
    r = rec(bucket, "results/o", v="in/v", f="in/f")
    assert refs.fetch(r) == {"v": b"video", "f": b"feat"}
    assert list(refs.fetch(r)) == ["v", "f"]
    assert refs.output_exists(r) is None
    assert refs.write(r, b"12345", "application/x-npy") == 5
    assert refs.output_exists(r) == 5
    head = s3.head_object(Bucket=bucket, Key="results/o")
    assert head["ContentType"] == "application/x-npy"
    assert get(s3, bucket, "results/o") == b"12345"


def test_fetch_missing_input_and_bucket(refs: S3Refs, s3: Any, bucket: str) -> None:
    put(s3, bucket, "in/v", b"video")
    with pytest.raises(InputNotFound, match=f"input 'f' not found: s3://{bucket}/in/missing"):
        refs.fetch(rec(bucket, v="in/v", f="in/missing"))
    with pytest.raises(InputNotFound, match="s3://no-such-bucket-xyz/in/v"):
        refs.fetch(rec("no-such-bucket-xyz", v="in/v"))
    assert refs.output_exists(rec("no-such-bucket-xyz")) is None


def test_fetch_oversized_input(s3: Any, settings: Settings, bucket: str) -> None:
    put(s3, bucket, "in/small", b"x" * 10)
    put(s3, bucket, "in/big", b"x" * 11)
    r = S3Refs(s3, settings.with_changes(max_input_bytes=10))
    assert r.fetch(rec(bucket, x="in/small")) == {"x": b"x" * 10}
    with pytest.raises(PayloadTooLarge, match=f"s3://{bucket}/in/big is 11 bytes, over the "
                                              "10-byte limit"):
        r.fetch(rec(bucket, x="in/big"))


def test_storage_error_has_no_credentials(settings: Settings, bucket: str) -> None:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(aws_access_key_id="AKIASECRETID",
                                    aws_secret_access_key="very-secret-key")
    closed_port = session.client("s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1",
                                 config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    with pytest.raises(StorageError) as info:
        S3Refs(closed_port, settings).output_exists(rec(bucket))
    message = str(info.value)
    assert f"s3://{bucket}/results/a.bin" in message
    assert "secret" not in message.lower() and "AKIA" not in message


# --- process -------------------------------------------------------------------


def test_process_writes_and_answers(refs: S3Refs, s3: Any, bucket: str) -> None:
    put(s3, bucket, "in/a", b"a")
    put(s3, bucket, "in/b", b"b")
    put(s3, bucket, "in/shared", b"s")
    records = [rec(bucket, "out/1", a="in/a", s="in/shared"),
               rec(bucket, "out/2", b="in/b", s="in/shared")]
    seen: list[list[dict[str, bytes]]] = []

    def predict(batch: list[dict[str, bytes]]) -> list[bytes]:
        seen.append(batch)
        return upper(batch)

    results = refs.process(records, predict, "text/plain")
    assert seen == [[{"a": b"a", "s": b"s"}, {"b": b"b", "s": b"s"}]]
    assert results == [RecordResult("written", bucket, "out/1", 3, {"a": "in/a", "s": "in/shared"}),
                       RecordResult("written", bucket, "out/2", 3, {"b": "in/b", "s": "in/shared"})]
    assert get(s3, bucket, "out/1") == b"A|S"
    assert get(s3, bucket, "out/2") == b"B|S"
    assert s3.head_object(Bucket=bucket, Key="out/1")["ContentType"] == "text/plain"


def test_process_skips_existing_and_overwrite_rewrites(refs: S3Refs, s3: Any,
                                                       bucket: str) -> None:
    put(s3, bucket, "in/a", b"a")
    put(s3, bucket, "out/1", b"old!")
    put(s3, bucket, "out/2", b"old")
    records = [rec(bucket, "out/1", x="in/a"), rec(bucket, "out/2", True, x="in/a"),
               rec(bucket, "out/3", x="in/a")]
    seen: list[int] = []

    def predict(batch: list[dict[str, bytes]]) -> list[bytes]:
        seen.append(len(batch))
        return [b"new"] * len(batch)

    results = refs.process(records, predict)
    assert seen == [2]
    assert [(r.status, r.key, r.bytes) for r in results] == [
        ("skipped", "out/1", 4), ("written", "out/2", 3), ("written", "out/3", 3)]
    assert get(s3, bucket, "out/1") == b"old!"
    assert get(s3, bucket, "out/2") == b"new"
    assert get(s3, bucket, "out/3") == b"new"

    # a rerun finds everything finished and does not call predict at all
    again = refs.process([records[0], records[2]], lambda batch: pytest.fail("called"))
    assert [r.status for r in again] == ["skipped", "skipped"]


def error_doc(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    body = get(s3, bucket, key + ".error.json")
    return None if body is None else json.loads(body)


def test_process_fails_bad_records_alone(s3: Any, settings: Settings, bucket: str) -> None:
    put(s3, bucket, "in/a", b"a")
    refs = S3Refs(s3, settings.with_changes(output_prefixes=("results/",)))
    records = [rec(bucket, "results/ok", x="in/a"), rec(bucket, "elsewhere/x", x="in/a"),
               rec(bucket, "results/../x", x="in/a"), rec(bucket, "results/b", x="/abs")]
    results = refs.process(records, upper)
    assert [r.status for r in results] == ["written", "failed", "failed", "failed"]
    assert results[1].error == "Forbidden" and "elsewhere/x" in (results[1].message or "")
    assert "'..' segment" in (results[2].message or "")
    assert "absolute" in (results[3].message or "")
    assert get(s3, bucket, "results/ok") == b"A"
    # an error document only where the record may write: never outside the prefixes
    assert keys(s3, bucket) == ["in/a", "results/b.error.json", "results/ok"]
    assert error_doc(s3, bucket, "results/b")["error"] == "Forbidden"


def test_process_duplicates_and_clashes(refs: S3Refs, s3: Any, bucket: str) -> None:
    put(s3, bucket, "in/a", b"a")
    put(s3, bucket, "in/b", b"b")
    same = rec(bucket, "out/1", x="in/a")
    clash = [rec(bucket, "out/2", x="in/a"), rec(bucket, "out/2", x="in/b")]
    reader = rec(bucket, "out/3", x="out/1")
    seen: list[int] = []

    def predict(batch: list[dict[str, bytes]]) -> list[bytes]:
        seen.append(len(batch))
        return upper(batch)

    results = refs.process([same, same, *clash, reader], predict)
    assert seen == [1]  # the copy is done once; the clash and the reader never run
    assert [r.status for r in results] == ["written", "written", "failed", "failed", "failed"]
    assert "record[2], record[3] all write" in (results[2].message or "")
    assert "is the output of record[0]" in (results[4].message or "")
    assert get(s3, bucket, "out/1") == b"A"
    assert get(s3, bucket, "out/2") is None


def test_process_rejected_records_get_an_outcome(refs: S3Refs, s3: Any, bucket: str) -> None:
    put(s3, bucket, "in/a", b"a")
    body = "\n".join([json.dumps({"bucket": bucket, "inputs": {"x": "in/a"},
                                  "output_path": "out/1"}), "{}", "not json",
                      json.dumps({"bucket": bucket, "inputs": {"x": "in/a"},
                                  "output_path": "out/2", "overwirte": True})])
    results = refs.process(parse_records(body, "application/jsonlines"), upper)
    assert [r.status for r in results] == ["written", "failed", "failed", "failed"]
    assert "line 2: field 'bucket' is missing" in (results[1].message or "")
    assert "line 3 is not valid JSON" in (results[2].message or "")
    assert results[3].key == "out/2" and "'overwirte'" in (results[3].message or "")
    assert error_doc(s3, bucket, "out/2")["error"] == "BadRequest"
    assert get(s3, bucket, "out/1") == b"A"


def test_process_missing_input_fails_alone(refs: S3Refs, s3: Any, bucket: str) -> None:
    put(s3, bucket, "in/a", b"a")
    records = [rec(bucket, "out/1", x="in/a"), rec(bucket, "out/2", x="in/gone")]
    seen: list[int] = []
    results = refs.process(records, lambda batch: seen.append(len(batch)) or upper(batch))
    assert seen == [1]
    assert [r.status for r in results] == ["written", "failed"]
    assert results[1].error == "InputNotFound"
    assert f"s3://{bucket}/in/gone does not exist" in (results[1].message or "")
    assert results[1].inputs == {"x": "in/gone"}
    assert keys(s3, bucket) == ["in/a", "out/1", "out/2.error.json"]
    doc = error_doc(s3, bucket, "out/2")
    assert doc["inputs"] == {"x": "in/gone"} and doc["error"] == "InputNotFound"

    # the object comes back: a rerun redoes only the failed record and clears its error
    put(s3, bucket, "in/gone", b"g")
    seen.clear()
    again = refs.process(records, lambda batch: seen.append(len(batch)) or upper(batch))
    assert seen == [1]
    assert [r.status for r in again] == ["skipped", "written"]
    assert keys(s3, bucket) == ["in/a", "in/gone", "out/1", "out/2"]


def test_process_oversized_input_fails_alone(s3: Any, settings: Settings,
                                             bucket: str) -> None:
    put(s3, bucket, "in/a", b"a")
    put(s3, bucket, "in/big", b"b" * 100)
    refs = S3Refs(s3, settings.with_changes(max_input_bytes=50))
    results = refs.process([rec(bucket, "out/1", x="in/a"), rec(bucket, "out/2", x="in/big")],
                           upper)
    assert [r.status for r in results] == ["written", "failed"]
    assert results[1].error == "PayloadTooLarge" and "in/big" in (results[1].message or "")


@pytest.mark.parametrize(("predict", "match"), [
    (lambda batch: [b"one"], "1 outputs for 2 records"),
    (lambda batch: [b"a", b"b", b"c"], "3 outputs for 2 records"),
    (lambda batch: b"ab", "return a list"),
    (lambda batch: None, "return a list"),
    (lambda batch: ["a", "b"], "output 0 is str, not bytes"),
])
def test_process_predict_breaking_the_contract_writes_nothing(
        refs: S3Refs, s3: Any, bucket: str, predict: Any, match: str) -> None:
    put(s3, bucket, "in/a", b"a")
    records = [rec(bucket, "out/1", x="in/a"), rec(bucket, "out/2", x="in/a")]
    with pytest.raises(PredictionError, match=match):
        refs.process(records, predict)
    assert keys(s3, bucket) == ["in/a"]


def test_process_predict_raising_fails_only_the_bad_records(refs: S3Refs, s3: Any,
                                                            bucket: str) -> None:
    for name in "abcdef":
        put(s3, bucket, f"in/{name}", name.encode())
    put(s3, bucket, "in/bad", b"bad")
    names = [*"abc", "bad", *"def"]
    records = [rec(bucket, f"out/{n}", x=f"in/{n}") for n in names]
    calls: list[int] = []

    def predict(batch: list[dict[str, bytes]]) -> list[bytes]:
        calls.append(len(batch))
        if any(b["x"] == b"bad" for b in batch):
            raise InvalidInput("input 'x' is bad; expected a letter")
        return upper(batch)

    results = refs.process(records, predict)
    assert [r.status for r in results] == ["written"] * 3 + ["failed"] + ["written"] * 3
    assert results[3].message == f"s3://{bucket}/in/bad: input 'x' is bad; expected a letter"
    assert calls[0] == 7 and len(calls) < 2 * 7  # halves, not one call per record
    assert [get(s3, bucket, f"out/{n}") for n in "abcdef"] == [n.upper().encode()
                                                              for n in "abcdef"]
    # a foreign exception gives no traceback to the client
    [bad] = refs.process([rec(bucket, "out/z", x="in/a")], lambda batch: 1 / 0)
    assert bad.error == "PredictionError"
    assert "predict raised ZeroDivisionError" in (bad.message or "")
    assert "division" not in (bad.message or "")


def test_process_predict_may_return_an_error_per_record(refs: S3Refs, s3: Any,
                                                        bucket: str) -> None:
    put(s3, bucket, "in/a", b"a")
    records = [rec(bucket, "out/1", x="in/a"), rec(bucket, "out/2", x="in/a")]
    results = refs.process(records, lambda batch: [b"ok", InvalidInput("all NaN")])
    assert [(r.status, r.error) for r in results] == [("written", None),
                                                      ("failed", "InvalidInput")]
    assert results[1].message == f"s3://{bucket}/in/a: all NaN"


def test_process_accepts_bytes_like_and_generators(refs: S3Refs, s3: Any, bucket: str) -> None:
    put(s3, bucket, "in/a", b"a")
    records = [rec(bucket, "out/1", x="in/a"), rec(bucket, "out/2", x="in/a")]
    def predict(batch: list[dict[str, bytes]]) -> Any:
        return (bytearray(b"xy") for _ in batch)

    results = refs.process(records, predict)
    assert [r.bytes for r in results] == [2, 2]
    assert get(s3, bucket, "out/2") == b"xy"


def test_fetches_run_concurrently(refs: S3Refs, s3: Any, bucket: str) -> None:
    names = [f"in/{i}" for i in range(4)]
    for name in names:
        put(s3, bucket, name, name.encode())
    barrier = threading.Barrier(4, timeout=10)

    def meet(**_: Any) -> None:  # every GetObject waits until all four are in flight
        barrier.wait()

    s3.meta.events.register("before-call.s3.GetObject", meet)
    try:
        got = refs.fetch(RequestRecord(bucket, {f"i{i}": n for i, n in enumerate(names)}, "o"))
    finally:
        s3.meta.events.unregister("before-call.s3.GetObject", meet)
    assert got == {f"i{i}": n.encode() for i, n in enumerate(names)}


def test_fetch_concurrency_is_bounded(s3: Any, settings: Settings, bucket: str) -> None:
    for i in range(8):
        put(s3, bucket, f"in/{i}", b"x")
    moved = threading.Condition()
    now = peak = started = 0

    def enter(**_: Any) -> None:
        # Each GetObject waits until three are in flight (or every one has started):
        # the peak is then the bound, whatever the machine's load.
        nonlocal now, peak, started
        with moved:
            now += 1
            started += 1
            peak = max(peak, now)
            moved.notify_all()
            assert moved.wait_for(lambda: now >= 3 or started == 8, timeout=30)

    def leave(**_: Any) -> None:
        nonlocal now
        with moved:
            now -= 1
            moved.notify_all()

    s3.meta.events.register("before-call.s3.GetObject", enter)
    s3.meta.events.register("after-call.s3.GetObject", leave)
    refs = S3Refs(s3, settings.with_changes(fetch_concurrency=3))
    try:
        records = [rec(bucket, f"out/{i}", x=f"in/{i}") for i in range(8)]
        refs.process(records, upper)
    finally:
        refs.close()
        s3.meta.events.unregister("before-call.s3.GetObject", enter)
        s3.meta.events.unregister("after-call.s3.GetObject", leave)
    assert peak == 3
    assert [get(s3, bucket, f"out/{i}") for i in range(8)] == [b"X"] * 8


def test_given_executor_is_used(s3: Any, settings: Settings, bucket: str) -> None:
    put(s3, bucket, "in/a", b"a")
    put(s3, bucket, "in/b", b"b")
    threads: set[str] = set()

    def note(**_: Any) -> None:
        threads.add(threading.current_thread().name)

    s3.meta.events.register("before-call.s3.GetObject", note)
    with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="given") as pool:
        got = S3Refs(s3, settings, pool).fetch(rec(bucket, a="in/a", b="in/b"))
    s3.meta.events.unregister("before-call.s3.GetObject", note)
    assert got == {"a": b"a", "b": b"b"}
    assert threads and all(t.startswith("given") for t in threads)


# --- response ------------------------------------------------------------------


def test_response_one_and_many() -> None:
    one = RecordResult("written", "b", "out/1", 3)
    body, ctype = s3refs.response([one])
    assert ctype == "application/json"
    assert json.loads(body) == {"status": "written", "bucket": "b", "key": "out/1", "bytes": 3,
                                "inputs": {}}
    assert not body.endswith(b"\n")
    two = [one, RecordResult("failed", "b", "out/2", 0, {"x": "in/x"}, "InvalidInput", "bad")]
    body, ctype = s3refs.response(two)
    assert ctype == "application/jsonlines"
    assert [json.loads(line) for line in body.split(b"\n")] == [r.to_dict() for r in two]
    assert json.loads(body.split(b"\n")[1]) == {
        "status": "failed", "bucket": "b", "key": "out/2", "inputs": {"x": "in/x"},
        "error": "InvalidInput", "message": "bad"}
    assert s3refs.read_outcomes(body + b"\nnot json\n") == [*two, None]


# --- runtime -------------------------------------------------------------------


def test_runtime_uses_the_environment(aws_env: dict[str, str], s3: Any, bucket: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSERVE_ALLOWED_BUCKETS", bucket)
    monkeypatch.delenv("SMSERVE_OUTPUT_PREFIXES", raising=False)
    s3refs.reset_runtime()
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            found = set(map(id, pool.map(lambda _: s3refs.runtime(), range(16))))
        assert len(found) == 1
        rt = s3refs.runtime()
        assert rt.settings.endpoint_url == aws_env["AWS_ENDPOINT_URL"]
        put(s3, bucket, "in/a", b"abc")
        [result] = rt.process([rec(bucket, "out/a", x="in/a")], upper)
        assert result == RecordResult("written", bucket, "out/a", 3, {"x": "in/a"})
        assert get(s3, bucket, "out/a") == b"ABC"
        with pytest.raises(Forbidden, match="allow-list"):
            rt.validate(rec("not-" + bucket))

        monkeypatch.delenv("SMSERVE_ALLOWED_BUCKETS")
        assert s3refs.runtime() is rt  # read once...
        s3refs.reset_runtime()
        with pytest.raises(Forbidden):  # ...until reset; no allow-list means no bucket
            s3refs.runtime().validate(rec(bucket))
    finally:
        s3refs.reset_runtime()


# --- retries ---------------------------------------------------------------------


class _Answering:
    """A loopback HTTP server answering every request with one status; counts the requests."""

    def __init__(self, status: int, code: str) -> None:
        import http.server

        outer = self
        self.count = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                outer.count += 1
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                        "<Message>no</Message></Error>").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("status", "code", "tries"), [
    (403, "AccessDenied", 1), (404, "NoSuchKey", 1),
    (503, "SlowDown", 5),  # 1 + the factory's 4 retries
])
def test_s3_calls_retry_only_answers_that_can_change(settings: Settings, status: int, code: str,
                                                     tries: int) -> None:
    server = _Answering(status, code)
    try:
        local = settings.with_changes(endpoint_url=server.url, service_endpoints={})
        refs = S3Refs(ClientFactory(local).client("s3"), local)
        with pytest.raises((InputNotFound, StorageError)) as info:
            refs.fetch(rec("bk", "out/1", x="in/a"))  # one GetObject, as botocore retries it
        assert "in/a" in str(info.value)
        assert server.count == tries, f"{status}: {server.count} request(s)"
    finally:
        server.close()
