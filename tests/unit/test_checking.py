"""smserve check in-process: the sample convention, the measurements, and each kind of failure."""

from __future__ import annotations

import io
import json
import os
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving import check as checking
from serving.check import Sample, check, load_sample, sample_objects, stage_sample
from serving.check.report import describe, model_trace
from serving.check.server import log_trace, unstage
from serving.cli import main
from serving.errors import ConfigError, InputNotFound
from serving.modelspec import load_spec
from serving.s3refs import RequestRecord

JSONLINES = "application/jsonlines"
RECORD = {"bucket": "smserve-samples", "inputs": {"video": "samples/clips/clip-000.npy"},
          "output_path": "results/clip_stats/samples/clips/clip-000.json", "overwrite": False}


@pytest.fixture()
def clip_stats(model_copy: Any) -> Path:
    return model_copy("clip_stats")


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def body_model(folder: Path, serving_py: str, content_type: str = "application/x-npy",
               accept: str = "application/json") -> Path:
    """A model whose requests carry their data in the body (no S3)."""
    folder.mkdir(parents=True)
    (folder / "serving.py").write_text(textwrap.dedent(serving_py))
    (folder / "model.toml").write_text(textwrap.dedent(f"""\
        image = "cpu"
        instance_type = "ml.m5.large"
        content_type = "{content_type}"
        accept = "{accept}"
        [inputs]
        x = "$input"
        """))
    (folder / "sample_request.npy").write_bytes(npy(np.arange(6, dtype=np.float32)))
    return folder


# --- the sample convention -----------------------------------------------------------------


def test_load_sample_reads_json_lines_a_json_object_and_a_pretty_array(clip_stats: Path,
                                                                       tmp_path: Path) -> None:
    spec = load_spec(clip_stats)
    sample = load_sample(clip_stats, spec)
    assert sample.records == [RequestRecord.from_dict(RECORD)]
    assert sample.body == (json.dumps(RECORD, separators=(",", ":")) + "\n").encode()
    assert (sample.content_type, sample.accept) == (JSONLINES, JSONLINES)
    assert sample.buckets == ["smserve-samples"]

    pretty = tmp_path / "pretty.json"
    other = {**RECORD, "output_path": "results/x.json"}
    pretty.write_text(json.dumps([RECORD, other], indent=2))
    two = load_sample(clip_stats, spec, pretty)
    assert [r.output_path for r in two.records or []] == [RECORD["output_path"], "results/x.json"]
    assert two.body.decode().count("\n") == 2


def test_load_sample_refuses_a_missing_file_and_a_bad_record(clip_stats: Path,
                                                             tmp_path: Path) -> None:
    spec = load_spec(clip_stats)
    with pytest.raises(ConfigError, match=r"nope\.json does not exist.*--request FILE"):
        load_sample(clip_stats, spec, tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**RECORD, "overwirte": True}))
    with pytest.raises(ConfigError, match=r"bad.json: record\[0\]: unknown field"):
        load_sample(clip_stats, spec, bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match=r"broken\.json is not JSON"):
        load_sample(clip_stats, spec, broken)


def test_a_body_that_is_not_records_is_sent_as_it_is(tmp_path: Path) -> None:
    folder = body_model(tmp_path / "m", "def model_fn(d):\n    return 1\n"
                        "def predict_fn(x, m):\n    return x\n")
    spec = load_spec(folder)
    sample = load_sample(folder, spec, folder / "sample_request.npy")
    assert sample.records is None
    assert sample.body == (folder / "sample_request.npy").read_bytes()


def test_sample_objects_mirror_the_folder_without_hidden_files(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c.npy").write_bytes(b"1")
    (tmp_path / "top.json").write_bytes(b"2")
    (tmp_path / ".hidden").write_bytes(b"3")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.pyc").write_bytes(b"4")
    assert sample_objects(tmp_path) == {"a/b/c.npy": tmp_path / "a" / "b" / "c.npy",
                                        "top.json": tmp_path / "top.json"}
    assert sample_objects(tmp_path / "missing") == {}


def test_stage_sample_uploads_and_clears_old_outputs(clients: Any, clip_stats: Path) -> None:
    s3 = clients.client("s3")
    sample = load_sample(clip_stats, load_spec(clip_stats))
    s3.create_bucket(Bucket="smserve-samples")
    s3.put_object(Bucket="smserve-samples", Key=RECORD["output_path"], Body=b"old")
    s3.put_object(Bucket="smserve-samples", Key=RECORD["output_path"] + ".error.json",
                  Body=b'{"status": "failed"}')
    lines = stage_sample(s3, sample, clip_stats / "sample_data")
    assert lines == ["record 0 input 'video': s3://smserve-samples/samples/clips/clip-000.npy "
                     "(ndarray uint8 (8, 32, 32, 3))"]
    got = s3.get_object(Bucket="smserve-samples", Key="samples/clips/clip-000.npy")
    assert got["ContentType"] == "application/x-npy"
    assert got["Body"].read() == (clip_stats / "sample_data/samples/clips/clip-000.npy"
                                  ).read_bytes()
    listed = s3.list_objects_v2(Bucket="smserve-samples", Prefix="results/clip_stats/")
    assert listed.get("KeyCount", 0) == 0


def test_stage_sample_names_the_missing_file_and_the_fix(clients: Any, clip_stats: Path) -> None:
    sample = load_sample(clip_stats, load_spec(clip_stats))
    with pytest.raises(InputNotFound) as info:
        stage_sample(clients.client("s3"), sample, clip_stats / "elsewhere")
    message = str(info.value)
    assert f"{clip_stats / 'sample_request.json'}: record 0 input 'video'" in message
    assert "predict_fn would fail to fetch it" in message
    assert f"Put the file at {clip_stats / 'elsewhere/samples/clips/clip-000.npy'}" in message
    assert info.value.context["answer"].status == 404


# --- a passing check -----------------------------------------------------------------------


def test_check_runs_the_four_handlers_and_reports_them(stack: Any, clip_stats: Path) -> None:
    before = dict(os.environ)
    report = check(clip_stats, stack=stack)
    assert report.ok, report.render()
    assert report.exit_code == 0
    assert [s.name for s in report.stages] == ["model_fn", "input_fn", "predict_fn", "output_fn",
                                               "decode as accept"]
    model_fn, input_fn, predict_fn, output_fn, _ = report.stages
    assert model_fn.output == "StatsConfig"
    assert input_fn.inputs.startswith("bytes (") and "'application/jsonlines'" in input_fn.inputs
    assert input_fn.output == "list[1] of RequestRecord"
    assert predict_fn.output == "list[1] of RecordResult"
    assert output_fn.output.startswith("(bytes (") and "'application/json')" in output_fn.output
    assert all(s.seconds >= 0 and s.ok for s in report.stages)
    assert predict_fn.peak_bytes is not None and predict_fn.peak_bytes > 24_000  # read the clip
    assert predict_fn.rss_delta is not None and model_fn.gpu_bytes is None
    assert report.answers[0]["status"] == "written"
    assert report.outputs[0].startswith("written s3://smserve-samples/results/clip_stats/")
    assert "application/json: {frames: 8" in report.outputs[0]
    assert dict(os.environ) == before  # the stack's variables were only set during the check
    text = report.render()
    assert "step" in text and "py peak" in text and "RSS" in text and "GPU" in text
    assert text.splitlines()[-1] == (f"ok: {clip_stats} answered its sample request "
                                     "(handlers in-process)")


def test_check_ignores_endpoint_overrides_and_restores_the_environment(
        stack: Any, clip_stats: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.settings import Settings

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("SMSERVE_ALLOWED_BUCKETS", raising=False)
    report = check(clip_stats, stack=stack, settings=Settings.from_environ())
    assert report.ok, report.render()
    assert os.environ["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:9"
    assert "SMSERVE_ALLOWED_BUCKETS" not in os.environ


def test_check_without_s3_sends_the_body_and_starts_no_stack(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import serving.local.stack

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("no stack should start for a body without S3 references")

    monkeypatch.setattr(serving.local.stack, "LocalStack", refuse)
    folder = body_model(tmp_path / "m", """\
        import numpy as np

        def model_fn(model_dir):
            return 2.0

        def predict_fn(data, model):
            return (data * model).tolist()
        """)
    report = check(folder, request=folder / "sample_request.npy")
    assert report.ok, report.render()
    assert report.stages[1].inputs.startswith("bytes (")
    assert report.stages[1].output == "ndarray float32 (6,)"
    assert report.stages[2].output == "list[6] of 0.0"
    assert report.answers == [[0.0, 2.0, 4.0, 6.0, 8.0, 10.0]]


def test_check_a_transform_fn_model(tmp_path: Path) -> None:
    folder = body_model(tmp_path / "m", """\
        def model_fn(model_dir):
            return "ok"

        def transform_fn(model, body, content_type, accept):
            return b'{"n": %d}' % len(body), "application/json"
        """)
    report = check(folder, request=folder / "sample_request.npy")
    assert report.ok, report.render()
    assert [s.name for s in report.stages] == ["model_fn", "transform_fn", "decode as accept"]
    assert report.answers == [{"n": len((folder / "sample_request.npy").read_bytes())}]


# --- failures ----------------------------------------------------------------------------------


def test_a_folder_without_serving_py(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    report = check(tmp_path / "empty")
    failure = report.failure
    assert failure is not None and report.exit_code == 1
    assert failure.handler == "serving.py"
    assert f"no serving.py in {tmp_path / 'empty'}" in failure.message
    assert "model_fn and predict_fn" in failure.message
    assert "smserve new NAME" in failure.fix
    assert failure.status == 500 and '"HandlerError"' in failure.body


def test_a_syntax_error_shows_the_line(clip_stats: Path) -> None:
    edit(clip_stats / "serving.py", "def model_fn(model_dir: str) -> StatsConfig:",
         "def model_fn(model_dir: str) -> StatsConfig")
    failure = check(clip_stats).failure
    assert failure is not None
    assert failure.message.startswith(f"{clip_stats / 'serving.py'}, line ")
    assert "syntax error" in failure.message
    assert "SyntaxError" in failure.trace and "def model_fn" in failure.trace
    assert failure.fix.startswith(f"correct the syntax at {clip_stats / 'serving.py'}, line ")


def test_a_handler_with_the_wrong_signature(clip_stats: Path) -> None:
    edit(clip_stats / "serving.py", "def input_fn(body: bytes, content_type: str)",
         "def input_fn(body: bytes)")
    failure = check(clip_stats).failure
    assert failure is not None
    assert failure.handler == "input_fn"
    assert str(clip_stats / "serving.py") in failure.message
    assert "SageMaker calls it as input_fn(body, content_type)" in failure.message
    assert failure.fix == "define it as input_fn(body, content_type)"


def test_a_model_fn_that_raises(stack: Any, clip_stats: Path) -> None:
    edit(clip_stats / "serving.py", "    return StatsConfig()",
         "    raise FileNotFoundError(model_dir + '/config.json')")
    report = check(clip_stats, stack=stack)
    failure = report.failure
    assert failure is not None and report.exit_code == 1
    assert failure.handler == "model_fn"
    assert [s.name for s in report.stages] == ["model_fn"] and not report.stages[0].ok
    assert f"model_fn in {clip_stats / 'serving.py'} raised FileNotFoundError" in failure.message
    assert 'serving.py", line' in failure.trace and "in model_fn" in failure.trace
    assert "raise FileNotFoundError" in failure.trace
    assert failure.trace.rstrip().endswith("config.json")
    assert "serving/handler.py" not in failure.trace  # only the model's own frames
    assert "model_fn(model_dir)" in failure.fix
    assert "would stop while starting" in failure.sagemaker
    assert failure.status == 500 and '"ModelLoadError"' in failure.body


def test_an_error_deep_in_predict_shows_the_models_frames(stack: Any, clip_stats: Path) -> None:
    edit(clip_stats / "model.py", "    frames, height, width = clip.shape[:3]",
         "    frames, height, width = clip.shape[:3]\n    1 / 0")
    report = check(clip_stats, stack=stack)
    failure = report.failure
    assert failure is not None
    assert failure.handler == "predict_fn"
    assert "ZeroDivisionError" in failure.message
    assert "in clip_stats" in failure.trace and "model.py" in failure.trace
    assert "in compute" in failure.trace
    assert failure.trace.rstrip().endswith("ZeroDivisionError: division by zero")
    assert "s3refs.py" not in failure.trace
    assert failure.status == 500
    # predict_fn answers the record failed; output_fn and decoding still run
    assert [s.ok for s in report.stages] == [True, True, False, True, True]
    assert "record 0 failed" in report.stages[-1].output


def test_a_refused_input_fails_its_record_and_the_check(stack: Any, clip_stats: Path) -> None:
    data = clip_stats / "sample_data" / "samples" / "clips" / "clip-000.npy"
    data.write_bytes(npy(np.zeros((2, 8, 8, 3), np.float32)))
    failure = check(clip_stats, stack=stack).failure
    assert failure is not None
    assert failure.handler == "predict_fn"
    assert failure.status == 422  # the record's error; the request itself answers 200
    assert json.loads(failure.body) == {
        "error": "InvalidInput",
        "message": "record 0: s3://smserve-samples/samples/clips/clip-000.npy: input 'video' "
                   "has dtype float32; expected T x H x W x 3 uint8 with T, H and W >= 1"}
    assert "in check_clip" in failure.trace
    assert "answers 200 with this record failed" in failure.sagemaker


def test_an_output_fn_that_returns_a_dict(stack: Any, clip_stats: Path) -> None:
    edit(clip_stats / "serving.py", "    return s3refs.response(results)",
         "    return {'results': [r.to_dict() for r in results]}")
    report = check(clip_stats, stack=stack)
    failure = report.failure
    assert failure is not None
    assert failure.handler == "output_fn"
    assert f"output_fn in {clip_stats / 'serving.py'} returned dict" in failure.message
    assert "serving.s3refs.response(results)" in failure.fix
    assert failure.status == 500
    assert [s.ok for s in report.stages] == [True, True, True, False]


def test_an_answer_that_does_not_decode_as_accept(stack: Any, clip_stats: Path) -> None:
    edit(clip_stats / "serving.py", "    return s3refs.response(results)",
         "    return b'written, thanks'")
    failure = check(clip_stats, stack=stack).failure
    assert failure is not None
    assert failure.handler == "output_fn"
    assert "do not decode as the declared accept type 'application/jsonlines'" in failure.message


def test_an_answer_per_record_is_required(stack: Any, clip_stats: Path) -> None:
    edit(clip_stats / "serving.py", "    return s3refs.response(results)",
         "    return s3refs.response(list(results) * 2)")
    failure = check(clip_stats, stack=stack).failure
    assert failure is not None
    assert "answered 2 values for 1 records" in failure.message


def test_a_sample_request_naming_missing_objects(stack: Any, clip_stats: Path) -> None:
    edit(clip_stats / "sample_request.json", "samples/clips/clip-000.npy",
         "samples/clips/clip-999.npy")
    report = check(clip_stats, stack=stack)
    failure = report.failure
    assert failure is not None and report.exit_code == 1
    assert failure.handler == "predict_fn"
    assert "sample_request.json: record 0 input 'video' names " \
           "s3://smserve-samples/samples/clips/clip-999.npy" in failure.message
    assert "sample_data/samples/clips/clip-999.npy" in failure.message
    assert failure.status == 404
    assert json.loads(failure.body)["message"] == (
        "input 'video' not found: s3://smserve-samples/samples/clips/clip-999.npy does not exist")
    assert report.stages == []


def test_a_broken_model_toml(clip_stats: Path) -> None:
    edit(clip_stats / "model.toml", 'image = "cpu"', 'image = "tpu"')
    failure = check(clip_stats).failure
    assert failure is not None
    assert failure.handler == "model.toml"
    assert f"{clip_stats / 'model.toml'}: image = \"tpu\"" in failure.message


def test_an_unknown_mode_is_a_config_error(clip_stats: Path) -> None:
    with pytest.raises(ConfigError, match="unknown check mode 'fast'"):
        check(clip_stats, mode="fast")


# --- the command ------------------------------------------------------------------------------


def test_the_command_prints_the_report_and_exits_non_zero_on_failure(
        clip_stats: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(clip_stats)]) == 0
    out = capsys.readouterr().out
    assert "model_fn" in out and "predict_fn" in out
    assert out.rstrip().endswith("answered its sample request (handlers in-process)")

    edit(clip_stats / "serving.py", "    return StatsConfig()", "    raise RuntimeError('no')")
    assert main(["check", str(clip_stats)]) == 1
    out = capsys.readouterr().out
    assert "FAILED in model_fn" in out
    assert "the model's traceback (its own frames, innermost last):" in out
    assert "fix: make model_fn(model_dir)" in out
    assert 'answer: HTTP 500 {"error": "ModelLoadError"' in out


# --- helpers ----------------------------------------------------------------------------------


def test_describe_types_and_shapes() -> None:
    assert describe(np.zeros((2, 3), np.float32)) == "ndarray float32 (2, 3)"
    assert describe(b"abc") == "bytes (3)"
    assert describe("application/json") == "'application/json'"
    assert describe("x" * 100) == "str (100 chars)"
    assert describe([np.zeros(3, np.uint8)] * 2) == "list[2] of ndarray uint8 (3,)"
    assert describe((b"ab", "t/x")) == "(bytes (2), 't/x')"
    assert describe({"a": 1, "b": [1, 2]}) == "{a: 1, b: list[2] of 1}"
    assert describe(Sample) == "type"
    assert describe(None) == "None"


def test_model_trace_keeps_the_models_frames(tmp_path: Path) -> None:
    (tmp_path / "mod.py").write_text("def inner():\n    raise ValueError('deep')\n")
    namespace: dict[str, Any] = {}
    exec(compile((tmp_path / "mod.py").read_text(), str(tmp_path / "mod.py"), "exec"), namespace)
    try:
        try:
            namespace["inner"]()
        except ValueError as err:
            raise RuntimeError("wrapped") from err
    except RuntimeError as outer:
        trace = model_trace(outer, tmp_path)
    assert 'mod.py", line 2, in inner' in trace
    assert trace.rstrip().endswith("ValueError: deep")
    assert "test_checking.py" not in trace
    assert model_trace(RuntimeError("no frames"), tmp_path) == ""


def test_log_trace_reads_the_model_server_log(tmp_path: Path) -> None:
    (tmp_path / "serving.py").write_text("")
    staged = "/tmp/smserve-check-x/model/code"
    lines = [
        "19:57:55.327 [INFO ] WorkerLifeCycle - Traceback (most recent call last):",
        '19:57:55.328 [INFO ] WorkerLifeCycle -   File "/repo/serving/handler.py", line 9, '
        "in invoke",
        "19:57:55.328 [INFO ] WorkerLifeCycle -     return fn()",
        f'19:57:55.328 [INFO ] WorkerLifeCycle -   File "{staged}/serving.py", line 36, '
        "in model_fn",
        "19:57:55.328 [INFO ] WorkerLifeCycle -     raise ValueError(model_dir)",
        f"19:57:55.328 [INFO ] WorkerLifeCycle - ValueError: {staged}/x",
        f'[container 0] 19:57:56.000 [INFO ] W - File "{staged}/serving.py", line 36, in model_fn',
    ]
    assert log_trace(lines, tmp_path) == (
        f'  File "{tmp_path / "serving.py"}", line 36, in model_fn\n'
        "    raise ValueError(model_dir)\n"
        f"ValueError: {tmp_path}/x\n")
    assert log_trace(lines[:3], tmp_path) == ""
    assert unstage(f"output_fn in {staged}/serving.py returned", tmp_path) == \
        f"output_fn in {tmp_path}/serving.py returned"


def test_the_public_names() -> None:
    assert checking.SAMPLE_REQUEST == "sample_request.json"
    assert checking.SAMPLE_DATA == "sample_data"
    assert set(checking.MODES) == {"handlers", "serve", "transform"}
