"""AWS clients for the pipeline's tasks, from the amazon provider's hooks and one connection.

The connection (``aws_default`` unless the Variable says otherwise) carries
the credentials, the region and, for the embedded stack, ``endpoint_url`` in
its extra; nothing here knows which one it talks to. A connection that is
not defined is an error with the command that fixes it, not a silent switch
to boto3's defaults (the provider's hooks only log a warning).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cached_property
from typing import Any, TypeVar

from smserve_dags.config import ConfigError

__all__ = ["CONCURRENCY", "Aws", "at_once", "describe_error", "each", "error_code", "job_missing"]

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")

#: AWS calls a task makes at once (boto3 clients are thread-safe): enough to hide the round
#: trips of a batch's 10-entry SQS calls and per-object S3 calls, few enough for a small worker.
CONCURRENCY = 8


def each(call: Callable[[T], R], items: Iterable[T], limit: int = CONCURRENCY) -> list[R]:
    """``call(item)`` for every item, at most ``limit`` at once; the results in ``items``' order.

    Every call runs to its end; then the first exception, in ``items``' order,
    is raised (as a loop that went on past a failure would raise it).
    """
    todo = list(items)
    if len(todo) <= 1:
        return [call(item) for item in todo]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, min(limit, len(todo)))) as pool:
        futures = [pool.submit(call, item) for item in todo]
    return [f.result() for f in futures]


def at_once(first: Callable[[], R], second: Callable[[], S]) -> tuple[R, S]:
    """``(first(), second())``, the two run at the same time (``second`` in a thread).

    Both run to their end; then ``first``'s exception, else ``second``'s, is raised.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        later = pool.submit(second)
        try:
            result = first()
        except BaseException:
            later.exception()  # wait for it: nothing of this call runs on afterwards
            raise
    return result, later.result()


def error_code(err: BaseException) -> str:
    """The AWS error code of a botocore ``ClientError`` ("" for other errors)."""
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def describe_error(err: BaseException, limit: int = 1000) -> str:
    """A one-line reason for ``err``: AWS's code and message, or the exception's type and text."""
    code = error_code(err)
    if code:
        message = getattr(err, "response", {}).get("Error", {}).get("Message", "")
        text = f"{code}: {message}" if message else code
    else:
        text = getattr(err, "message", None) or f"{type(err).__name__}: {err}"
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def job_missing(err: BaseException) -> bool:
    """True when ``err`` is SageMaker saying that the transform job does not exist."""
    code = error_code(err)
    return code == "ResourceNotFound" or (code == "ValidationException"
                                          and "Could not find" in describe_error(err))


class Aws:
    """The hooks and clients of one Airflow connection.

    Args:
        conn_id: the Airflow connection; None uses boto3's default chain
            (the instance or task role, ``AWS_*`` variables).
        variable: the Variable that named the connection, for messages.
    """

    def __init__(self, conn_id: str | None, variable: str = "smserve_<env>") -> None:
        self.conn_id = conn_id
        self.variable = variable

    def check_connection(self) -> None:
        """Fail with what to do when the connection is not defined.

        Raises:
            ConfigError: no such connection.
        """
        if not self.conn_id:
            return
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            BaseHook.get_connection(self.conn_id)
        except AirflowNotFoundException:
            env_name = "AIRFLOW_CONN_" + self.conn_id.upper()
            raise ConfigError(
                f"Airflow connection {self.conn_id!r} is not defined; create it (airflow "
                f"connections add {self.conn_id} --conn-type aws --conn-extra "
                "'{\"region_name\": \"us-east-1\"}', or set " + env_name + "), or set "
                f"aws_conn_id to null in Variable {self.variable} to use boto3's default "
                "credentials") from None

    def check_bucket(self, bucket: str, key: str = "bucket") -> None:
        """Fail with what to do when ``bucket`` does not exist or cannot be read.

        Raises:
            ConfigError: S3 refused ``HeadBucket`` (no such bucket, no permission).
        """
        try:
            self.s3.head_bucket(Bucket=bucket)
        except Exception as err:
            code = error_code(err)
            if not code:
                raise
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise ConfigError(f"S3 bucket {bucket!r} does not exist; create it, or fix "
                                  f"{key!r} in Variable {self.variable}") from None
            raise ConfigError(f"S3 bucket {bucket!r} cannot be read ({describe_error(err)}); "
                              f"give connection {self.conn_id!r} access to it, or fix "
                              f"{key!r} in Variable {self.variable}") from None

    @cached_property
    def hook(self) -> Any:
        """The provider's ``AwsBaseHook`` of the connection (read once per task)."""
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        return AwsBaseHook(aws_conn_id=self.conn_id, client_type="s3")

    @cached_property
    def _session(self) -> Any:
        return self.hook.get_session(region_name=self.hook.region_name)

    def client(self, service: str) -> Any:
        """A boto3 client of ``service``, as the provider's hooks make it, from one session.

        The connection's region, credentials (or role to assume), botocore
        config, per-service ``endpoint_url`` and ``verify`` apply as in
        ``AwsBaseHook.get_conn()``; the clients share one session, so the
        connection is read and the credentials resolved once per task, and the
        provider's user-agent tag (it walks the call stack, about 0.1 s a
        client) is left out.
        """
        hook = self.hook
        return self._session.client(
            service, endpoint_url=hook.conn_config.get_service_endpoint_url(service),
            config=hook.config, verify=hook.verify)

    @cached_property
    def s3(self) -> Any:
        """A boto3 S3 client."""
        return self.client("s3")

    @cached_property
    def sqs(self) -> Any:
        """A boto3 SQS client."""
        return self.client("sqs")

    @cached_property
    def sagemaker(self) -> Any:
        """A boto3 SageMaker client."""
        return self.client("sagemaker")
