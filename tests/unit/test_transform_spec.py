"""The job spec (validation, round trip) and the batch-settings precedence rule."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from serving.errors import ConfigError
from serving.transform.params import container_environment, parse_execution_parameters, resolve
from serving.transform.spec import TransformJobSpec, parse_s3_uri


def request(**changes: Any) -> dict[str, Any]:
    req: dict[str, Any] = {
        "TransformJobName": "job-1",
        "ModelName": "scene-classifier",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                            "S3Uri": "s3://in-bucket/data/train"}},
            "ContentType": "application/jsonlines",
            "CompressionType": "Gzip",
            "SplitType": "Line",
        },
        "TransformOutput": {"S3OutputPath": "s3://out-bucket/results/",
                            "Accept": "application/jsonlines", "AssembleWith": "Line",
                            "KmsKeyId": "alias/my-key"},
        "TransformResources": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 2},
        "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": 10,
        "MaxConcurrentTransforms": 4,
        "ModelClientConfig": {"InvocationsTimeoutInSeconds": 30, "InvocationsMaxRetries": 1},
        "Environment": {"MODEL_MODE": "fast"},
        "Tags": [{"Key": "team", "Value": "vision"}],
    }
    req.update(changes)
    return req


def test_from_request_reads_every_field_and_round_trips() -> None:
    req = request()
    spec = TransformJobSpec.from_request(req)
    assert (spec.name, spec.model_name, spec.input_bucket, spec.input_prefix) == (
        "job-1", "scene-classifier", "in-bucket", "data/train")
    assert (spec.compression, spec.split_type, spec.assemble_with) == ("Gzip", "Line", "Line")
    assert (spec.batch_strategy, spec.max_payload_mb, spec.max_concurrent) == (
        "MultiRecord", 10, 4)
    assert (spec.timeout_s, spec.max_retries, spec.instance_count) == (30, 1, 2)
    assert spec.kms_key_id == "alias/my-key"
    assert dict(spec.environment) == {"MODEL_MODE": "fast"}
    assert spec.to_request() == req
    assert TransformJobSpec.from_request(spec.to_request()) == spec


def test_minimal_request_leaves_optional_fields_unset() -> None:
    req = request()
    for key in ("BatchStrategy", "MaxPayloadInMB", "MaxConcurrentTransforms",
                "ModelClientConfig", "Environment", "Tags"):
        del req[key]
    for key in ("ContentType", "CompressionType", "SplitType"):
        del req["TransformInput"][key]
    spec = TransformJobSpec.from_request(req)
    assert spec.batch_strategy is None and spec.max_payload_mb is None
    assert spec.content_type is None and spec.split_type == "None"
    assert (spec.timeout_s, spec.max_retries) == (600, 3)
    assert "BatchStrategy" not in spec.to_request()


def test_simple_builds_the_pipeline_defaults() -> None:
    spec = TransformJobSpec.simple("predict-1", "model", "s3://bkt/in/x.jsonl", "s3://bkt/out/")
    assert (spec.split_type, spec.batch_strategy, spec.max_payload_mb) == (
        "Line", "MultiRecord", 6)
    assert spec.content_type == spec.accept == "application/jsonlines"
    assert TransformJobSpec.from_request(spec.to_request()) == spec
    hash(spec)  # usable as a key


def _bad(path: list[str], value: Any) -> dict[str, Any]:
    req = copy.deepcopy(request())
    node = req
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return req


_DELETE = object()
_INPUT = ["TransformInput"]
_S3 = ["TransformInput", "DataSource", "S3DataSource"]


@pytest.mark.parametrize(
    ("path", "value", "fragments"),
    [
        (["TransformJobName"], "bad_name", ["TransformJobName='bad_name'", "pattern"]),
        (["TransformJobName"], "x" * 64, ["TransformJobName=", "1-63"]),
        (["TransformJobName"], _DELETE, ["TransformJobName is required"]),
        (["ModelName"], "-model", ["ModelName='-model'"]),
        ([*_INPUT, "SplitType"], "Lines", ["TransformInput.SplitType='Lines'",
                                           "None, Line, RecordIO, TFRecord"]),
        ([*_INPUT, "CompressionType"], "Zip", ["CompressionType='Zip'", "None, Gzip"]),
        ([*_S3, "S3DataType"], "AugmentedManifestFile", ["S3DataType", "not supported"]),
        ([*_S3, "S3Uri"], "https://example.com/x", ["S3Uri='https://example.com/x'",
                                                    "s3://BUCKET/PREFIX"]),
        (["TransformOutput", "AssembleWith"], "Comma", ["AssembleWith='Comma'", "None, Line"]),
        (["TransformOutput", "S3OutputPath"], _DELETE, ["TransformOutput.S3OutputPath is "
                                                        "required"]),
        (["BatchStrategy"], "MULTI_RECORD", ["BatchStrategy='MULTI_RECORD'",
                                             "SingleRecord, MultiRecord"]),
        (["MaxPayloadInMB"], 101, ["MaxPayloadInMB=101", "0..100"]),
        (["MaxPayloadInMB"], "6", ["MaxPayloadInMB='6'", "whole number"]),
        (["MaxConcurrentTransforms"], 11, ["MaxConcurrentTransforms=11", "MaxPayloadInMB=10",
                                           "110", "over 100"]),
        (["ModelClientConfig", "InvocationsTimeoutInSeconds"], 3601,
         ["InvocationsTimeoutInSeconds=3601", "1..3600"]),
        (["ModelClientConfig", "InvocationsMaxRetries"], 4, ["InvocationsMaxRetries=4",
                                                             "0..3"]),
        (["TransformResources", "InstanceCount"], 0, ["InstanceCount=0", ">= 1"]),
        (["Environment"], {f"V{i}": "x" for i in range(17)}, ["17 entries", "at most 16"]),
        (["Environment"], {"BAD-KEY": "x"}, ["'BAD-KEY'"]),
        (["Environment"], {"N": 1}, ["Environment['N']=1", "string"]),
        (["DataProcessing"], {"InputFilter": "$" + ".a" * 40}, ["DataProcessing.InputFilter",
                                                                "0..63"]),
        (["DataProcessing"], {"JoinSource": "Output"}, ["JoinSource='Output'", "None, Input"]),
        (["Unknown"], 1, ["unknown field(s) Unknown"]),
    ],
)
def test_bad_requests_name_field_value_and_allowed(path: list[str], value: Any,
                                                   fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        TransformJobSpec.from_request(_bad(path, value))
    for fragment in fragments:
        assert fragment in str(info.value)


def test_batch_strategy_without_split_is_a_note_not_an_error() -> None:
    spec = TransformJobSpec.from_request(_bad([*_INPUT, "SplitType"], "None"))
    assert spec.notes() and "no effect with SplitType=None" in spec.notes()[0]


def test_data_processing_defaults_count_as_none() -> None:
    spec = TransformJobSpec.from_request(request(DataProcessing={"InputFilter": "$",
                                                                "JoinSource": "None"}))
    assert not spec.has_data_processing()
    spec = TransformJobSpec.from_request(request(DataProcessing={"JoinSource": "Input"}))
    assert spec.has_data_processing()


def test_parse_s3_uri() -> None:
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    assert parse_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b/")
    with pytest.raises(ConfigError, match="S3OutputPath"):
        parse_s3_uri("bucket/a", "S3OutputPath")


# --- precedence: request > /execution-parameters > defaults -----------------------------------


def _spec(**changes: Any) -> TransformJobSpec:
    req = request()
    for key in ("BatchStrategy", "MaxPayloadInMB", "MaxConcurrentTransforms"):
        del req[key]
    req.update(changes)
    return TransformJobSpec.from_request(req)


def test_defaults_when_neither_request_nor_container_says() -> None:
    params = resolve(_spec(), None)
    assert (params.batch_strategy, params.max_payload_mb, params.max_concurrent) == (
        "MultiRecord", 6, 1)
    assert set(params.sources.values()) == {"default"}


@pytest.mark.parametrize("spelling", ["SINGLE_RECORD", "SingleRecord"])
def test_container_parameters_beat_defaults(spelling: str) -> None:
    fields, notes = parse_execution_parameters(
        b'{"BatchStrategy": "%s", "MaxPayloadInMB": 2, "MaxConcurrentTransforms": 8}'
        % spelling.encode())
    assert not notes
    params = resolve(_spec(), fields)
    assert (params.batch_strategy, params.max_payload_mb, params.max_concurrent) == (
        "SingleRecord", 2, 8)
    assert set(params.sources.values()) == {"execution-parameters"}


def test_request_beats_container_parameters() -> None:
    fields, _ = parse_execution_parameters(
        b'{"BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 2, "MaxConcurrentTransforms": 8}')
    params = resolve(_spec(BatchStrategy="MultiRecord", MaxPayloadInMB=5), fields)
    assert (params.batch_strategy, params.max_payload_mb, params.max_concurrent) == (
        "MultiRecord", 5, 8)
    assert params.sources == {"BatchStrategy": "request", "MaxPayloadInMB": "request",
                              "MaxConcurrentTransforms": "execution-parameters"}


def test_bad_container_parameters_are_ignored_with_a_note() -> None:
    fields, notes = parse_execution_parameters(
        b'{"BatchStrategy": "BATCH", "MaxPayloadInMB": 500, "MaxConcurrentTransforms": "x"}')
    assert fields == {}
    assert len(notes) == 3
    assert parse_execution_parameters(b"<html>")[0] == {}


def test_container_concurrency_over_the_product_rule_is_lowered_with_a_note() -> None:
    params = resolve(_spec(), {"MaxConcurrentTransforms": 32})  # x 6 MB default = 192
    assert params.max_concurrent == 16
    assert any("over 100" in n for n in params.notes)


def test_container_environment_sets_batch_variables_only_when_requested() -> None:
    env = container_environment(_spec(), {"SAGEMAKER_PROGRAM": "serving.py",
                                          "MODEL_MODE": "slow"})
    assert env == {"SAGEMAKER_PROGRAM": "serving.py", "MODEL_MODE": "fast",
                   "SAGEMAKER_BATCH": "true"}
    env = container_environment(TransformJobSpec.from_request(request()))
    assert env["SAGEMAKER_MAX_PAYLOAD_IN_MB"] == "10"
    assert env["SAGEMAKER_BATCH_STRATEGY"] == "MULTI_RECORD"
    assert env["SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"] == "4"
