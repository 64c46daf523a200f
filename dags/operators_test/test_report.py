"""The reporter's summary: one table for the models, why each one failed or was skipped."""

from __future__ import annotations

from typing import Any

DEPS = {"frame_features": [], "scene_classifier": ["frame_features"], "clip_stats": []}


def _model(name: str, status: str, **counts: Any) -> dict[str, Any]:
    return {"model": name, "status": status, "records": 2, "written": 0, "skipped": 0,
            "failed": 0, "reason": None, "job": f"smserve-{name}-1", "seconds": 1.5, **counts}


def test_a_failed_model_fails_the_run_and_explains_the_skipped_ones() -> None:
    from smserve_dags.operators.report import TaskOutcome, summarize

    outcomes = [
        TaskOutcome("wait_for_messages", "success", ["received 2 message(s)"]),
        TaskOutcome("wait_for_messages", "success", [["2 message(s): 2 usable", "detail"]]),
        TaskOutcome("frame_features.requests", "success"),
        TaskOutcome("frame_features.transform", "failed",
                    [_model("frame_features", "failed", failed=2,
                            reason="transform job x failed: ClientError: 403")]),
        TaskOutcome("scene_classifier.requests", "upstream_failed"),
        TaskOutcome("scene_classifier.transform", "upstream_failed"),
        TaskOutcome("clip_stats.requests", "success"),
        TaskOutcome("clip_stats.transform", "success", [_model("clip_stats", "done", written=2)]),
        TaskOutcome("delete_messages", "upstream_failed"),
    ]
    lines, problems = summarize("inference_dev run-1", outcomes, DEPS,
                                {"delete_messages": "messages stay"})
    text = "\n".join(lines)
    assert lines[0] == "inference_dev run-1: FAILED: frame_features failed"
    assert problems == ["frame_features failed"]
    assert "  wait_for_messages [success]: received 2 message(s)" in lines
    assert "      detail" in lines
    assert "transform job x failed: ClientError: 403" in text
    row = next(line for line in lines if line.split()[:1] == ["scene_classifier"])
    assert row.split()[1] == "skipped"
    assert "upstream frame_features failed" in text
    assert "delete_messages [upstream_failed]: not run: messages stay" in text
    assert [line.split()[0] for line in lines if line.startswith("  ") and
            line.split()[0] in DEPS] == list(DEPS), "one row per model, in graph order"


def test_a_task_that_crashed_without_a_report_is_a_problem() -> None:
    from smserve_dags.operators.report import TaskOutcome, summarize

    lines, problems = summarize("sync_data_dev run", [
        TaskOutcome("camera_angles", "success", ["camera angles: front"]),
        TaskOutcome("sync_current_month", "failed", []),
        TaskOutcome("sync_previous_month", "success", ["a", "b"]),
    ])
    assert problems == ["sync_current_month failed: see the task's log"]
    assert lines[0].startswith("sync_data_dev run: FAILED: sync_current_month failed")
    assert "  sync_previous_month [success]: a" in lines and "      b" in lines


def test_a_model_task_that_failed_without_a_report_is_named() -> None:
    from smserve_dags.operators.report import TaskOutcome, summarize

    lines, problems = summarize("r", [TaskOutcome("clip_stats.requests", "failed"),
                                      TaskOutcome("clip_stats.transform", "upstream_failed")],
                                {"clip_stats": []})
    assert problems == ["clip_stats failed"]
    assert any("clip_stats.requests failed without a report" in line for line in lines)


def test_report_message_pushes_the_report_xcom() -> None:
    from _support import FakeTI
    from smserve_dags.operators.report import fail, is_model_report, report_message

    ti = FakeTI()
    report_message(ti, ["one", "two"])
    assert ti.xcoms["report"] == ["one", "two"]
    assert is_model_report(_model("m", "done")) and not is_model_report({"model": "m"})
    try:
        fail(ti, "it broke")
    except Exception as err:
        assert type(err).__name__ == "AirflowFailException" and str(err) == "it broke"
    assert ti.xcoms["report"] == "it broke"


def test_a_mapped_task_shows_its_worst_instance() -> None:
    from smserve_dags.operators.report import task_state

    states = {"sync_current_month_0": "success", "sync_current_month_1": "failed",
              "sync_previous_month_0": "success", "camera_angles": "success"}
    assert task_state(states, "sync_current_month") == "failed"
    assert task_state(states, "sync_previous_month") == "success"
    assert task_state(states, "camera_angles") == "success"
    assert task_state(states, "report") is None
