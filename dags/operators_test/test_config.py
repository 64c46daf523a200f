"""The settings Variable: defaults, required keys, and messages that name the fix."""

from __future__ import annotations

import json

import pytest


def test_dev_works_without_a_variable_and_main_says_what_to_set() -> None:
    from config import ConfigError, parse_config

    dev = parse_config("dev", None)
    assert (dev.bucket, dev.queue, dev.max_messages) == ("smserve-dev",
                                                         "smserve-dev-preprocessed", 100)
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
    (["not", "an", "object"], "must be a JSON object"),
])
def test_bad_settings_name_the_key(raw: object, expected: str) -> None:
    from config import ConfigError, parse_config

    with pytest.raises(ConfigError) as info:
        parse_config("main", raw)  # type: ignore[arg-type]
    assert expected in str(info.value)


def test_load_config_reads_the_variable_and_refuses_text_that_is_not_json(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from config import ConfigError, load_config

    monkeypatch.setenv("AIRFLOW_VAR_SMSERVE_MAIN", json.dumps(
        {"external_bucket": "e", "bucket": "b", "queue": "q", "camera_angles": ["top"]}))
    cfg = load_config("main")
    assert cfg.camera_angles == ("top",)
    assert cfg.sagemaker_model("frame_features") == "smserve-frame-features"
    assert cfg.month_prefix(2026, 3, "top") == "videos/2026/03/top/"
    monkeypatch.setenv("AIRFLOW_VAR_SMSERVE_MAIN", "{oops")
    with pytest.raises(ConfigError, match="smserve_main: is not JSON"):
        load_config("main")
