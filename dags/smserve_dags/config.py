"""Settings of the pipeline DAGs: one JSON Airflow Variable per environment, read at run time.

Every DAG of one environment (``main``, ``dev``) reads the Variable
``smserve_<env>`` when a task runs, never when the file is parsed, so the
DAG files do no I/O at import and a changed setting applies to the next
task without a redeploy::

    airflow variables set smserve_main '{"external_bucket": "partner-videos",
        "bucket": "my-videos", "queue": "videos-preprocessed",
        "camera_angles": ["front", "rear"]}'

Keys (every one optional for ``dev``, whose defaults match
``local_test/airflow_setup.py``; ``main`` needs the three marked *):

=============================  ===========================================  ================
key                            meaning                                      default
=============================  ===========================================  ================
``external_bucket`` *          bucket the sync DAG copies from
``bucket`` *                   our bucket: copies, requests, outputs
``queue`` *                    SQS queue (name or URL) of new objects
``camera_angles``              one sync task per angle                      ``["front", "rear"]``
``source_prefix``              key prefix per month and angle (see below)   ``videos/...``
``output_prefix``              where model outputs go                       ``results/``
``work_prefix``                request files and transform outputs          ``smserve-work/...``
``sagemaker_model_prefix``     SageMaker models: prefix + name + digest      ``smserve-``
``images``                     ECR image URI per flavor (``cpu``, ``gpu``)   ``{}``
``role_arn``                   ``ExecutionRoleArn`` of the models            (dev: local)
``model_environment``          per model: container variables to add         ``{}``
``max_messages``               messages per inference run (> 10 is fine)    100
``max_wait_seconds``           run with what arrived after this long        120
``poke_interval_seconds``      between two looks at the queue               30
``receive_wait_seconds``       SQS long-poll wait per receive (0..20)       1
``visibility_timeout_seconds``  how long a batch stays invisible per model   1800
``transform_poll_seconds``     between two DescribeTransformJob calls       30
``transform_timeout_seconds``  a transform task gives up after this long    21600
``transform_hold_seconds``     poll the job in the task this long first     0
``min_reschedule_seconds``     floor of the two intervals above (reschedule) 5
``deferrable``                 wait in the triggerer (false: reschedule)    ``true``
``max_xcom_bytes``             largest batch (JSON) the sensor pushes       48 MiB
``aws_conn_id``                Airflow connection (null: boto3's defaults)  ``aws_default``
=============================  ===========================================  ================

``source_prefix`` is ``videos/{year:04d}/{month:02d}/{angle}/`` by default (filled
in per month and camera angle); ``work_prefix`` is ``smserve-work/airflow/``.

``deferrable`` (a JSON ``true``/``false``): with ``true`` the two waits (the
buffering sensor, each transform task) hand their worker slot back and
``defer()`` to a trigger the triggerer runs (:mod:`smserve_dags.triggers`; the
triggerer must be able to import ``smserve_dags``); with ``false`` they poke
in ``reschedule`` mode, every ``poke_interval_seconds`` /
``transform_poll_seconds`` but at least ``min_reschedule_seconds``.
``transform_hold_seconds`` > 0 makes each transform task poll its own job
(every ``transform_poll_seconds``) for that long before it defers or
reschedules: a job that ends sooner costs no defer, trigger and resume, about
two task hand-overs. Worth it where jobs last seconds (``dev`` on the
embedded stack); against SageMaker, whose jobs take minutes, 0 frees the
slot at once, as the provider's deferrable operators do.
``max_xcom_bytes`` bounds the XCom ``messages`` (each message as JSON);
a larger batch fails the sensor and deletes nothing.

The transform task creates each model itself, the way ``smserve pipeline run
--api`` does (:class:`serving.sagemaker.jobs.SageMakerJobs`): from ``images``
(``{"cpu": "<account>.dkr.ecr.<region>.amazonaws.com/smserve-cpu:0.1.0", ...}``,
what ``smserve image push`` printed; a tag or a digest is required) and
``role_arn`` (required outside ``dev``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

#: The Variable of environment ``env`` is ``VARIABLE_PREFIX + env``.
VARIABLE_PREFIX = "smserve_"
#: Keys ``main`` cannot do without.
REQUIRED = ("external_bucket", "bucket", "queue")

#: Names ``local_test/airflow_setup.py`` creates on the embedded stack.
DEV_DEFAULTS: dict[str, Any] = {
    "external_bucket": "smserve-dev-external",
    "bucket": "smserve-dev",
    "queue": "smserve-dev-preprocessed",
}


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names the Variable, the key and the fix."""


@dataclass(frozen=True)
class PipelineConfig:
    """One environment's settings; see the module docstring for the keys."""

    env: str
    external_bucket: str
    bucket: str
    queue: str
    camera_angles: tuple[str, ...] = ("front", "rear")
    source_prefix: str = "videos/{year:04d}/{month:02d}/{angle}/"
    output_prefix: str = "results/"
    work_prefix: str = "smserve-work/airflow/"
    sagemaker_model_prefix: str = "smserve-"
    max_messages: int = 100
    max_wait_seconds: float = 120.0
    poke_interval_seconds: float = 30.0
    receive_wait_seconds: int = 1
    visibility_timeout_seconds: int = 1800
    transform_poll_seconds: float = 30.0
    transform_timeout_seconds: float = 6 * 3600.0
    transform_hold_seconds: float = 0.0
    min_reschedule_seconds: float = 5.0
    deferrable: bool = True
    max_xcom_bytes: int = 48 * 2**20
    aws_conn_id: str | None = "aws_default"
    images: Mapping[str, str] = field(default_factory=dict)
    role_arn: str | None = None
    model_environment: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def interval(self, seconds: float, mode: str) -> float:
        """The wait between two pokes: ``seconds``, but never under the floor in reschedule mode.

        A rescheduled task goes back through the scheduler and the executor
        each time; faster than they keep up, they race (a poke that
        succeeded can be marked failed), so ``min_reschedule_seconds`` bounds it.
        """
        return max(seconds, self.min_reschedule_seconds) if mode == "reschedule" else seconds

    @property
    def variable(self) -> str:
        """The Variable these settings come from."""
        return VARIABLE_PREFIX + self.env

    def execution_role(self) -> str:
        """``role_arn``, or (``dev`` only) the embedded stack's placeholder role.

        Raises:
            ConfigError: not set outside ``dev``.
        """
        if self.role_arn:
            return self.role_arn
        if self.env == "dev":
            from serving.sagemaker.jobs import LOCAL_ROLE

            return LOCAL_ROLE
        raise _fail(self.variable, "role_arn is not set; set it to the SageMaker execution "
                                   "role's ARN (arn:aws:iam::<account>:role/<name>)")

    def month_prefix(self, year: int, month: int, angle: str) -> str:
        """The key prefix of one month of one camera angle."""
        return self.source_prefix.format(year=year, month=month, angle=angle)


_KINDS: dict[str, tuple[type, ...]] = {
    "external_bucket": (str,), "bucket": (str,), "queue": (str,), "camera_angles": (list,),
    "source_prefix": (str,), "output_prefix": (str,), "work_prefix": (str,),
    "sagemaker_model_prefix": (str,), "max_messages": (int,),
    "max_wait_seconds": (int, float), "poke_interval_seconds": (int, float),
    "receive_wait_seconds": (int,), "visibility_timeout_seconds": (int,),
    "transform_poll_seconds": (int, float), "transform_timeout_seconds": (int, float),
    "transform_hold_seconds": (int, float), "min_reschedule_seconds": (int, float),
    "aws_conn_id": (str, type(None)),
    "deferrable": (bool,), "max_xcom_bytes": (int,),
    "images": (dict,), "role_arn": (str, type(None)),
    "model_environment": (dict,),
}
_WORDS: dict[type, str] = {bool: "true or false", str: "a string", list: "a list",
                           dict: "a JSON object",
                           int: "a whole number",
                           float: "a number", type(None): "null"}
_RANGES: dict[str, tuple[float, float]] = {
    "max_messages": (1, 10_000), "max_wait_seconds": (0, 12 * 3600),
    "poke_interval_seconds": (0.1, 3600), "receive_wait_seconds": (0, 20),
    "visibility_timeout_seconds": (1, 12 * 3600), "transform_poll_seconds": (0.1, 3600),
    "transform_timeout_seconds": (1, 5 * 24 * 3600), "min_reschedule_seconds": (0, 600),
    "transform_hold_seconds": (0, 600),
    "max_xcom_bytes": (1024, 255 * 2**20),
}


def _fail(variable: str, message: str) -> ConfigError:
    return ConfigError(f"Airflow Variable {variable}: {message}")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _check(variable: str, key: str, given: object) -> Any:
    kinds = _KINDS[key]
    value: Any = given
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(given, kinds):
        wanted = " or ".join(_WORDS[k] for k in kinds)
        raise _fail(variable, f"{key} = {json.dumps(value)} is not {wanted}")
    if key in _RANGES:
        low, high = _RANGES[key]
        if not low <= value <= high:
            raise _fail(variable, f"{key} = {value} is out of range; use "
                                  f"{_number(low)}..{_number(high)}")
    if key == "camera_angles":
        if not value or not all(isinstance(a, str) and a and "/" not in a for a in value):
            raise _fail(variable, f"camera_angles = {json.dumps(value)} must be a non-empty "
                                  'list of names without "/", like ["front", "rear"]')
        return tuple(value)
    if key == "images":
        return _images(variable, value)
    if key == "model_environment":
        if not all(isinstance(m, dict) and all(isinstance(k, str) and isinstance(v, str)
                                               for k, v in m.items()) for m in value.values()):
            raise _fail(variable, "model_environment must map each model to an object of "
                                  'string variables, like {"clip_stats": {"K": "V"}}')
        return {str(k): dict(v) for k, v in value.items()}
    if key in ("external_bucket", "bucket", "queue") and not value.strip():
        raise _fail(variable, f"{key} is empty")
    if key == "source_prefix":
        try:
            value.format(year=2026, month=1, angle="front")
        except (KeyError, IndexError, ValueError) as err:
            raise _fail(variable, f"source_prefix = {value!r} cannot be filled in ({err}); "
                                  "it may use {year}, {month} and {angle}") from None
    return value


def _images(variable: str, value: Mapping[str, Any]) -> dict[str, str]:
    """``images``: flavor -> an ECR image URI with a tag or digest (never a local tag)."""
    from serving.errors import ConfigError as ServingConfigError
    from serving.imageuri import parse_image_uri

    out: dict[str, str] = {}
    for flavor, uri in value.items():
        if flavor not in ("cpu", "gpu"):
            raise _fail(variable, f"images has {flavor!r}; the flavors are cpu and gpu")
        if not isinstance(uri, str):
            raise _fail(variable, f"images.{flavor} = {json.dumps(uri)} is not a string")
        try:
            parse_image_uri(uri)
        except ServingConfigError as err:
            raise _fail(variable, f"images.{flavor}: {err.message}") from None
        out[flavor] = uri
    return out


def parse_config(env: str, raw: Mapping[str, Any] | None) -> PipelineConfig:
    """Check the Variable's value (None: not set) into settings.

    Raises:
        ConfigError: an unknown key, a bad value, or (for environments other
            than ``dev``) a missing required key; the message says what to set.
    """
    variable = VARIABLE_PREFIX + env
    defaults = DEV_DEFAULTS if env == "dev" else {}
    if raw is None and not defaults:
        example = json.dumps({k: f"<{k}>" for k in REQUIRED})
        raise _fail(variable, f"is not set; the {env} DAGs need at least "
                              f"{', '.join(REQUIRED)}: airflow variables set {variable} "
                              f"'{example}'")
    if raw is not None and not isinstance(raw, Mapping):
        raise _fail(variable, f"must be a JSON object of settings, not {json.dumps(raw)}")
    given = dict(raw or {})
    known = [f.name for f in fields(PipelineConfig) if f.name != "env"]
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise _fail(variable, f"unknown key(s) {', '.join(unknown)}; the keys are "
                              f"{', '.join(known)}")
    merged = {**defaults, **given}
    missing = [k for k in REQUIRED if k not in merged]
    if missing:
        raise _fail(variable, f"missing {', '.join(missing)}; set them in the Variable's "
                              "JSON object")
    return PipelineConfig(env=env, **{k: _check(variable, k, v) for k, v in merged.items()})


def load_config(env: str) -> PipelineConfig:
    """Read and check the Variable of ``env`` (call it in a task, never at import).

    Raises:
        ConfigError: the Variable is not JSON, or :func:`parse_config` refuses it.
    """
    from airflow.sdk import Variable

    variable = VARIABLE_PREFIX + env
    try:
        text = Variable.get(variable, default=None)
    except Exception as err:  # the metadata database or a secrets backend failed
        raise _fail(variable, f"cannot be read ({type(err).__name__}: {err})") from err
    raw = None
    if text is not None:
        try:
            raw = json.loads(text) if isinstance(text, str) else text
        except ValueError as err:
            raise _fail(variable, f"is not JSON ({err}); set it to a JSON object") from None
    return parse_config(env, raw)
