"""Tests for serving.settings: defaults, parsing, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.errors import ConfigError
from serving.settings import MB, Settings


def test_defaults_from_an_empty_environment() -> None:
    s = Settings.from_environ({})
    assert s.base_dir == Path("/opt/ml")
    assert s.program == "serving.py"
    assert s.port == 8080
    assert s.bind_host == "127.0.0.1"
    assert s.model_server_timeout == 60
    assert s.model_server_workers is None
    assert s.max_payload_mb is None
    assert s.max_payload_bytes == 6_553_500
    assert s.default_accept == "application/json"
    assert s.batch is False
    assert s.allowed_buckets == ()
    assert s.output_prefixes == ("",)
    assert s.fetch_concurrency == 8
    assert s.max_input_bytes == 1024 * MB
    assert s.startup_timeout == 600
    assert s.region == "us-east-1"
    assert s.endpoint_url is None
    assert dict(s.service_endpoints) == {}
    assert s.model_dir == Path("/opt/ml/model")
    assert s.code_dir == Path("/opt/ml/model/code")


def test_empty_values_mean_the_default() -> None:
    env = {key: "" for key in ("SAGEMAKER_BASE_DIR", "SAGEMAKER_PROGRAM",
                               "SAGEMAKER_BIND_TO_PORT", "SAGEMAKER_MODEL_SERVER_WORKERS",
                               "SAGEMAKER_BATCH", "SMSERVE_BIND_HOST", "AWS_REGION",
                               "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")}
    assert Settings.from_environ(env) == Settings.from_environ({})


def test_every_variable_is_read() -> None:
    env = {
        "SAGEMAKER_BASE_DIR": "/tmp/ml",
        "SAGEMAKER_PROGRAM": "inference.py",
        "SAGEMAKER_BIND_TO_PORT": "9090",
        "SAGEMAKER_MODEL_SERVER_TIMEOUT": "120",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "4",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "100",
        "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv",
        "SAGEMAKER_BATCH": "true",
        "SMSERVE_BIND_HOST": "0.0.0.0",
        "SMSERVE_ALLOWED_BUCKETS": " in-bucket , other ,,",
        "SMSERVE_OUTPUT_PREFIXES": "results/,tmp/",
        "SMSERVE_FETCH_CONCURRENCY": "16",
        "SMSERVE_MAX_INPUT_MB": "2",
        "SMSERVE_STARTUP_TIMEOUT": "30",
        "AWS_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
    }
    s = Settings.from_environ(env)
    assert s.base_dir == Path("/tmp/ml")
    assert s.code_dir == Path("/tmp/ml/model/code")
    assert s.program == "inference.py"
    assert s.port == 9090
    assert s.model_server_timeout == 120
    assert s.model_server_workers == 4
    assert s.max_payload_mb == 100
    assert s.max_payload_bytes == 100 * MB
    assert s.default_accept == "text/csv"
    assert s.batch is True
    assert s.bind_host == "0.0.0.0"
    assert s.allowed_buckets == ("in-bucket", "other")
    assert s.output_prefixes == ("results/", "tmp/")
    assert s.fetch_concurrency == 16
    assert s.max_input_bytes == 2 * MB
    assert s.startup_timeout == 30
    assert s.region == "eu-west-1"
    assert s.endpoint_url == "http://127.0.0.1:5000"
    assert s.environ["AWS_REGION"] == "eu-west-1"


def test_region_falls_back_to_aws_default_region() -> None:
    assert Settings.from_environ({"AWS_DEFAULT_REGION": "ap-south-1"}).region == "ap-south-1"
    both = {"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "ap-south-1"}
    assert Settings.from_environ(both).region == "eu-west-1"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("TRUE", True), (" yes ", True), ("on", True),
     ("0", False), ("False", False), ("no", False), ("off", False)],
)
def test_booleans(raw: str, expected: bool) -> None:
    assert Settings.from_environ({"SAGEMAKER_BATCH": raw}).batch is expected


def test_bad_boolean_names_the_variable_and_value() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_environ({"SAGEMAKER_BATCH": "maybe"})
    assert "SAGEMAKER_BATCH='maybe'" in info.value.message
    assert "true or false" in info.value.message
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    "key",
    ["SAGEMAKER_BIND_TO_PORT", "SAGEMAKER_MODEL_SERVER_TIMEOUT",
     "SAGEMAKER_MODEL_SERVER_WORKERS", "SAGEMAKER_MAX_PAYLOAD_IN_MB",
     "SMSERVE_FETCH_CONCURRENCY", "SMSERVE_MAX_INPUT_MB", "SMSERVE_STARTUP_TIMEOUT"],
)
@pytest.mark.parametrize("raw", ["eight", "1.5", "0x10"])
def test_bad_integer_names_the_variable_and_value(key: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_environ({key: raw})
    assert f"{key}={raw!r}" in info.value.message
    assert "whole number" in info.value.message


@pytest.mark.parametrize(
    ("key", "raw", "span"),
    [
        ("SAGEMAKER_BIND_TO_PORT", "0", "1..65535"),
        ("SAGEMAKER_BIND_TO_PORT", "70000", "1..65535"),
        ("SAGEMAKER_MODEL_SERVER_WORKERS", "0", ">= 1"),
        ("SMSERVE_FETCH_CONCURRENCY", "1000", "1..256"),
        ("SMSERVE_STARTUP_TIMEOUT", "-5", ">= 1"),
    ],
)
def test_integer_out_of_range(key: str, raw: str, span: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_environ({key: raw})
    assert f"{key}={raw}" in info.value.message
    assert span in info.value.message


def test_integers_tolerate_surrounding_space() -> None:
    assert Settings.from_environ({"SAGEMAKER_BIND_TO_PORT": " 9000 "}).port == 9000


@pytest.mark.parametrize("program", ["code/serving.py", "../serving.py", ".hidden.py"])
def test_program_must_be_a_file_name(program: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_environ({"SAGEMAKER_PROGRAM": program})
    assert f"SAGEMAKER_PROGRAM={program!r}" in info.value.message


def test_endpoint_for_prefers_the_service_override() -> None:
    s = Settings.from_environ({
        "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:6000",
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": "http://127.0.0.1:7000",
    })
    assert s.endpoint_for("s3") == "http://127.0.0.1:6000"
    assert s.endpoint_for("S3") == "http://127.0.0.1:6000"
    assert s.endpoint_for("sagemaker-runtime") == "http://127.0.0.1:7000"
    assert s.endpoint_for("sqs") == "http://127.0.0.1:5000"


def test_endpoint_for_without_overrides_is_none() -> None:
    s = Settings.from_environ({"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:6000"})
    assert s.endpoint_for("s3") == "http://127.0.0.1:6000"
    assert s.endpoint_for("sqs") is None


def test_from_environ_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", "8123")
    monkeypatch.setenv("SMSERVE_ALLOWED_BUCKETS", "*")
    s = Settings.from_environ()
    assert s.port == 8123
    assert s.allowed_buckets == ("*",)


def test_settings_copy_the_mapping_they_read() -> None:
    env = {"SAGEMAKER_BIND_TO_PORT": "9000"}
    s = Settings.from_environ(env)
    env["SAGEMAKER_BIND_TO_PORT"] = "1"
    assert s.environ["SAGEMAKER_BIND_TO_PORT"] == "9000"


def test_with_changes_returns_a_new_frozen_copy() -> None:
    s = Settings.from_environ({})
    changed = s.with_changes(port=9999, batch=True)
    assert (changed.port, changed.batch) == (9999, True)
    assert (s.port, s.batch) == (8080, False)
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]


def test_environ_does_not_take_part_in_equality() -> None:
    assert Settings.from_environ({"UNRELATED": "1"}) == Settings.from_environ({})


def test_with_environ_reads_again_with_extra_on_top() -> None:
    base = Settings.from_environ({"SMSERVE_ALLOWED_BUCKETS": "a", "AWS_REGION": "eu-west-1"})
    changed = base.with_environ({"SMSERVE_ALLOWED_BUCKETS": "b,c",
                                 "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert changed.allowed_buckets == ("b", "c")
    assert changed.region == "eu-west-1"
    assert changed.endpoint_for("s3") == "http://127.0.0.1:9"
    assert base.allowed_buckets == ("a",)


def test_base_images_and_docker_gpus() -> None:
    s = Settings.from_environ({"SMSERVE_PYTHON_IMAGE": " mirror/python:3.11 ",
                               "SMSERVE_CUDA_IMAGE": "", "SMSERVE_DOCKER_GPUS": "None"})
    assert s.base_images == {"PYTHON_IMAGE": "mirror/python:3.11"}
    assert s.docker_gpus == "none"
    assert Settings.from_environ({}).base_images == {}
    assert Settings.from_environ({}).docker_gpus == "auto"
    with pytest.raises(ConfigError, match="SMSERVE_DOCKER_GPUS"):
        Settings.from_environ({"SMSERVE_DOCKER_GPUS": "some"})
