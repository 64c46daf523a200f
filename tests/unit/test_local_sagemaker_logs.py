"""A job's CloudWatch log: streams per container, batched PutLogEvents, never fatal."""

from __future__ import annotations

from typing import Any

from serving.local.sagemaker.logs import LOG_GROUP, JobLog, _batches, instance_id


class RecordingLogs:
    """Keeps what PutLogEvents was given (the calls a CloudWatch Logs client gets)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.streams: dict[str, list[str]] = {}
        self.calls = 0

    def create_log_group(self, logGroupName: str) -> None:
        assert logGroupName == LOG_GROUP

    def create_log_stream(self, logGroupName: str, logStreamName: str) -> None:
        self.streams.setdefault(logStreamName, [])

    def put_log_events(self, logGroupName: str, logStreamName: str,
                       logEvents: list[dict[str, Any]]) -> None:
        if self.fail:
            raise RuntimeError("no logs today")
        self.calls += 1
        stamps = [e["timestamp"] for e in logEvents]
        assert stamps == sorted(stamps)
        self.streams[logStreamName] += [e["message"] for e in logEvents]


def test_lines_go_to_their_streams_in_few_calls() -> None:
    client = RecordingLogs()
    ids = [instance_id("arn:job", 0), instance_id("arn:job", 1)]
    log = JobLog(lambda: client, "job", ids, interval=60)
    for i in range(500):
        log.container(f"[container {i % 2}] line {i}")
    log.data("s3://b/k: record 3 (request 1 of 1): ServerError: 500 after 1 try: boom")
    log.container("no prefix: goes to the data log")
    log.close()
    assert client.streams[f"job/{ids[0]}"][:2] == ["line 0", "line 2"]
    assert len(client.streams[f"job/{ids[1]}"]) == 250
    assert client.streams["job/data-log"][1] == "no prefix: goes to the data log"
    assert client.calls == 3
    assert log.streams() == [f"job/{ids[0]}", f"job/{ids[1]}", "job/data-log"]


def test_instance_ids_look_like_ec2_and_sort_by_container() -> None:
    ids = [instance_id("arn:aws:sagemaker:us-east-1:1:transform-job/j", i) for i in range(12)]
    assert all(len(i) == 19 and i.startswith("i-") for i in ids)
    assert ids == sorted(ids)


def test_batches_respect_the_put_log_events_limits() -> None:
    events = [{"timestamp": i, "message": "x" * 1000} for i in range(2500)]
    batches = _batches(events)
    assert [len(b) for b in batches] == [1022, 1022, 456]
    assert all(sum(len(e["message"]) + 26 for e in b) <= 1_048_576 for b in batches)
    assert sum(len(b) for b in _batches([{"timestamp": 0, "message": "y"}] * 25_000)) == 25_000


def test_a_broken_log_never_raises() -> None:
    log = JobLog(lambda: RecordingLogs(fail=True), "job", ["i-1"], interval=60)
    log.data("still fine")
    log.close()
