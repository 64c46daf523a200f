"""One check's state, and what every mode shares: the model's environment, the round trip.

Below both :mod:`serving.check.checker` (in-process) and
:mod:`serving.check.server` (real processes), so neither imports the other's
internals.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from serving import codecs
from serving.check.report import Failure, Report, Stage, describe, failure_of
from serving.check.sample import Sample
from serving.errors import PredictionError, SmserveError
from serving.modelspec import ModelSpec
from serving.settings import Settings

# --- environment ------------------------------------------------------------------------------


def model_environ(settings: Settings, spec: ModelSpec, stack_env: Mapping[str, str],
                   buckets: list[str]) -> dict[str, str | None]:
    """What changes in the environment while the model runs: the stack, the allow-list."""
    changes: dict[str, str | None] = {
        key: None for key in settings.environ
        if key.startswith("AWS_ENDPOINT_URL_") or key == "AWS_PROFILE"
    }
    changes.update(spec.container_environment())
    changes.update(stack_env)
    changes["SMSERVE_ALLOWED_BUCKETS"] = ",".join(buckets) or "*"
    changes["SETUPTOOLS_USE_DISTUTILS"] = settings.environ.get("SETUPTOOLS_USE_DISTUTILS",
                                                               "stdlib")
    return changes


def run_settings(settings: Settings, changes: Mapping[str, str | None]) -> Settings:
    """``settings`` with the environment ``changes`` applied (None removes a variable)."""
    env = dict(settings.environ)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return Settings.from_environ(env)


# --- the run ------------------------------------------------------------------------------


@dataclass
class Run:
    """What one check works on: the model, its sample, settings, report, environment."""


    folder: Path
    spec: ModelSpec
    sample: Sample
    settings: Settings
    report: Report
    env: dict[str, str | None] = field(default_factory=dict)
    clients: Any = None


def round_trip(report: Report, body: bytes, content_type: str, sample: Sample, folder: Path,
                handler: str, causes: Mapping[int, BaseException] | None = None
                ) -> list[Any] | None:
    """Decode the answer as the declared accept type; for S3 references, one per record.

    A record answered ``failed`` fails the check (:func:`record_failure`);
    ``causes`` (record index -> exception) keeps the model's traceback.
    """
    causes = causes or {}
    stage = Stage("decode as accept",
                  inputs=f"bytes ({len(body):,}) as {codecs.resolve_accept(sample.accept)!r}")
    report.stages.append(stage)
    started = time.perf_counter()
    try:
        value = codecs.decode(body, codecs.resolve_accept(sample.accept))
    except SmserveError as err:
        stage.ok = False
        report.failure = failure_of(handler, PredictionError(
            f"{handler} in {folder / 'serving.py'} answered {len(body):,} bytes of "
            f"{content_type!r} that do not decode as the declared accept type "
            f"{sample.accept!r} ({err.message}); encode the answer for accept, e.g. "
            "serving.codecs.encode(prediction, accept) or serving.s3refs.response(results)",
            handler=handler), folder, at_start=False)
        return None
    finally:
        stage.seconds = time.perf_counter() - started
    stage.output = describe(value)
    answers = value if isinstance(value, list) and codecs.normalize(
        sample.accept) == codecs.JSONLINES else [value]
    if sample.records is not None and len(answers) != len(sample.records):
        stage.ok = False
        report.failure = failure_of(handler, PredictionError(
            f"{handler} in {folder / 'serving.py'} answered {len(answers)} values for "
            f"{len(sample.records)} records; a batch transform needs one answer per record, "
            "in order (serving.s3refs.response(results) writes them)", handler=handler),
            folder, at_start=False)
        return None
    report.answers = answers
    if sample.records is not None:
        for index, answer in enumerate(answers):
            if isinstance(answer, dict) and answer.get("status") == "failed":
                stage.output = f"{describe(value)}; record {index} failed"
                report.failure = record_failure(index, answer, folder, causes.get(index))
                break
    return answers


def record_failure(index: int, answer: Mapping[str, Any], folder: Path,
                   cause: BaseException | None = None) -> Failure:
    """The check's failure for a record the model answered ``failed`` (a 200 answer).

    The error is rebuilt from the answer's code (its HTTP status is the one
    the record's error has); ``cause``, when the check saw the exception,
    keeps the model's frames for the trace.
    """
    import serving.errors as errors

    code = str(answer.get("error") or "PredictionError")
    kind: type[SmserveError] = PredictionError
    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, SmserveError) and value.code == code:
            kind = value
            break
    err = kind(f"record {index}: {answer.get('message') or 'failed'}", record=index)
    err.__cause__ = cause
    failure = failure_of("predict_fn", err, folder, at_start=False)
    return replace(failure, record=index, sagemaker=(
        "the container answers 200 with this record failed (the other records are written); "
        "in a batch transform the job completes, an error document is written beside the "
        "record's output, and a rerun retries only this record; the record's error:"))
