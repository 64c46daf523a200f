"""The batch-transform data plane with the real model server and the real example models.

``predict()`` and ``run_transform()`` start ``smserve serve`` (multi-model-server,
Chainer) as local processes against the embedded stack. Server starts cost
seconds, so one frame_features run is shared by the tests that read it.
Every process the module starts carries a tag in its environment; after each
test none of them may still run.
"""

from __future__ import annotations

import io
import json
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from local_test.clips import clip_bytes, upload_clips
from serving.aws import ClientFactory
from serving.local.stack import LocalStack
from serving.modelspec import discover
from serving.pipeline import Graph, output_key
from serving.s3refs import RequestRecord
from serving.settings import Settings
from serving.transform import TransformJobSpec, predict, run_transform
from tests.helpers import TAG_VAR, kill_tagged

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
CLIPS = 4
VIDEOS = "videos/2026/11/"


# --- environment ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tag() -> str:
    """A value only the processes this module starts carry in their environment."""
    return uuid.uuid4().hex


@pytest.fixture(scope="module")
def factory(stack: LocalStack, tag: str) -> ClientFactory:
    """Clients for the stack; containers inherit these settings (and the tag)."""
    return ClientFactory(Settings.from_environ({
        **stack.environ(),
        "SMSERVE_ALLOWED_BUCKETS": "*",
        "SMSERVE_OUTPUT_PREFIXES": "results/",
        "SETUPTOOLS_USE_DISTUTILS": "stdlib",
        TAG_VAR: tag,
    }))


def _new_bucket(factory: ClientFactory, label: str) -> str:
    name = f"real-{label}-{uuid.uuid4().hex[:8]}"
    factory.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def graph() -> Graph:
    """The example models' graph, from models/*/model.toml."""
    return Graph(discover(MODELS))


@pytest.fixture(autouse=True)
def no_leftover_processes(tag: str) -> Iterator[None]:
    """After each test, no model server (MMS, its Java frontend, workers) it started runs."""
    yield
    described = kill_tagged(tag)
    assert not described, "model server processes left running:\n" + "\n".join(described)


# --- one shared frame_features run ------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """A predict() call and what it returned."""

    bucket: str
    clip_numbers: list[int]
    requests: list[RequestRecord]
    answers: list[Any]
    seconds: float


@pytest.fixture(scope="module")
def features_run(factory: ClientFactory, graph: Graph) -> Run:
    """frame_features over the sample clips, requests in a shuffled (not sorted) order."""
    bucket = _new_bucket(factory, "predict")
    keys = upload_clips(factory.client("s3"), bucket, VIDEOS, CLIPS)
    numbers = list(range(CLIPS))
    random.Random(7).shuffle(numbers)
    assert numbers != sorted(numbers)
    requests = graph.build_requests("frame_features", bucket, [keys[i] for i in numbers])
    spec = graph["frame_features"]
    started = time.monotonic()
    answers = predict(MODELS / "frame_features", requests, factory, bucket,
                      batch_strategy=spec.batch_strategy, max_payload_mb=spec.max_payload_mb,
                      model_environment=spec.environment)
    return Run(bucket, numbers, requests, answers, time.monotonic() - started)


def test_predict_answers_each_record_in_order(features_run: Run) -> None:
    run = features_run
    assert len(run.answers) == len(run.requests) == CLIPS
    for request, answer in zip(run.requests, run.answers, strict=True):
        assert answer["status"] == "written"
        assert answer["bucket"] == run.bucket
        assert answer["key"] == request.output_path
        assert answer["bytes"] > 0


def test_predict_writes_each_clips_features(features_run: Run, factory: ClientFactory) -> None:
    """The object at each record's key holds that record's clip's features, not another's."""
    from serving.handler import load_handlers

    handlers = load_handlers(MODELS / "frame_features")
    model = handlers.load_model(MODELS / "frame_features")
    s3 = factory.client("s3")
    for number, request, answer in zip(features_run.clip_numbers, features_run.requests,
                                       features_run.answers, strict=True):
        assert request.inputs["video"] == f"{VIDEOS}clip-{number:03d}.npy"
        assert request.output_path == output_key("frame_features", request.inputs["video"],
                                                 suffix=".npy")
        raw = s3.get_object(Bucket=features_run.bucket, Key=request.output_path)["Body"].read()
        assert len(raw) == answer["bytes"]
        got = np.load(io.BytesIO(raw), allow_pickle=False)
        assert got.shape == (8, 64) and got.dtype == np.float32
        expected = np.load(io.BytesIO(handlers.module.compute(model, [
            {"video": clip_bytes(number)}])[0]), allow_pickle=False)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_predict_again_skips_every_record(features_run: Run, factory: ClientFactory) -> None:
    s3 = factory.client("s3")
    etags = {r.output_path: s3.head_object(Bucket=features_run.bucket,
                                           Key=r.output_path)["ETag"]
             for r in features_run.requests}
    again = predict(MODELS / "frame_features", features_run.requests, factory,
                    features_run.bucket)
    assert [a["status"] for a in again] == ["skipped"] * CLIPS
    assert [a["key"] for a in again] == [a["key"] for a in features_run.answers]
    assert [a["bytes"] for a in again] == [a["bytes"] for a in features_run.answers]
    for key, etag in etags.items():
        assert s3.head_object(Bucket=features_run.bucket, Key=key)["ETag"] == etag


def test_scene_classifier_reads_frame_features_output(features_run: Run, factory: ClientFactory,
                                                      graph: Graph) -> None:
    keys = [r.inputs["video"] for r in features_run.requests]
    requests = graph.build_requests("scene_classifier", features_run.bucket, keys)
    assert [r.inputs["features"] for r in requests] == \
        [r.output_path for r in features_run.requests]
    answers = predict(MODELS / "scene_classifier", requests, factory, features_run.bucket,
                      model_environment=graph["scene_classifier"].environment)
    s3 = factory.client("s3")
    assert [a["key"] for a in answers] == [r.output_path for r in requests]
    for answer in answers:
        assert answer["status"] == "written"
        doc = json.loads(s3.get_object(Bucket=features_run.bucket,
                                       Key=answer["key"])["Body"].read())
        assert doc["frames"] == 8
        assert doc["top_class"] in doc["classes"]
        assert doc["top_probability"] == max(doc["probabilities"])
        assert sum(doc["probabilities"]) == pytest.approx(1.0, abs=1e-6)


# --- failures and several containers ----------------------------------------------------------


def _put_requests(s3: Any, bucket: str, key: str, records: list[RequestRecord]) -> None:
    s3.put_object(Bucket=bucket, Key=key,
                  Body=b"".join(json.dumps(r.to_dict()).encode() + b"\n" for r in records))


def _keys(s3: Any, bucket: str, prefix: str) -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def _request(bucket: str, video: str) -> RequestRecord:
    return RequestRecord(bucket=bucket, inputs={"video": video},
                         output_path=output_key("frame_features", video, suffix=".npy"))


def test_failing_record_fails_only_itself(factory: ClientFactory) -> None:
    bucket = _new_bucket(factory, "failing")
    s3 = factory.client("s3")
    clips = upload_clips(s3, bucket, VIDEOS, 3)
    missing = f"{VIDEOS}never-uploaded.npy"
    _put_requests(s3, bucket, "in/a.jsonl", [_request(bucket, clips[0])])
    _put_requests(s3, bucket, "in/b.jsonl", [_request(bucket, clips[1]),
                                             _request(bucket, missing)])
    _put_requests(s3, bucket, "in/c.jsonl", [_request(bucket, clips[2])])
    spec = TransformJobSpec.simple("failing-record", "frame-features", f"s3://{bucket}/in/",
                                   f"s3://{bucket}/out/", invocations_max_retries=1)

    result = run_transform(spec, MODELS / "frame_features", factory)

    # a per-record failure is an outcome inside a 200 answer: the job completes
    assert [o.key for o in result.succeeded] == ["in/a.jsonl", "in/b.jsonl", "in/c.jsonl"]
    assert _keys(s3, bucket, "out/") == {"out/a.jsonl.out", "out/b.jsonl.out",
                                         "out/c.jsonl.out"}
    body = s3.get_object(Bucket=bucket, Key="out/b.jsonl.out")["Body"].read()
    good, bad = [json.loads(line) for line in body.splitlines()]
    assert good["status"] == "written" and good["key"] == _request(bucket, clips[1]).output_path
    assert (bad["status"], bad["error"]) == ("failed", "InputNotFound")
    assert f"s3://{bucket}/{missing} does not exist" in bad["message"]
    assert bad["inputs"] == {"video": missing}
    # every good record is written, whatever its neighbour did; the bad one has its error
    # document beside where its output would be, so a rerun retries only it
    error_doc = _request(bucket, missing).output_path + ".error.json"
    assert _keys(s3, bucket, "results/") == {
        *(_request(bucket, clip).output_path for clip in clips), error_doc}
    doc = json.loads(s3.get_object(Bucket=bucket, Key=error_doc)["Body"].read())
    assert doc["error"] == "InputNotFound" and doc["inputs"] == {"video": missing}


def test_two_instances_share_the_objects(factory: ClientFactory) -> None:
    bucket = _new_bucket(factory, "two")
    s3 = factory.client("s3")
    clips = upload_clips(s3, bucket, VIDEOS, 4)
    for i, clip in enumerate(clips):
        _put_requests(s3, bucket, f"in/part-{i}.jsonl", [_request(bucket, clip)])
    spec = TransformJobSpec.simple("two-instances", "frame-features", f"s3://{bucket}/in/",
                                   f"s3://{bucket}/out/", instance_count=2)
    lines: list[str] = []

    result = run_transform(spec, MODELS / "frame_features", factory, log=lines.append,
                           model_environment={"SAGEMAKER_MODEL_SERVER_WORKERS": "1"})

    assert result.ok, result.failure_reason()
    served = {o.key: o.container for o in result.objects}
    assert set(served.values()) == {0, 1}, served
    assert all(o.requests >= 1 and o.records_done == 1 for o in result.objects)
    # Both servers really answered: each logged a model load and then its invocations.
    ready = [line for line in lines if "smserve: model ready on" in line]
    assert sorted(line.split("]")[0] for line in ready) == ["[container 0", "[container 1"]
    ports = {line.rsplit("http://127.0.0.1:", 1)[1].split()[0] for line in ready}
    assert len(ports) == 2
    # ...and each answered the objects the data plane sent it (records_done above).
    assert _keys(s3, bucket, "out/") == {f"out/part-{i}.jsonl.out" for i in range(4)}
    assert _keys(s3, bucket, "results/") == {_request(bucket, c).output_path for c in clips}
