"""The data plane against the real moto stack and a real HTTP "container" in a thread."""

from __future__ import annotations

import gzip
import json
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from serving.aws import ClientFactory
from serving.errors import ConfigError, TransformError
from serving.ports import free_port
from serving.transform.batching import MB
from serving.transform.dataplane import DataPlane, Progress
from serving.transform.result import JobResult, ObjectResult
from serving.transform.spec import TransformJobSpec
from tests.helpers import QuietHandler, serve_in_thread

# --- the peer: a small container that records what it gets -----------------------------------


class Peer:
    """An HTTP server in a thread: uppercases bodies, 500 on b"boom", 400 on b"bad", 403 on
    b"deny", 404 on b"gone", sleeps on b"slow", serves /execution-parameters when given
    some, else 404."""

    def __init__(self, execution_parameters: dict[str, Any] | None = None,
                 slow_seconds: float = 3.0) -> None:
        self.execution_parameters = execution_parameters
        self.slow_seconds = slow_seconds
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.release = threading.Event()
        peer = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                peer._record(self.command, self.path, dict(self.headers), b"")
                if self.path == "/ping":
                    self._answer(200, b'{"status": "Healthy"}')
                elif self.path == "/execution-parameters" and peer.execution_parameters:
                    self._answer(200, json.dumps(peer.execution_parameters).encode())
                else:
                    self._answer(404, b"not found")

            def do_POST(self) -> None:
                body = self._body()
                peer._record(self.command, self.path, dict(self.headers), body)
                with peer.lock:
                    peer.in_flight += 1
                    peer.max_in_flight = max(peer.max_in_flight, peer.in_flight)
                try:
                    if b"slow" in body:
                        peer.release.wait(peer.slow_seconds)
                    if b"boom" in body:
                        self._answer(500, b'{"error": "PredictionError", "message": '
                                          b'"boom in predict_fn"}')
                    elif b"bad" in body:
                        self._answer(400, b'{"error": "InvalidInput", "message": '
                                          b'"bad record\\n  fix it"}')
                    elif b"deny" in body:
                        self._answer(403, b'{"error": "Forbidden", "message": "bucket '
                                          b"'x' is not on the allow-list; add it to "
                                          b'SMSERVE_ALLOWED_BUCKETS"}')
                    elif b"gone" in body:
                        self._answer(404, b'{"error": "NotFound", "message": "no such key"}')
                    else:
                        self._answer(200, body.upper())
                finally:
                    with peer.lock:
                        peer.in_flight -= 1

        self.server, self.thread = serve_in_thread(Handler, free_port())

    def _record(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        with self.lock:
            self.requests.append({"method": method, "path": path, "headers": headers,
                                  "body": body})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def invocations(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == "/invocations"]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def peer() -> Iterator[Peer]:
    p = Peer()
    yield p
    p.close()


# --- helpers ---------------------------------------------------------------------------------


def put(clients: ClientFactory, bucket: str, objects: dict[str, bytes]) -> None:
    s3 = clients.client("s3")
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)


def outputs(clients: ClientFactory, bucket: str, prefix: str = "out/") -> dict[str, bytes]:
    s3 = clients.client("s3")
    found = {}
    for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        found[item["Key"]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def job(bucket: str, input_prefix: str = "data/", **kw: Any) -> TransformJobSpec:
    options: dict[str, Any] = {"content_type": "text/plain", "accept": "text/plain",
                               "max_concurrent": 2}
    options.update(kw)
    return TransformJobSpec.simple("test-job", "peer-model", f"s3://{bucket}/{input_prefix}",
                                   f"s3://{bucket}/out", **options)


def run(clients: ClientFactory, urls: list[str], spec: TransformJobSpec,
        **kw: Any) -> JobResult:
    return DataPlane(clients.client("s3"), urls, spec, backoff=0, sleep=lambda _s: None,
                     **kw).run()


# --- listing and output keys -----------------------------------------------------------------


def test_prefix_is_a_recursive_string_prefix_and_keys_map_to_out(
        clients: ClientFactory, bucket: str, peer: Peer) -> None:
    put(clients, bucket, {"data/train/a.txt": b"a1\na2\n", "data/train/sub/b.txt": b"b1\n",
                          "data/train-extra.csv": b"x,y\n", "data/other.csv": b"no\n"})
    result = run(clients, [peer.url], job(bucket, "data/train"))
    assert result.ok
    assert outputs(clients, bucket) == {"out/a.txt.out": b"A1\nA2\n",
                                        "out/sub/b.txt.out": b"B1\n",
                                        "out/-extra.csv.out": b"X,Y\n"}
    assert len(result.objects) == 3 and result.records == 4


def test_relative_to_folder_option(clients: ClientFactory, bucket: str, peer: Peer) -> None:
    put(clients, bucket, {"data/train-extra.csv": b"x\n"})
    run(clients, [peer.url], job(bucket, "data/train"), relative_to="folder")
    assert list(outputs(clients, bucket)) == ["out/train-extra.csv.out"]


def test_empty_prefix_fails_the_job(clients: ClientFactory, bucket: str, peer: Peer) -> None:
    with pytest.raises(TransformError, match=rf"no objects under s3://{bucket}/nothing/; "
                                             "upload input or fix S3Uri"):
        run(clients, [peer.url], job(bucket, "nothing/"))
    assert peer.invocations == []


def test_manifest_file(clients: ClientFactory, bucket: str, peer: Peer) -> None:
    put(clients, bucket, {"in/a.txt": b"a\n", "in/deep/b.txt": b"b\n", "in/c.txt": b"not me\n",
                          "manifest.json": json.dumps([{"prefix": f"s3://{bucket}/in/"},
                                                       "a.txt", "deep/b.txt"]).encode()})
    result = run(clients, [peer.url], job(bucket, "manifest.json", data_type="ManifestFile"))
    assert result.ok
    assert outputs(clients, bucket) == {"out/a.txt.out": b"A\n", "out/deep/b.txt.out": b"B\n"}


def test_bad_manifest_says_the_expected_shape(clients: ClientFactory, bucket: str,
                                              peer: Peer) -> None:
    put(clients, bucket, {"manifest.json": b'{"prefix": "s3://x/"}'})
    with pytest.raises(TransformError, match="must be a JSON array"):
        run(clients, [peer.url], job(bucket, "manifest.json", data_type="ManifestFile"))


# --- requests: headers, batching, order, assembly --------------------------------------------


def test_multi_record_batches_keep_order_and_line_assembly(
        clients: ClientFactory, bucket: str, peer: Peer) -> None:
    lines = [bytes([97 + i]) * 400_000 for i in range(5)]  # two fit in 1 MB with the joiner
    put(clients, bucket, {"data/big.txt": b"\n".join(lines) + b"\n"})
    result = run(clients, [peer.url], job(bucket, max_payload_mb=1, max_concurrent=3))
    bodies = sorted(r["body"] for r in peer.invocations)
    assert bodies == sorted([lines[0] + b"\n" + lines[1], lines[2] + b"\n" + lines[3],
                             lines[4]])
    assert all(len(b) <= MB for b in bodies)
    out = outputs(clients, bucket)["out/big.txt.out"]
    assert out == b"".join(x.upper() + b"\n" for x in (lines[0] + b"\n" + lines[1],
                                                       lines[2] + b"\n" + lines[3], lines[4]))
    assert result.objects[0].requests == 3 and result.records == 5


def test_single_record_headers_and_assemble_none(clients: ClientFactory, bucket: str,
                                                 peer: Peer) -> None:
    put(clients, bucket, {"data/a.csv": b"1,2\r\n3,\xff\n"})
    spec = job(bucket, batch_strategy="SingleRecord", assemble_with="None",
               content_type="text/csv", accept="application/json")
    run(clients, [peer.url], spec)
    calls = peer.invocations
    assert sorted(c["body"] for c in calls) == [b"1,2\r", b"3,\xff"]
    assert all(c["headers"]["Content-Type"] == "text/csv" for c in calls)
    assert all(c["headers"]["Accept"] == "application/json" for c in calls)
    assert outputs(clients, bucket)["out/a.csv.out"] == b"1,2\r3,\xff"


def test_no_content_type_header_when_the_job_has_none(clients: ClientFactory, bucket: str,
                                                      peer: Peer) -> None:
    put(clients, bucket, {"data/a.bin": b"\x00\x01"})
    run(clients, [peer.url], job(bucket, split_type="None", batch_strategy=None,
                                 content_type=None, accept=None, assemble_with="None"))
    (call,) = peer.invocations
    assert "Content-Type" not in call["headers"] and "Accept" not in call["headers"]
    assert call["body"] == b"\x00\x01"


def test_execution_parameters_are_asked_once_and_used(clients: ClientFactory,
                                                      bucket: str) -> None:
    peer = Peer({"BatchStrategy": "SINGLE_RECORD", "MaxConcurrentTransforms": 3,
                 "MaxPayloadInMB": 1})
    try:
        put(clients, bucket, {"data/a.txt": b"1\n2\n3\n", "data/b.txt": b"4\n"})
        spec = job(bucket, batch_strategy=None, max_payload_mb=None, max_concurrent=None)
        result = run(clients, [peer.url], spec)
        asked = [r for r in peer.requests if r["path"] == "/execution-parameters"]
        assert len(asked) == 1 and peer.requests[0]["path"] == "/execution-parameters"
        assert len(peer.invocations) == 4  # SingleRecord
        assert result.params["MaxConcurrentTransforms"] == 3
        assert result.params["sources"]["BatchStrategy"] == "execution-parameters"
    finally:
        peer.close()


def test_execution_parameters_404_means_defaults(clients: ClientFactory, bucket: str,
                                                 peer: Peer) -> None:
    put(clients, bucket, {"data/a.txt": b"1\n2\n3\n"})
    lines: list[str] = []
    result = run(clients, [peer.url], job(bucket, batch_strategy=None, max_payload_mb=None,
                                          max_concurrent=None), log=lines.append)
    assert len(peer.invocations) == 1  # MultiRecord
    assert result.params["MaxPayloadInMB"] == 6 and result.params["MaxConcurrentTransforms"] == 1
    assert any("404; using defaults" in line for line in lines)


def test_concurrency_per_container_is_bounded(clients: ClientFactory, bucket: str) -> None:
    peer = Peer(slow_seconds=0.3)
    try:
        put(clients, bucket, {f"data/{i}.txt": b"slow\n" for i in range(6)})
        run(clients, [peer.url], job(bucket, max_concurrent=3))
        assert 2 <= peer.max_in_flight <= 3
    finally:
        peer.close()


def test_objects_are_spread_over_containers(clients: ClientFactory, bucket: str) -> None:
    peers = [Peer(), Peer()]
    try:
        put(clients, bucket, {f"data/{i}.txt": b"x\n" for i in range(4)})
        result = run(clients, [p.url for p in peers], job(bucket))
        assert [len(p.invocations) for p in peers] == [2, 2]
        assert sorted(o.container for o in result.objects) == [0, 0, 1, 1]
    finally:
        for p in peers:
            p.close()


def test_unlimited_payload_is_sent_chunked(clients: ClientFactory, bucket: str,
                                           peer: Peer) -> None:
    put(clients, bucket, {"data/a.txt": b"a\nb\n"})
    run(clients, [peer.url], job(bucket, max_payload_mb=0))
    (call,) = peer.invocations
    assert call["headers"].get("Transfer-Encoding") == "chunked"
    assert call["body"] == b"a\nb"
    assert outputs(clients, bucket)["out/a.txt.out"] == b"A\nB\n"


# --- compression and binary splits -----------------------------------------------------------


def test_gzip_input(clients: ClientFactory, bucket: str, peer: Peer) -> None:
    put(clients, bucket, {"data/a.txt.gz": gzip.compress(b"x\ny\n")})
    result = run(clients, [peer.url], job(bucket, compression="Gzip"))
    assert outputs(clients, bucket) == {"out/a.txt.gz.out": b"X\nY\n"}
    assert result.objects[0].bytes_in == len(gzip.compress(b"x\ny\n"))


def test_recordio_single_record_drops_padding(clients: ClientFactory, bucket: str,
                                              peer: Peer) -> None:
    def frame(data: bytes) -> bytes:
        return struct.pack("<II", 0xCED7230A, len(data)) + data + b"\0" * (-len(data) % 4)

    put(clients, bucket, {"data/a.rec": frame(b"abc") + frame(b"defgh")})
    run(clients, [peer.url], job(bucket, split_type="RecordIO", batch_strategy="SingleRecord",
                                 assemble_with="None"))
    assert sorted(c["body"] for c in peer.invocations) == [frame(b"abc")[:-1],
                                                           frame(b"defgh")[:-3]]


def test_object_that_does_not_fit_its_split_type_fails_alone(
        clients: ClientFactory, bucket: str, peer: Peer) -> None:
    good = struct.pack("<II", 0xCED7230A, 4) + b"fine"
    put(clients, bucket, {"data/a.rec": b"this is not recordio", "data/b.rec": good})
    result = run(clients, [peer.url], job(bucket, split_type="RecordIO",
                                          batch_strategy="SingleRecord"))
    assert [o.key for o in result.failed] == ["data/a.rec"]
    assert "not valid RecordIO data" in (result.failed[0].error or "")


# --- failures: retries, timeouts, payload limit, atomicity, FailureReason --------------------


def test_server_error_is_retried_then_fails_only_its_object(
        clients: ClientFactory, bucket: str, peer: Peer) -> None:
    put(clients, bucket, {"data/a.txt": b"ok\nboom\nok2\n", "data/b.txt": b"fine\n"})
    spec = job(bucket, batch_strategy="SingleRecord", invocations_max_retries=2,
               max_concurrent=1)
    result = run(clients, [peer.url], spec)
    assert sum(c["body"] == b"boom" for c in peer.invocations) == 3  # 1 try + 2 retries
    assert outputs(clients, bucket) == {"out/b.txt.out": b"FINE\n"}  # no partial a.txt.out
    (failed,) = result.failed
    assert failed.error == ("ServerError: 500 (record 1, 3 tries): PredictionError: "
                            "boom in predict_fn")
    reason = result.failure_reason()
    assert reason.startswith(f"1 of 2 input object(s) failed: {bucket}/data/a.txt: "
                             "ServerError: 500")


def test_client_error_message_is_trimmed_to_one_line(clients: ClientFactory, bucket: str,
                                                     peer: Peer) -> None:
    put(clients, bucket, {"data/a.txt": b"bad\n"})
    result = run(clients, [peer.url], job(bucket, invocations_max_retries=0))
    assert result.failure_reason() == (
        f"1 of 1 input object(s) failed: {bucket}/data/a.txt: ClientError: 400 "
        "(record 0, 1 tries): InvalidInput: bad record fix it")
    assert len(peer.invocations) == 1


@pytest.mark.parametrize(("body", "status"), [(b"deny\n", 403), (b"gone\n", 404)])
def test_a_403_or_404_fails_at_the_first_try(clients: ClientFactory, bucket: str, peer: Peer,
                                             body: bytes, status: int) -> None:
    put(clients, bucket, {"data/a.txt": body, "data/b.txt": b"fine\n"})
    result = run(clients, [peer.url], job(bucket, invocations_max_retries=3))
    assert sum(body.strip() in c["body"] for c in peer.invocations) == 1  # no retry
    assert outputs(clients, bucket) == {"out/b.txt.out": b"FINE\n"}
    (failed,) = result.failed
    assert (failed.error or "").startswith(f"ClientError: {status} (record 0, 1 tries): ")


def test_a_403_says_what_the_allow_list_is_and_how_to_set_it(
        clients: ClientFactory, bucket: str, peer: Peer) -> None:
    put(clients, bucket, {"data/a.txt": b"deny\n"})
    reason = run(clients, [peer.url], job(bucket)).failure_reason()
    assert "Forbidden: bucket 'x' is not on the allow-list" in reason
    assert "a 403 from the model" in reason
    assert "SMSERVE_ALLOWED_BUCKETS" in reason and "smserve local up" in reason


def test_timeout_is_retried_then_fails(clients: ClientFactory, bucket: str, peer: Peer) -> None:
    put(clients, bucket, {"data/a.txt": b"slow\n"})
    result = run(clients, [peer.url], job(bucket, invocations_timeout=1,
                                          invocations_max_retries=1))
    assert len(peer.invocations) == 2
    assert (result.failed[0].error or "").startswith("Timeout (record 0, 2 tries): no answer "
                                                     "within 1 s")
    assert outputs(clients, bucket) == {}


def test_connection_refused_fails_objects(clients: ClientFactory, bucket: str) -> None:
    put(clients, bucket, {"data/a.txt": b"x\n"})
    result = run(clients, [f"http://127.0.0.1:{free_port()}"],
                 job(bucket, invocations_max_retries=1))
    assert (result.failed[0].error or "").startswith("ConnectionError (record 0, 2 tries)")


def test_oversize_record_fails_only_its_object(clients: ClientFactory, bucket: str,
                                               peer: Peer) -> None:
    put(clients, bucket, {"data/big.txt": b"small\n" + b"x" * (MB + 1) + b"\nsmall\n",
                          "data/ok.txt": b"y\n"})
    result = run(clients, [peer.url], job(bucket, max_payload_mb=1))
    assert list(outputs(clients, bucket)) == ["out/ok.txt.out"]
    (failed,) = result.failed
    assert failed.key == "data/big.txt"
    assert failed.error == ("PayloadTooLarge: record 1 is 1048577 bytes, over MaxPayloadInMB=1 "
                            "(1048576 bytes); raise MaxPayloadInMB (at most 100, 0 = no limit) "
                            "or make the record smaller")
    assert all(b"xxxx" not in c["body"] for c in peer.invocations)


def test_missing_manifest_entry_fails_its_object(clients: ClientFactory, bucket: str,
                                                 peer: Peer) -> None:
    put(clients, bucket, {"in/a.txt": b"a\n", "m.json": json.dumps(
        [{"prefix": f"s3://{bucket}/in/"}, "a.txt", "gone.txt"]).encode()})
    result = run(clients, [peer.url], job(bucket, "m.json", data_type="ManifestFile"))
    assert [o.key for o in result.failed] == ["in/gone.txt"]
    assert result.failed[0].error == "S3Error: cannot read the object: NoSuchKey"


def test_failure_reason_stays_within_1024_and_names_each_key() -> None:
    objects = tuple(ObjectResult("bkt", f"data/part-{i:03d}.jsonl", f"s3://bkt/out/{i}", False,
                                 error="ServerError: 500 (record 0, 4 tries): " + "x" * 300)
                    for i in range(12))
    reason = JobResult("j", objects).failure_reason()
    assert len(reason) <= 1024
    assert all(f"bkt/data/part-{i:03d}.jsonl" in reason for i in range(12))
    many = tuple(ObjectResult("bkt", f"data/part-{i:04d}.jsonl", "", False, error="e")
                 for i in range(200))
    reason = JobResult("j", many).failure_reason()
    assert len(reason) <= 1024 and reason.endswith("more; see the job log")
    assert reason.startswith("200 of 200 input object(s) failed: bkt/data/part-0000.jsonl")


def test_kms_key_is_passed_to_the_output_write(clients: ClientFactory, bucket: str,
                                               peer: Peer) -> None:
    put(clients, bucket, {"data/a.txt": b"x\n"})
    run(clients, [peer.url], job(bucket, kms_key_id="arn:aws:kms:us-east-1:123456789012:key/k1"))
    head = clients.client("s3").head_object(Bucket=bucket, Key="out/a.txt.out")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith("key/k1")


def test_progress_and_log(clients: ClientFactory, bucket: str, peer: Peer) -> None:
    put(clients, bucket, {"data/a.txt": b"1\n2\n3\n", "data/b.txt": b"4\n"})
    seen: list[Progress] = []
    lines: list[str] = []
    run(clients, [peer.url], job(bucket, batch_strategy="SingleRecord"), progress=seen.append,
        log=lines.append)
    assert seen[-1] == Progress(records_done=4, records_total=4, objects_done=2,
                                objects_total=2)
    assert any("2 input object(s)" in line for line in lines)


def test_data_processing_on_an_unsupported_content_type_is_refused(bucket: str) -> None:
    req = job(bucket).to_request()  # text/plain
    req["DataProcessing"] = {"JoinSource": "Input"}
    with pytest.raises(ConfigError, match=r"TransformInput.ContentType='text/plain': "
                                          r"DataProcessing works only with text/csv"):
        TransformJobSpec.from_request(req)


# --- reference behaviours checked once more, end to end ---------------------------------------


def test_mini_batches_never_span_two_objects(clients: ClientFactory, bucket: str,
                                            peer: Peer) -> None:
    put(clients, bucket, {"data/a.txt": b"a\nb\n", "data/b.txt": b"c\n"})
    run(clients, [peer.url], job(bucket, max_concurrent=1))
    assert sorted(c["body"] for c in peer.invocations) == [b"a\nb", b"c"]


def test_tfrecord_multi_record_keeps_framing_and_a_corrupt_object_fails_alone(
        clients: ClientFactory, bucket: str, peer: Peer) -> None:
    from serving.transform._crc32c import masked_crc32c

    def frame(data: bytes) -> bytes:
        head = struct.pack("<Q", len(data))
        return (head + struct.pack("<I", masked_crc32c(head)) + data
                + struct.pack("<I", masked_crc32c(data)))

    good = frame(b"one") + frame(b"two")
    put(clients, bucket, {"data/a.tfrecord": good, "data/b.tfrecord": good[:-1] + b"\0"})
    result = run(clients, [peer.url], job(bucket, split_type="TFRecord", assemble_with="None"))
    assert [c["body"] for c in peer.invocations] == [good]
    assert outputs(clients, bucket) == {"out/a.tfrecord.out": good.upper()}
    assert [o.key for o in result.failed] == ["data/b.tfrecord"]
    assert "CRC does not match" in (result.failed[0].error or "")


def test_the_log_names_key_record_status_and_message(clients: ClientFactory, bucket: str,
                                                     peer: Peer) -> None:
    put(clients, bucket, {"data/a.txt": b"ok\nboom\n"})
    lines: list[str] = []
    run(clients, [peer.url], job(bucket, batch_strategy="SingleRecord", max_concurrent=1,
                                 invocations_max_retries=1), log=lines.append)
    assert (f"s3://{bucket}/data/a.txt: record 1 (request 2 of 2): ServerError: 500 after 2 "
            "tries: PredictionError: boom in predict_fn") in lines
    assert any(line.startswith(f"s3://{bucket}/data/a.txt: failed: ServerError: 500")
               for line in lines)


def test_stop_fails_the_objects_not_finished_and_writes_none_of_them(
        clients: ClientFactory, bucket: str, peer: Peer) -> None:
    put(clients, bucket, {f"data/{i}.txt": b"slow\n" for i in range(3)})
    plane = DataPlane(clients.client("s3"), [peer.url], job(bucket, max_concurrent=1),
                      backoff=0, sleep=lambda _s: None)
    done: list[JobResult] = []
    worker = threading.Thread(target=lambda: done.append(plane.run()))
    worker.start()
    try:
        for _ in range(200):
            if peer.invocations:
                break
            threading.Event().wait(0.02)
        plane.stop()
    finally:
        peer.release.set()
        worker.join(30)
    (result,) = done
    assert not result.ok
    stopped = [o for o in result.failed if (o.error or "").startswith("Stopped")]
    assert len(stopped) == 2 and len(peer.invocations) == 1
    assert set(outputs(clients, bucket)) == {o.output.split("/", 3)[3] for o in result.succeeded}
