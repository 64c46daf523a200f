"""Requests checked against botocore's SageMaker model, with the service's wording."""

from __future__ import annotations

from typing import Any

import pytest

from serving.local.sagemaker.apierrors import SerializationException, ValidationException
from serving.local.sagemaker.validate import RequestValidator, compile_java


@pytest.fixture(scope="module")
def validator() -> RequestValidator:
    return RequestValidator()


def job(**changes: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "TransformJobName": "job-1", "ModelName": "model-1",
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                           "S3Uri": "s3://bucket/in/"}}},
        "TransformOutput": {"S3OutputPath": "s3://bucket/out/"},
        "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
    }
    request.update(changes)
    return request


def refused(validator: RequestValidator, request: dict[str, Any]) -> str:
    with pytest.raises(ValidationException) as info:
        validator.check("CreateTransformJob", request)
    return info.value.message


def test_a_valid_request_passes_and_unknown_members_are_dropped(
        validator: RequestValidator) -> None:
    checked = validator.check("CreateTransformJob", job(Unknown=1))
    assert checked == job()


def test_pattern_message_names_the_field_like_aws(validator: RequestValidator) -> None:
    assert refused(validator, job(TransformJobName="my_job")) == (
        "1 validation error detected: Value 'my_job' at 'transformJobName' failed to satisfy "
        "constraint: Member must satisfy regular expression pattern: "
        "[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")


def test_missing_members_are_null_at_their_path(validator: RequestValidator) -> None:
    request = job()
    del request["ModelName"]
    request["TransformInput"] = {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix"}}}
    message = refused(validator, request)
    assert message.startswith("2 validation errors detected: ")
    assert "Value null at 'modelName' failed to satisfy constraint: Member must not be null" \
        in message
    assert "Value null at 'transformInput.dataSource.s3DataSource.s3Uri'" in message


def test_ranges_enums_lengths_and_maps(validator: RequestValidator) -> None:
    message = refused(validator, job(
        TransformResources={"InstanceType": "ml.nope", "InstanceCount": 0},
        Environment={f"V{i}": "x" for i in range(17)},
        ModelClientConfig={"InvocationsTimeoutInSeconds": 4000},
    ))
    assert "Value 'ml.nope' at 'transformResources.instanceType' failed to satisfy " \
        "constraint: Member must satisfy enum value set: [" in message
    assert "Value '0' at 'transformResources.instanceCount' failed to satisfy constraint: " \
        "Member must have value greater than or equal to 1" in message
    assert "at 'environment' failed to satisfy constraint: Member must have length less " \
        "than or equal to 16" in message
    assert "at 'modelClientConfig.invocationsTimeoutInSeconds' failed to satisfy " \
        "constraint: Member must have value less than or equal to 3600" in message


def test_map_keys_and_list_items(validator: RequestValidator) -> None:
    message = refused(validator, job(Environment={"1BAD": "x", "2BAD": "y"},
                                     Tags=[{"Key": "k"}]))
    assert message.count("Map keys must satisfy constraint: [Member must satisfy regular "
                         "expression pattern: [a-zA-Z_][a-zA-Z0-9_]{0,1023}]") == 1
    assert "Value null at 'tags.1.member.value'" in message


def test_wrong_types_are_a_serialization_error(validator: RequestValidator) -> None:
    with pytest.raises(SerializationException, match=r"transformResources\.instanceCount"):
        validator.check("CreateTransformJob", job(
            TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": "1"}))
    with pytest.raises(SerializationException):
        validator.check("CreateTransformJob", job(TransformInput=[]))


def test_java_character_classes_are_translated() -> None:
    pattern = compile_java(r"([\p{L}\p{Z}\p{N}_.:/=+\-@]*)")
    assert pattern is not None
    assert pattern.fullmatch("Team A: ünïcode 42")
    assert not pattern.fullmatch("semi;colon")
