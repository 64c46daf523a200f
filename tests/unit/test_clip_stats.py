"""clip_stats: brightness and motion statistics, in-process through its handlers, on local S3."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from local_test.clips import clip_bytes, make_clip, upload_clips
from serving import s3refs
from serving.errors import BadRequest, InvalidInput
from serving.handler import Handlers, load_handlers
from serving.modelspec import discover
from serving.pipeline import Graph
from serving.s3refs import dumps_records

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
FOLDER = MODELS / "clip_stats"
JSONLINES = "application/jsonlines"


@pytest.fixture()
def s3(handler_s3: Any) -> Any:
    """S3 on the stack, with the handlers' process-wide runtime pointed at it."""
    return handler_s3


@pytest.fixture(scope="module")
def loaded() -> tuple[Handlers, Any]:
    handlers = load_handlers(FOLDER)
    return handlers, handlers.load_model(FOLDER)


@pytest.fixture(scope="module")
def stats_module(loaded: tuple[Handlers, Any]) -> Any:
    """clip_stats' model.py, as its serving.py imported it."""
    return sys.modules[loaded[0].module.clip_stats.__module__]


def invoke(loaded: tuple[Handlers, Any], records: list[s3refs.RequestRecord]) -> list[dict]:
    handlers, model = loaded
    response = handlers.invoke(model, dumps_records(records), JSONLINES, JSONLINES)
    return [json.loads(line) for line in response.body.decode().splitlines()]


def read_json(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_the_graph_has_a_dependent_pair_and_an_independent_branch() -> None:
    graph = Graph(discover(MODELS))
    spec = graph["clip_stats"]
    assert (spec.image, spec.instance_type, spec.depends_on) == ("cpu", "ml.m5.large", ())
    assert spec.inputs == {"video": "$input"}
    assert spec.output_suffix == ".json"
    assert graph.levels()[0] == ["clip_stats", "frame_features"]
    assert graph.upstream("scene_classifier") == ["frame_features"]
    assert graph.downstream("clip_stats") == []
    assert graph.upstream("clip_stats") == []


def test_sample_request_matches_build_requests_and_sample_data() -> None:
    graph = Graph(discover(MODELS))
    sample = json.loads((FOLDER / "sample_request.json").read_text())
    [built] = graph.build_requests("clip_stats", sample["bucket"], ["samples/clips/clip-000.npy"])
    assert built.to_dict() == sample
    data = FOLDER / "sample_data" / "samples" / "clips" / "clip-000.npy"
    assert data.read_bytes() == clip_bytes(0)


def test_statistics_of_the_sample_clips(s3: Any, bucket: str, loaded: Any) -> None:
    keys = upload_clips(s3, bucket, "clips/", 3)
    records = Graph(discover(MODELS)).build_requests("clip_stats", bucket, keys)
    answers = invoke(loaded, records)
    assert [a["status"] for a in answers] == ["written"] * 3
    for i, record in enumerate(records):
        assert record.output_path == f"results/clip_stats/clips/clip-00{i}.json"
        head = s3.head_object(Bucket=bucket, Key=record.output_path)
        assert head["ContentType"] == "application/json"
        stats = read_json(s3, bucket, record.output_path)
        clip = make_clip(i)
        luma = clip.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        assert (stats["frames"], stats["height"], stats["width"]) == (8, 32, 32)
        np.testing.assert_allclose(stats["brightness"]["per_frame"], luma.mean(axis=(1, 2)),
                                   atol=1e-3)
        motion = np.abs(np.diff(luma, axis=0)).mean(axis=(1, 2))
        np.testing.assert_allclose(stats["motion"]["per_frame"], motion, atol=1e-3)
        assert stats["motion"]["mean"] == pytest.approx(motion.mean(), abs=1e-3)
        assert stats["motion"]["max"] == pytest.approx(motion.max(), abs=1e-3)
        np.testing.assert_allclose(stats["contrast"]["per_frame"], luma.std(axis=(1, 2)),
                                   atol=1e-3)
        np.testing.assert_allclose(stats["mean_rgb"], clip.reshape(-1, 3).mean(axis=0),
                                   atol=1e-3)
        assert 0.0 <= stats["motion"]["still_fraction"] <= 1.0

    before = {r.output_path: s3.head_object(Bucket=bucket, Key=r.output_path)["ETag"]
              for r in records}
    again = invoke(loaded, records)
    assert [a["status"] for a in again] == ["skipped"] * 3
    assert {r.output_path: s3.head_object(Bucket=bucket, Key=r.output_path)["ETag"]
            for r in records} == before


def test_chunked_statistics_equal_whole_clip_statistics(stats_module: Any) -> None:
    clip = make_clip(7, frames=13, height=16, width=12)
    whole = stats_module.clip_stats(clip, stats_module.StatsConfig())
    # 2 frames per chunk: every chunk boundary is crossed by the motion series.
    chunked = stats_module.clip_stats(clip, stats_module.StatsConfig(chunk_pixels=2 * 16 * 12))
    assert chunked == whole
    assert len(whole["motion"]["per_frame"]) == 12


def test_a_still_clip_and_a_single_frame(stats_module: Any) -> None:
    config = stats_module.StatsConfig()
    still = np.full((4, 8, 8, 3), 100, np.uint8)
    stats = stats_module.clip_stats(still, config)
    assert stats["brightness"]["per_frame"] == [100.0] * 4
    assert stats["motion"]["per_frame"] == [0.0] * 3
    assert stats["motion"]["still_fraction"] == 1.0
    one = stats_module.clip_stats(still[:1], config)
    assert one["motion"]["per_frame"] == []
    assert one["frames"] == 1


def test_model_fn_needs_no_weights(tmp_path: Path, loaded: Any) -> None:
    handlers, _ = loaded
    config = handlers.load_model(tmp_path)
    assert config.luma == (0.299, 0.587, 0.114)


@pytest.mark.parametrize(("array", "expect"), [
    (np.zeros((8, 32, 32), np.uint8), "shape (8, 32, 32)"),
    (np.zeros((0, 32, 32, 3), np.uint8), "shape (0, 32, 32, 3)"),
    (np.zeros((2, 8, 8, 3), np.float32), "dtype float32"),
])
def test_a_wrong_clip_fails_alone(s3: Any, bucket: str, loaded: Any,
                                  array: np.ndarray, expect: str) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    s3.put_object(Bucket=bucket, Key="in/bad.npy", Body=buffer.getvalue())
    records = Graph(discover(MODELS)).build_requests("clip_stats", bucket, ["in/bad.npy"])
    [answer] = invoke(loaded, records)
    assert (answer["status"], answer["error"]) == ("failed", "InvalidInput")
    assert answer["message"].startswith(f"s3://{bucket}/in/bad.npy: input 'video'")
    assert expect in answer["message"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == ["in/bad.npy", records[0].output_path + ".error.json"]
    doc = read_json(s3, bucket, records[0].output_path + ".error.json")
    assert doc["inputs"] == {"video": "in/bad.npy"} and doc["error"] == "InvalidInput"


def test_smserve_check_passes_on_clip_stats(stack: Any) -> None:
    from serving.check import check

    report = check(FOLDER, stack=stack)
    assert report.ok, report.render()
    assert report.answers[0]["status"] == "written"
    assert "ndarray uint8 (8, 32, 32, 3)" in report.inputs[0]


def test_a_clip_of_100000_frames_is_refused_before_any_work(loaded: tuple[Handlers, Any]) -> None:
    # a view: the shape of a 100,000-frame clip without its 300 MB
    clip = np.broadcast_to(np.zeros((1, 32, 32, 3), np.uint8), (100_000, 32, 32, 3))
    with pytest.raises(InvalidInput, match=r"at most 67108864 pixels per clip \(split it"):
        loaded[0].module.check_clip(clip)
    with pytest.raises(InvalidInput, match=r"shape \(0, 32, 32, 3\)"):
        loaded[0].module.check_clip(np.zeros((0, 32, 32, 3), np.uint8))
    assert isinstance(loaded[0].module.read_clip({"video": b"not npy"}), BadRequest)
