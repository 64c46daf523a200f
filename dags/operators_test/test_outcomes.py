"""Each message's fate from the models' outputs and per-record outcomes (no AWS)."""

from __future__ import annotations

from typing import Any


def _message(message_id: str, count: int) -> dict[str, Any]:
    return {"MessageId": message_id, "ReceiptHandle": f"rh-{message_id}", "Body": "{}",
            "Attributes": {"ApproximateReceiveCount": str(count)}}


def test_a_message_is_deleted_only_when_every_model_finished_every_object() -> None:
    from smserve_dags.operators.outcomes import message_fates

    expected = {"a": {"v/good.npy": "r/a/good.npy", "v/bad.npy": "r/a/bad.npy"},
                "b": {"v/good.npy": "r/b/good.npy", "v/bad.npy": "r/b/bad.npy"}}
    outcomes = {"a": {"r/a/bad.npy": {"status": "failed", "error": "InvalidInput",
                                      "message": "s3://x/v/bad.npy: shape (3, 5)"}}}
    fates = message_fates([_message("m1", 1), _message("m2", 3)],
                          {"m1": ["v/good.npy"], "m2": ["v/bad.npy"]}, expected,
                          {"r/a/good.npy", "r/b/good.npy"}, outcomes,
                          {"b": "its transform task is success"})
    good, bad = fates
    assert good.delete and not good.reasons
    assert not bad.delete and bad.receive_count == 3
    assert bad.reasons == (
        "a failed on v/bad.npy: InvalidInput: s3://x/v/bad.npy: shape (3, 5)",
        "b wrote no output for v/bad.npy (its transform task is success)")
    assert good.describe(3, "dlq", 60) == "message m1 (v/good.npy): deleted"
    text = bad.describe(3, "dlq", 60)
    assert "kept, back on the queue after its visibility timeout (60 s)" in text
    assert "received 3 of 3 time(s): the next failure sends it to the dead-letter queue dlq" \
        in text
    assert "received 3 of 5 time(s) before SQS moves it to dlq" in bad.describe(5, "dlq", 60)
    assert "no redrive policy" in bad.describe(0, "", 60)


def test_failed_reason_names_the_objects() -> None:
    from smserve_dags.operators.outcomes import failed_reason, note_key

    outcomes = [{"status": "written"}] * 2 + [
        {"status": "failed", "error": "InvalidInput", "message": f"s3://b/v/{i}.npy: bad"}
        for i in range(7)]
    reason = failed_reason(outcomes) or ""
    assert reason.startswith("7 of 9 record(s) failed")
    assert "InvalidInput: s3://b/v/0.npy: bad" in reason and "... and 2 more" in reason
    assert failed_reason([{"status": "written"}]) is None
    assert note_key("smserve-work/airflow/", "m1") == "smserve-work/airflow/notes/m1.json"
