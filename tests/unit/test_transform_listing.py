"""Which objects a job reads and where each one's output goes (listing.py)."""

from __future__ import annotations

import json

import pytest

from serving.aws import ClientFactory
from serving.errors import TransformError
from serving.transform.listing import InputObject, list_inputs, output_location, relative_key
from serving.transform.spec import TransformJobSpec


def spec(input_uri: str, output_uri: str = "s3://out-bkt/results",
         data_type: str = "S3Prefix") -> TransformJobSpec:
    return TransformJobSpec.simple("list-job", "model", input_uri, output_uri,
                                   data_type=data_type)


@pytest.mark.parametrize(
    ("key", "prefix", "relative_to", "expected"),
    [
        ("data/train/a.csv", "data/train/", "prefix", "a.csv"),
        ("data/train/a.csv", "data/train", "prefix", "a.csv"),
        ("data/train/sub/b.csv", "data/", "prefix", "train/sub/b.csv"),
        ("data/train-extra.csv", "data/train", "prefix", "-extra.csv"),  # unconfirmed default
        ("data/train-extra.csv", "data/train", "folder", "train-extra.csv"),
        ("data/one.csv", "data/one.csv", "prefix", "one.csv"),  # the prefix is the whole key
        ("top.csv", "", "prefix", "top.csv"),
    ],
)
def test_relative_key(key: str, prefix: str, relative_to: str, expected: str) -> None:
    assert relative_key(key, prefix, relative_to) == expected


def test_relative_to_must_be_known() -> None:
    with pytest.raises(ValueError, match="relative_to='dir'"):
        relative_key("a", "", "dir")


@pytest.mark.parametrize(
    ("output_uri", "expected"),
    [
        ("s3://out-bkt/results", ("out-bkt", "results/sub/a.csv.out")),
        ("s3://out-bkt/results/", ("out-bkt", "results/sub/a.csv.out")),
        ("s3://out-bkt", ("out-bkt", "sub/a.csv.out")),
        ("s3://out-bkt/", ("out-bkt", "sub/a.csv.out")),
    ],
)
def test_output_key_is_output_path_plus_relative_key_plus_out(output_uri: str,
                                                              expected: tuple[str, str]) -> None:
    obj = InputObject("in-bkt", "data/sub/a.csv", "sub/a.csv")
    assert output_location(spec("s3://in-bkt/data/", output_uri), obj) == expected


def test_prefix_listing_is_recursive_paged_sorted_and_skips_folder_markers(
        clients: ClientFactory, bucket: str) -> None:
    s3 = clients.client("s3")
    keys = [f"in/part-{i:04d}.csv" for i in range(1005)] + ["in/deep/er/x.csv"]
    for key in [*keys, "in/deep/", "other/z.csv"]:
        s3.put_object(Bucket=bucket, Key=key, Body=b"")
    objects = list_inputs(s3, spec(f"s3://{bucket}/in"))
    assert [o.key for o in objects] == sorted(keys)  # more than one page of 1,000
    assert objects[0].rel == "deep/er/x.csv" and objects[0].size == 0


def test_manifest_reads_a_key_listed_twice_once(clients: ClientFactory, bucket: str) -> None:
    s3 = clients.client("s3")
    s3.put_object(Bucket=bucket, Key="m.json", Body=json.dumps(
        [{"prefix": f"s3://{bucket}/in/"}, "b.csv", "a.csv", "b.csv"]).encode())
    objects = list_inputs(s3, spec(f"s3://{bucket}/m.json", data_type="ManifestFile"))
    assert [(o.key, o.rel) for o in objects] == [("in/a.csv", "a.csv"), ("in/b.csv", "b.csv")]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "is not JSON"),
        (b"[]", "must be a JSON array"),
        (b'[{"prefix": "s3://bkt/"}, 3]', "element 1 is 3"),
    ],
)
def test_bad_manifests_say_what_is_wrong(clients: ClientFactory, bucket: str, body: bytes,
                                         fragment: str) -> None:
    s3 = clients.client("s3")
    s3.put_object(Bucket=bucket, Key="m.json", Body=body)
    with pytest.raises(TransformError, match=fragment):
        list_inputs(s3, spec(f"s3://{bucket}/m.json", data_type="ManifestFile"))


def test_missing_bucket_or_manifest_is_named(clients: ClientFactory, bucket: str) -> None:
    s3 = clients.client("s3")
    with pytest.raises(TransformError, match=r"cannot list s3://no-such-bucket-here/in/: "
                                             r"NoSuchBucket"):
        list_inputs(s3, spec("s3://no-such-bucket-here/in/"))
    with pytest.raises(TransformError, match=r"cannot read the manifest .*NoSuchKey"):
        list_inputs(s3, spec(f"s3://{bucket}/none.json", data_type="ManifestFile"))
