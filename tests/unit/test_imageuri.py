"""ECR image URIs (serving.imageuri) and the images file (serving.imagerecord)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving import imagerecord
from serving.errors import ConfigError
from serving.imageuri import (
    MALFORMED,
    NO_REFERENCE,
    NON_ECR,
    ImageUri,
    ImageUriError,
    ecr_uri,
    parse_image_uri,
)
from serving.settings import Settings

REGISTRY = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("text", "expected"), [
    (f"{REGISTRY}/smserve-cpu:0.1.0",
     ImageUri("123456789012", "eu-west-1", "smserve-cpu", "0.1.0", None)),
    (f"{REGISTRY}/team/smserve-gpu@{DIGEST}",
     ImageUri("123456789012", "eu-west-1", "team/smserve-gpu", None, DIGEST)),
    (f"{REGISTRY}/a.b_c-d:latest@{DIGEST}",
     ImageUri("123456789012", "eu-west-1", "a.b_c-d", "latest", DIGEST)),
    ("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/x1:t",
     ImageUri("123456789012", "cn-north-1", "x1", "t", None)),
    ("123456789012.dkr.ecr.us-gov-west-1.amazonaws.com/x1:t",
     ImageUri("123456789012", "us-gov-west-1", "x1", "t", None)),
])
def test_ecr_uris_parse_into_their_parts(text: str, expected: ImageUri) -> None:
    parsed = parse_image_uri(text)
    assert parsed == expected
    assert parsed.reference == (expected.digest or expected.tag)


def test_a_uri_prints_back_and_pins_to_a_digest() -> None:
    uri = parse_image_uri(f"{REGISTRY}/smserve-cpu:0.1.0")
    assert str(uri) == f"{REGISTRY}/smserve-cpu:0.1.0"
    assert str(uri.with_digest(DIGEST)) == f"{REGISTRY}/smserve-cpu@{DIGEST}"
    assert ecr_uri("123456789012", "eu-west-1", "smserve-cpu", tag="0.1.0") == str(uri)
    assert ecr_uri("123456789012", "eu-west-1", "r2", digest=DIGEST) == f"{REGISTRY}/r2@{DIGEST}"


@pytest.mark.parametrize(("text", "problem", "words"), [
    ("smserve-cpu:0.1.0", NON_ECR, "is not in ECR"),
    ("docker.io/library/python:3.11", NON_ECR, "is not in ECR"),
    ("127.0.0.1:5000/smserve-cpu:0.1.0", NON_ECR, "is not in ECR"),
    ("12345.dkr.ecr.us-east-1.amazonaws.com/x:1", NON_ECR, "is not in ECR"),
    (f"{REGISTRY}/smserve-cpu", NO_REFERENCE, "has no tag or digest; add one"),
    (f"{REGISTRY}/Smserve:1", MALFORMED, "is not an ECR repository name"),
    (f"{REGISTRY}/x:", MALFORMED, "is not an ECR repository name"),
    (f"{REGISTRY}/xy:-bad", MALFORMED, "is not a valid tag"),
    (f"{REGISTRY}/xy@sha256:abc", MALFORMED, "is not a digest"),
])
def test_bad_uris_say_what_is_wrong(text: str, problem: str, words: str) -> None:
    with pytest.raises(ImageUriError) as info:
        parse_image_uri(text)
    assert info.value.problem == problem
    assert words in info.value.message and "\n" not in info.value.message
    assert isinstance(info.value, ConfigError) and info.value.exit_code == 2


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_environ({"SMSERVE_IMAGES_FILE": str(tmp_path / "images.json"),
                                  "AWS_ENDPOINT_URL": "http://127.0.0.1:4566", **env})


def test_the_images_file_records_and_resolves_per_endpoint(tmp_path: Path) -> None:
    path = tmp_path / "images.json"
    entry = imagerecord.record(path, "cpu", f"{REGISTRY}/smserve-cpu:0.1.0", DIGEST,
                               "http://127.0.0.1:4566")
    assert entry["pinned"] == f"{REGISTRY}/smserve-cpu@{DIGEST}"
    imagerecord.record(path, "gpu", f"{REGISTRY}/smserve-gpu:0.1.0", None, None)
    assert set(json.loads(path.read_text())["images"]) == {"cpu", "gpu"}

    found, missing = imagerecord.image_uris(_settings(tmp_path), ["cpu", "gpu"])
    assert found == {"cpu": f"{REGISTRY}/smserve-cpu:0.1.0"}
    assert missing == ["gpu"], "pushed to AWS, not to this endpoint"
    with pytest.raises(ConfigError, match=r"no ECR image for the gpu model\(s\) at "
                                          r"http://127.0.0.1:4566: push one \(smserve image "
                                          r"push --flavor gpu"):
        imagerecord.require(_settings(tmp_path), ["cpu", "gpu"])
    given = _settings(tmp_path, SMSERVE_IMAGE_GPU=f"{REGISTRY}/mine@{DIGEST}")
    assert imagerecord.require(given, ["gpu"]) == {"gpu": f"{REGISTRY}/mine@{DIGEST}"}


def test_a_local_tag_in_the_environment_is_refused_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"SMSERVE_IMAGE_CPU: image 'smserve-cpu:0.1.0' is "
                                          "not in ECR"):
        imagerecord.require(_settings(tmp_path, SMSERVE_IMAGE_CPU="smserve-cpu:0.1.0"),
                            ["cpu"])


def test_a_broken_images_file_says_to_push_again(tmp_path: Path) -> None:
    (tmp_path / "images.json").write_text('{"images": {"cpu": {"digest": "x"}}}')
    with pytest.raises(ConfigError, match=r"is not an images file .* push again"):
        imagerecord.image_uris(_settings(tmp_path), ["cpu"])
