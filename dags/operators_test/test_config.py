"""The settings Variable: defaults, required keys, and messages that name the fix."""

from __future__ import annotations

import json

import pytest


def test_dev_works_without_a_variable_and_main_says_what_to_set() -> None:
    from smserve_dags.config import ConfigError, parse_config

    dev = parse_config("dev", None)
    assert (dev.bucket, dev.queue, dev.max_messages) == ("smserve-dev",
                                                         "smserve-dev-preprocessed", 100)
    assert (dev.deferrable, dev.max_xcom_bytes) == (True, 48 * 2**20)
    assert parse_config("dev", {"deferrable": False}).deferrable is False
    with pytest.raises(ConfigError) as info:
        parse_config("main", None)
    assert "Airflow Variable smserve_main: is not set" in str(info.value)
    assert "airflow variables set smserve_main" in str(info.value)


@pytest.mark.parametrize(("raw", "expected"), [
    ({"bucket": "b", "queue": "q"}, "missing external_bucket"),
    ({"external_bucket": "e", "bucket": "b", "queue": "q", "max_mesages": 5},
     "unknown key(s) max_mesages"),
    ({"external_bucket": "e", "bucket": "b", "queue": "q", "max_messages": 0},
     "max_messages = 0 is out of range"),
    ({"external_bucket": "e", "bucket": "b", "queue": "q", "camera_angles": "front"},
     'camera_angles = "front" is not a list'),
    ({"external_bucket": "e", "bucket": "b", "queue": "q", "camera_angles": ["a/b"]},
     "camera_angles"),
    ({"external_bucket": "e", "bucket": "b", "queue": "q", "source_prefix": "{day}/"},
     "source_prefix = '{day}/' cannot be filled in"),
    ({"external_bucket": "e", "bucket": "b", "queue": "q", "max_wait_seconds": True},
     "max_wait_seconds = true is not a whole number or a number"),
    ({"external_bucket": "e", "bucket": "b", "queue": "q", "min_reschedule_seconds": -1},
     "min_reschedule_seconds = -1 is out of range; use 0..600"),
    ({"external_bucket": "e", "bucket": 7, "queue": "q"}, "bucket = 7 is not a string"),
    ({"external_bucket": "e", "bucket": "b", "queue": "q", "deferrable": "yes"},
     'deferrable = "yes" is not true or false'),
    ({"external_bucket": "e", "bucket": "b", "queue": "q", "deferrable": 1},
     "deferrable = 1 is not true or false"),
    ({"external_bucket": "e", "bucket": "b", "queue": "q", "transform_hold_seconds": 601},
     "transform_hold_seconds = 601 is out of range; use 0..600"),
    ({"external_bucket": "e", "bucket": "b", "queue": "q", "transform_hold_seconds": "60"},
     'transform_hold_seconds = "60" is not a whole number or a number'),
    ({"external_bucket": "e", "bucket": "b", "queue": "q", "max_xcom_bytes": 100},
     "max_xcom_bytes = 100 is out of range; use 1024..267386880"),
    ({"external_bucket": "e", "bucket": "b", "queue": "q", "max_xcom_bytes": 1e6},
     "max_xcom_bytes = 1000000.0 is not a whole number"),
    ({"external_bucket": "e", "bucket": "b", "queue": ""}, "queue is empty"),
    (["not", "an", "object"], "must be a JSON object"),
    ({"external_bucket": "e", "bucket": "b", "queue": "q", "images": {"cpu": "smserve-cpu:0.1.0"}},
     "images.cpu: image 'smserve-cpu:0.1.0' is not in ECR"),
    ({"external_bucket": "e", "bucket": "b", "queue": "q",
      "images": {"cpu": "123456789012.dkr.ecr.us-east-1.amazonaws.com/smserve-cpu"}},
     "has no tag or digest"),
    ({"external_bucket": "e", "bucket": "b", "queue": "q", "images": {"tpu": "x"}},
     "images has 'tpu'; the flavors are cpu and gpu"),
    ({"external_bucket": "e", "bucket": "b", "queue": "q", "model_environment": {"m": {"K": 1}}},
     "model_environment must map each model"),
])
def test_bad_settings_name_the_key(raw: object, expected: str) -> None:
    from smserve_dags.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as info:
        parse_config("main", raw)  # type: ignore[arg-type]
    assert expected in str(info.value)


def parse_config_dev_role() -> str:
    from smserve_dags.config import parse_config

    role: str = parse_config("dev", {"images": {
        "gpu": "123456789012.dkr.ecr.us-east-1.amazonaws.com/smserve-gpu@sha256:" + "a" * 64,
    }}).execution_role()
    return role


def test_load_config_reads_the_variable_and_refuses_text_that_is_not_json(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from smserve_dags.config import ConfigError, load_config

    monkeypatch.setenv("AIRFLOW_VAR_SMSERVE_MAIN", json.dumps(
        {"external_bucket": "e", "bucket": "b", "queue": "q", "camera_angles": ["top"]}))
    cfg = load_config("main")
    assert cfg.camera_angles == ("top",)
    assert cfg.sagemaker_model_prefix == "smserve-"
    with pytest.raises(ConfigError, match="role_arn is not set"):
        cfg.execution_role()
    assert parse_config_dev_role().endswith(":role/smserve-local")
    assert cfg.month_prefix(2026, 3, "top") == "videos/2026/03/top/"
    monkeypatch.setenv("AIRFLOW_VAR_SMSERVE_MAIN", "{oops")
    with pytest.raises(ConfigError, match="smserve_main: is not JSON"):
        load_config("main")


def test_reschedule_intervals_have_a_floor_the_variable_can_lower() -> None:
    from smserve_dags.config import parse_config

    cfg = parse_config("dev", {"poke_interval_seconds": 1, "transform_poll_seconds": 0.5})
    assert cfg.min_reschedule_seconds == 5
    assert cfg.interval(1, "reschedule") == 5, "faster than the scheduler keeps up"
    assert cfg.interval(60, "reschedule") == 60
    assert cfg.interval(1, "poke") == 1, "a poking task does not go through the scheduler"
    assert parse_config("dev", {"min_reschedule_seconds": 0}).interval(0.5, "reschedule") == 0.5
