"""Message bodies: the sync DAG's shape, S3 event notifications, and what is wrong with the rest."""

from __future__ import annotations

import json
from typing import Any

import pytest


def _message(body: str, message_id: str = "m1", count: int = 1) -> dict[str, Any]:
    return {"MessageId": message_id, "ReceiptHandle": f"rh-{message_id}", "Body": body,
            "Attributes": {"ApproximateReceiveCount": str(count)}}


def test_both_shapes_name_objects() -> None:
    from smserve_dags.operators.messages import object_refs

    assert object_refs('{"bucket": "b", "key": "v/a.npy", "size": 3}') == [("b", "v/a.npy")]
    event = {"Records": [{"eventSource": "aws:s3", "s3": {
        "bucket": {"name": "b"}, "object": {"key": "v/clip+one%2B.npy"}}}]}
    assert object_refs(json.dumps(event)) == [("b", "v/clip one+.npy")]


@pytest.mark.parametrize(("body", "reason"), [
    ("not json", "the body is not JSON"),
    ("[1, 2]", "the body is JSON but not an object"),
    ('{"bucket": "b"}', "the body names no object"),
    ('{"Records": []}', "'Records' is not a non-empty list"),
    ('{"Records": [{"eventName": "x"}]}', "Records[0] is not an S3 event record"),
])
def test_bad_bodies_say_why(body: str, reason: str) -> None:
    from smserve_dags.operators.messages import object_refs

    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        object_refs(body)


def test_parse_batch_keeps_the_usable_messages_and_sets_the_rest_aside() -> None:
    from smserve_dags.operators.messages import batch_id, parse_batch

    messages = [
        _message('{"bucket": "b", "key": "v/a.npy"}', "m1"),
        _message('{"bucket": "b", "key": "v/a.npy"}', "m2"),  # the same object again
        _message('{"bucket": "b", "key": "v/gone.npy"}', "m3", count=3),
        _message('{"bucket": "other", "key": "v/b.npy"}', "m4"),
        _message("{", "m5", count=2),
    ]
    batch = parse_batch(messages, "b", exists=lambda keys: {"v/a.npy"})
    assert batch.keys == ["v/a.npy"]
    assert batch.message_ids == ["m1", "m2"]
    reasons = {b.message_id: (b.reason, b.receive_count) for b in batch.bad}
    assert reasons["m3"] == ("s3://b/v/gone.npy does not exist (was it deleted after the "
                             "message was sent?)", 3)
    assert "this pipeline reads bucket b" in reasons["m4"][0]
    assert reasons["m5"][1] == 2
    assert batch_id(["m2", "m1"]) == batch_id(["m1", "m2"]) != batch_id(["m1"])


def test_a_key_that_cannot_become_an_output_key_is_set_aside() -> None:
    from serving.pipeline import output_key

    from smserve_dags.operators.messages import parse_batch

    batch = parse_batch([_message('{"bucket": "b", "key": "../escape.npy"}')], "b",
                        check_key=lambda key: output_key("m", key))
    assert batch.keys == [] and "cannot be turned into an output key" in batch.bad[0].reason
