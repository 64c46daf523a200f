"""run_transform() and predict(): real processes, the real moto stack, outputs in S3."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from serving.aws import ClientFactory
from serving.errors import ConfigError, ServerStartError, TransformError
from serving.runners.process import ProcessRunner
from serving.transform.job import run_transform
from serving.transform.predict import decode_output, predict
from serving.transform.spec import TransformJobSpec
from serving.transform.transfer import DataTransfer

# A stand-in for `smserve serve`: refuses to start without model/code/serving.py, answers one
# JSON object per JSON line ({"echo": record, "env": MODEL_MODE}), 400 for "fail" records.
SERVER = textwrap.dedent('''
    import json, os, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    base = os.environ["SAGEMAKER_BASE_DIR"]
    with open(os.environ["FAKE_PIDS"], "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    if not os.path.isfile(os.path.join(base, "model", "code", "serving.py")):
        print("no model/code/serving.py", file=sys.stderr)
        sys.exit(2)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _answer(self, status, body):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._answer(200 if self.path == "/ping" else 404, b"")

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            out = []
            for line in body.split(b"\\n"):
                record = json.loads(line)
                if record.get("die"):
                    print("dying on purpose", flush=True)
                    os._exit(7)
                if record.get("fail"):
                    self._answer(400, b'{"error": "InvalidInput", "message": "fail=true"}')
                    return
                out.append(json.dumps({"echo": record,
                                       "mode": os.environ.get("MODEL_MODE")}))
            self._answer(200, "\\n".join(out).encode())

    ThreadingHTTPServer(("127.0.0.1", int(os.environ["SAGEMAKER_BIND_TO_PORT"])),
                        Handler).serve_forever()
''')


@pytest.fixture()
def pids(tmp_path: Path) -> Path:
    return tmp_path / "pids"


@pytest.fixture()
def runner(tmp_path: Path, pids: Path) -> ProcessRunner:
    script = tmp_path / "fake_server.py"
    script.write_text(SERVER)
    return ProcessRunner([sys.executable, str(script)], env={"FAKE_PIDS": str(pids)},
                         startup_timeout=30, stop_grace=2)


@pytest.fixture()
def source_model(tmp_path: Path) -> Path:
    folder = tmp_path / "models" / "echo_model"
    folder.mkdir(parents=True)
    (folder / "serving.py").write_text("def model_fn(model_dir):\n    return None\n")
    (folder / "weights.npz").write_bytes(b"w")
    return folder


def all_gone(pids: Path) -> bool:
    for pid in map(int, pids.read_text().split()):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] != "Z":
                return False
    return True


def test_run_transform_writes_outputs_and_stops_containers(
        clients: ClientFactory, bucket: str, runner: ProcessRunner, pids: Path,
        source_model: Path) -> None:
    s3 = clients.client("s3")
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"in/{i}.jsonl", Body=b'{"i": %d}\n{"j": 1}\n' % i)
    spec = TransformJobSpec.simple("job-a", "echo", f"s3://{bucket}/in/", f"s3://{bucket}/out/",
                                   instance_count=2, environment={"MODEL_MODE": "job"})
    lines: list[str] = []
    result = run_transform(spec, source_model, clients, runner, log=lines.append,
                           model_environment={"MODEL_MODE": "model"})
    assert result.ok and len(result.objects) == 3
    assert {o.container for o in result.objects} == {0, 1}
    out = DataTransfer(s3, bucket).outputs(f"s3://{bucket}/out/")
    assert out["0.jsonl.out"] == (b'{"echo": {"i": 0}, "mode": "job"}\n'
                                  b'{"echo": {"j": 1}, "mode": "job"}\n')
    assert len(pids.read_text().split()) == 2 and all_gone(pids)
    assert any("3 input object(s)" in line for line in lines)


def test_failed_objects_raise_after_the_good_ones_are_written(
        clients: ClientFactory, bucket: str, runner: ProcessRunner, pids: Path,
        source_model: Path) -> None:
    s3 = clients.client("s3")
    s3.put_object(Bucket=bucket, Key="in/good.jsonl", Body=b'{"a": 1}\n')
    s3.put_object(Bucket=bucket, Key="in/bad.jsonl", Body=b'{"a": 1}\n{"fail": true}\n')
    spec = TransformJobSpec.simple("job-b", "echo", f"s3://{bucket}/in/", f"s3://{bucket}/out/",
                                   invocations_max_retries=0)
    with pytest.raises(TransformError) as info:
        run_transform(spec, source_model, clients, runner)
    assert str(info.value) == (f"transform job job-b failed: 1 of 2 input object(s) failed: "
                               f"{bucket}/in/bad.jsonl: ClientError: 400 (records 0-1, 1 tries)"
                               ": InvalidInput: fail=true")
    result = info.value.context["result"]
    assert [o.key for o in result.succeeded] == ["in/good.jsonl"]
    assert list(DataTransfer(s3, bucket).outputs(f"s3://{bucket}/out/")) == ["good.jsonl.out"]
    assert all_gone(pids)


def test_a_container_that_dies_mid_job_is_named_with_its_log(
        clients: ClientFactory, bucket: str, runner: ProcessRunner, pids: Path,
        source_model: Path) -> None:
    clients.client("s3").put_object(Bucket=bucket, Key="in/a.jsonl", Body=b'{"die": true}\n')
    spec = TransformJobSpec.simple("job-e", "echo", f"s3://{bucket}/in/", f"s3://{bucket}/out/",
                                   invocations_max_retries=1)
    with pytest.raises(TransformError) as info:
        run_transform(spec, source_model, clients, runner)
    message = str(info.value)
    assert f"{bucket}/in/a.jsonl: ConnectionError (record 0, 2 tries)" in message
    assert "container 0 exited with code 7 during the job" in message
    assert "dying on purpose" in message
    assert all_gone(pids)


def test_model_archive_is_extracted(clients: ClientFactory, bucket: str, runner: ProcessRunner,
                                    source_model: Path, tmp_path: Path) -> None:
    from serving.package import build_archive

    archive = build_archive(source_model, tmp_path / "model.tar.gz")
    s3 = clients.client("s3")
    s3.put_object(Bucket=bucket, Key="in/x.jsonl", Body=b'{"a": 1}\n')
    spec = TransformJobSpec.simple("job-c", "echo", f"s3://{bucket}/in/", f"s3://{bucket}/out/")
    assert run_transform(spec, archive, clients, runner).ok


def test_a_model_that_does_not_start_leaves_nothing_behind(
        clients: ClientFactory, bucket: str, runner: ProcessRunner, pids: Path,
        tmp_path: Path) -> None:
    no_code = tmp_path / "extracted"
    (no_code / "code").mkdir(parents=True)  # an extracted model without serving.py
    clients.client("s3").put_object(Bucket=bucket, Key="in/a.jsonl", Body=b"{}\n")
    spec = TransformJobSpec.simple("job-d", "echo", f"s3://{bucket}/in/", f"s3://{bucket}/out/")
    with pytest.raises(ServerStartError, match=r"no model/code/serving\.py"):
        run_transform(spec, no_code, clients, runner)
    assert all_gone(pids)
    with pytest.raises(ConfigError, match="does not exist"):
        run_transform(spec, tmp_path / "missing", clients, runner)


def test_predict_returns_decoded_answers_in_request_order(
        clients: ClientFactory, bucket: str, runner: ProcessRunner, source_model: Path) -> None:
    requests = [{"bucket": bucket, "inputs": {"x": f"k/{i}"}, "output_path": f"o/{i}"}
                for i in range(25)]
    answers = predict(source_model, requests, clients, bucket, runner=runner)
    assert [a["echo"] for a in answers] == requests
    again = predict(source_model, requests, clients, bucket, runner=runner)
    assert again == answers  # same requests, same job name and keys: it just runs again
    keys = [o["Key"] for o in clients.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    assert len(keys) == 2 and all(k.startswith("smserve-work/predict-") for k in keys)


def test_an_empty_input_is_reported_before_any_container_starts(
        clients: ClientFactory, bucket: str, runner: ProcessRunner, pids: Path,
        source_model: Path) -> None:
    spec = TransformJobSpec.simple("job-e", "echo", f"s3://{bucket}/none/",
                                   f"s3://{bucket}/out/")
    with pytest.raises(TransformError, match=f"no objects under s3://{bucket}/none/"):
        run_transform(spec, source_model, clients, runner)
    assert not pids.exists() or not pids.read_text().strip()


def test_decode_output_checks_the_count() -> None:
    assert decode_output(b'{"a": 1}\n\n{"b": 2}\n', 2) == [{"a": 1}, {"b": 2}]
    with pytest.raises(TransformError, match="1 answers for 2 request records"):
        decode_output(b'{"a": 1}\n', 2)
    with pytest.raises(TransformError, match="line 1 is not JSON"):
        decode_output(b"nope\n", 1)


def test_data_transfer_uploads_and_downloads(clients: ClientFactory, bucket: str,
                                             tmp_path: Path) -> None:
    s3 = clients.client("s3")
    transfer = DataTransfer(s3, bucket, "work")
    uri = transfer.upload_records([{"a": 1}, {"b": 2}], "req.jsonl")
    assert uri == f"s3://{bucket}/work/req.jsonl"
    assert s3.get_object(Bucket=bucket, Key="work/req.jsonl")["Body"].read() == (
        b'{"a":1}\n{"b":2}\n')
    (tmp_path / "f" / "sub").mkdir(parents=True)
    (tmp_path / "f" / "sub" / "c.bin").write_bytes(b"c")
    assert transfer.upload_files([tmp_path / "f" / "sub" / "c.bin"], "files",
                                 root=tmp_path / "f") == [f"s3://{bucket}/work/files/sub/c.bin"]
    written = transfer.download(f"s3://{bucket}/work", tmp_path / "dl")
    assert sorted(p.relative_to(tmp_path / "dl").as_posix() for p in written) == [
        "files/sub/c.bin", "req.jsonl"]
