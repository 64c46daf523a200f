"""Routing on the stack's port: SageMaker requests to our API, the rest to moto's app."""

from __future__ import annotations

import json
from typing import Any

import pytest
from werkzeug.test import Client

from serving.local.sagemaker import SageMakerMiddleware, SageMakerService
from serving.settings import Settings


def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"moto:" + environ["PATH_INFO"].encode()]


@pytest.fixture()
def service() -> SageMakerService:
    return SageMakerService(Settings.from_environ({"AWS_ENDPOINT_URL": "http://127.0.0.1:1"}))


@pytest.fixture()
def client(service: SageMakerService) -> Client:
    return Client(SageMakerMiddleware(inner, service))


def call(client: Client, operation: str, body: Any) -> tuple[int, dict[str, Any]]:
    resp = client.post("/", data=json.dumps(body), headers={
        "X-Amz-Target": f"SageMaker.{operation}",
        "Content-Type": "application/x-amz-json-1.1"})
    assert resp.headers["Content-Type"] == "application/x-amz-json-1.1"
    assert resp.headers["x-amzn-RequestId"]
    return resp.status_code, json.loads(resp.data)


def test_sagemaker_targets_reach_the_api_and_the_rest_reaches_moto(client: Client) -> None:
    status, doc = call(client, "CreateModel", {"ModelName": "m-1",
                                               "PrimaryContainer": {"Image": "img"}})
    assert status == 200
    assert doc == {"ModelArn": "arn:aws:sagemaker:us-east-1:123456789012:model/m-1"}
    status, doc = call(client, "ListModels", {})
    assert [m["ModelName"] for m in doc["Models"]] == ["m-1"]
    assert isinstance(doc["Models"][0]["CreationTime"], float)
    resp = client.get("/some-bucket/key")
    assert resp.data == b"moto:/some-bucket/key"


def test_errors_have_the_service_json_shape(client: Client) -> None:
    status, doc = call(client, "DescribeModel", {"ModelName": "absent"})
    assert status == 400
    assert doc == {"__type": "ValidationException", "message": 'Could not find model '
                   '"arn:aws:sagemaker:us-east-1:123456789012:model/absent".'}
    status, doc = call(client, "DescribeTransformJob", {"TransformJobName": "absent"})
    assert (status, doc["__type"]) == (400, "ValidationException")
    assert "absent" in doc["message"]
    status, doc = call(client, "StopTransformJob", {"TransformJobName": "absent"})
    assert (status, doc["__type"]) == (400, "ResourceNotFound")
    assert "absent" in doc["Message"]
    status, doc = call(client, "CreateEndpoint", {})
    assert (status, doc["__type"]) == (400, "UnknownOperationException")
    resp = client.post("/", data=b"{not json", headers={"X-Amz-Target": "SageMaker.ListModels"})
    assert resp.status_code == 400
    assert json.loads(resp.data)["__type"] == "SerializationException"


def test_reset_forgets_models_and_passes_on(client: Client, service: SageMakerService) -> None:
    call(client, "CreateModel", {"ModelName": "m-1", "PrimaryContainer": {"Image": "img"}})
    resp = client.post("/moto-api/reset")
    assert resp.data == b"moto:/moto-api/reset"
    assert service.models.list({})["Models"] == []


def test_the_job_record_path_answers_404_for_an_unknown_job(client: Client) -> None:
    resp = client.get("/_smserve/sagemaker/transform-jobs/absent")
    assert resp.status_code == 404
    assert json.loads(resp.data)["__type"] == "ResourceNotFound"
