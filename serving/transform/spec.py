"""A transform job's specification, read from a ``CreateTransformJob``-shaped dict.

:class:`TransformJobSpec` is what every other part of the batch transform
(the data plane, the runners, later the SageMaker API of the embedded stack)
takes. It is built with :meth:`TransformJobSpec.from_request` from the same
dict boto3's ``create_transform_job`` takes, or with
:meth:`TransformJobSpec.simple`, and turned back into that dict with
:meth:`TransformJobSpec.to_request`. A bad value raises
:class:`~serving.errors.ConfigError` naming the field, the value and what is
allowed, before anything runs (the service's ``ValidationException``).

Fields the request leaves out stay ``None`` here, so the precedence rule
"request, then the container's ``/execution-parameters``, then defaults"
(:mod:`serving.transform.params`) can tell "not set" from "set to the default".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from serving.errors import ConfigError
from serving.transform import _validate as v
from serving.transform.dataprocessing import check_data_processing
from serving.transform.jsonpath import MAX_EXPRESSION, parse_path

S3_DATA_TYPES = ("S3Prefix", "ManifestFile")
COMPRESSION_TYPES = ("None", "Gzip")
SPLIT_TYPES = ("None", "Line", "RecordIO", "TFRecord")
BATCH_STRATEGIES = ("SingleRecord", "MultiRecord")
ASSEMBLE_WITH = ("None", "Line")
JOIN_SOURCES = ("None", "Input")

#: Defaults the service documents for what the request leaves out.
DEFAULT_TIMEOUT_S = 600
DEFAULT_MAX_RETRIES = 3
MAX_ENVIRONMENT = 16
MAX_PAYLOAD_TIMES_CONCURRENCY = 100

_TOP_LEVEL = {
    "TransformJobName", "ModelName", "TransformInput", "TransformOutput", "TransformResources",
    "MaxConcurrentTransforms", "MaxPayloadInMB", "BatchStrategy", "ModelClientConfig",
    "Environment", "DataProcessing", "Tags", "DataCaptureConfig", "ExperimentConfig",
}
_PASSTHROUGH = ("Tags", "DataCaptureConfig", "ExperimentConfig")
_ENV_KEY = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,1023}$")


def parse_s3_uri(uri: str, field_name: str = "S3Uri") -> tuple[str, str]:
    """Split ``s3://bucket/key/prefix`` into ``(bucket, "key/prefix")``.

    Raises:
        ConfigError: naming ``field_name`` when ``uri`` is not an ``s3://`` URI with a bucket.
    """
    text = uri if isinstance(uri, str) else ""
    match = re.fullmatch(r"s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(.*))?", text, re.DOTALL)
    if not match:
        raise ConfigError(f"{field_name}={uri!r} is not an S3 URI with a valid bucket name; use s3://BUCKET/PREFIX",
                          field=field_name, value=uri)
    return match.group(1), match.group(2) or ""


@dataclass(frozen=True)
class TransformJobSpec:
    """One batch transform job, validated.

    Attributes:
        name: ``TransformJobName``.
        model_name: ``ModelName``.
        input_uri: ``TransformInput.DataSource.S3DataSource.S3Uri``.
        output_uri: ``TransformOutput.S3OutputPath``.
        data_type: ``S3Prefix`` (every key starting with the prefix string) or
            ``ManifestFile``.
        content_type: sent as ``Content-Type`` on every invocation; None sends none.
        compression: ``None`` or ``Gzip`` (input decompressed before splitting).
        split_type: ``None``, ``Line``, ``RecordIO`` or ``TFRecord``.
        accept: sent as ``Accept`` on every invocation; None sends none.
        assemble_with: ``None`` (concatenate responses) or ``Line``.
        kms_key_id: passed to the output ``PutObject`` calls.
        instance_type: ``TransformResources.InstanceType``.
        instance_count: containers sharing the input objects.
        batch_strategy: ``SingleRecord`` / ``MultiRecord``; None = not in the request.
        max_payload_mb: 0..100 (0 = unlimited); None = not in the request.
        max_concurrent: concurrent invocations per container; None = not in the request.
        invocations_timeout: seconds per invocation, 1..3600; None = not set (600).
        invocations_max_retries: 0..3; None = not set (3).
        environment: the job's ``Environment`` (at most 16 entries).
        data_processing: ``DataProcessing`` as given, validated: the
            expressions (:mod:`serving.transform.jsonpath`) and, when it asks for
            more than the defaults, the rules of
            :func:`~serving.transform.dataprocessing.check_data_processing`.
        extra: ``Tags``, ``DataCaptureConfig``, ``ExperimentConfig`` as given.
    """

    name: str
    model_name: str
    input_uri: str
    output_uri: str
    data_type: str = "S3Prefix"
    content_type: str | None = None
    compression: str = "None"
    split_type: str = "None"
    accept: str | None = None
    assemble_with: str = "None"
    kms_key_id: str | None = None
    instance_type: str = "ml.m5.large"
    instance_count: int = 1
    batch_strategy: str | None = None
    max_payload_mb: int | None = None
    max_concurrent: int | None = None
    invocations_timeout: int | None = None
    invocations_max_retries: int | None = None
    environment: Mapping[str, str] = field(default_factory=dict, hash=False)
    data_processing: Mapping[str, Any] | None = field(default=None, hash=False)
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for name in ("environment", "extra"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        if self.data_processing is not None:
            object.__setattr__(self, "data_processing",
                               MappingProxyType(dict(self.data_processing)))
        self._validate()

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def from_request(cls, request: Mapping[str, Any]) -> TransformJobSpec:
        """Read a ``CreateTransformJob`` request dict.

        Raises:
            ConfigError: a field is missing, unknown or out of range; the message
                names the field path, the value and what is allowed.
        """
        v.need_mapping(request, "request")
        unknown = sorted(set(request) - _TOP_LEVEL)
        if unknown:
            raise ConfigError(f"unknown field(s) {', '.join(unknown)} in the request; "
                              f"allowed: {', '.join(sorted(_TOP_LEVEL))}", field=unknown[0])
        tin = v.req_mapping(request, "TransformInput", "TransformInput")
        source = v.req_mapping(tin, "DataSource", "TransformInput.DataSource")
        s3 = v.req_mapping(source, "S3DataSource", "TransformInput.DataSource.S3DataSource")
        tout = v.req_mapping(request, "TransformOutput", "TransformOutput")
        res = v.req_mapping(request, "TransformResources", "TransformResources")
        mcc = v.get_mapping(request, "ModelClientConfig", "ModelClientConfig")
        s3p = "TransformInput.DataSource.S3DataSource."
        return cls(
            name=v.req_str(request, "TransformJobName", "TransformJobName"),
            model_name=v.req_str(request, "ModelName", "ModelName"),
            input_uri=v.req_str(s3, "S3Uri", s3p + "S3Uri"),
            data_type=v.req_str(s3, "S3DataType", s3p + "S3DataType"),
            content_type=v.get_str(tin, "ContentType", "TransformInput.ContentType"),
            compression=v.get_str(tin, "CompressionType", "TransformInput.CompressionType")
            or "None",
            split_type=v.get_str(tin, "SplitType", "TransformInput.SplitType") or "None",
            output_uri=v.req_str(tout, "S3OutputPath", "TransformOutput.S3OutputPath"),
            accept=v.get_str(tout, "Accept", "TransformOutput.Accept"),
            assemble_with=v.get_str(tout, "AssembleWith", "TransformOutput.AssembleWith")
            or "None",
            kms_key_id=v.get_str(tout, "KmsKeyId", "TransformOutput.KmsKeyId"),
            instance_type=v.req_str(res, "InstanceType", "TransformResources.InstanceType"),
            instance_count=v.req_int(res, "InstanceCount", "TransformResources.InstanceCount"),
            batch_strategy=v.get_str(request, "BatchStrategy", "BatchStrategy"),
            max_payload_mb=v.get_int(request, "MaxPayloadInMB", "MaxPayloadInMB"),
            max_concurrent=v.get_int(request, "MaxConcurrentTransforms",
                                     "MaxConcurrentTransforms"),
            invocations_timeout=v.get_int(mcc, "InvocationsTimeoutInSeconds",
                                          "ModelClientConfig.InvocationsTimeoutInSeconds"),
            invocations_max_retries=v.get_int(mcc, "InvocationsMaxRetries",
                                              "ModelClientConfig.InvocationsMaxRetries"),
            environment=v.get_mapping(request, "Environment", "Environment") or {},
            data_processing=v.get_mapping(request, "DataProcessing", "DataProcessing"),
            extra={k: request[k] for k in _PASSTHROUGH if k in request},
        )

    @classmethod
    def simple(cls, name: str, model_name: str, input_uri: str, output_uri: str, *,
               content_type: str | None = "application/jsonlines",
               accept: str | None = "application/jsonlines",
               split_type: str = "Line", batch_strategy: str | None = "MultiRecord",
               max_payload_mb: int | None = 6, max_concurrent: int | None = None,
               assemble_with: str = "Line", compression: str = "None",
               data_type: str = "S3Prefix", instance_type: str = "ml.m5.large",
               instance_count: int = 1, invocations_timeout: int | None = None,
               invocations_max_retries: int | None = None, kms_key_id: str | None = None,
               environment: Mapping[str, str] | None = None,
               data_processing: Mapping[str, Any] | None = None) -> TransformJobSpec:
        """A spec from keyword arguments, with the defaults the pipeline uses.

        JSON lines in and out, one record per line, as many records per request
        as fit in 6 MB, one newline after each response.
        """
        return cls(name=name, model_name=model_name, input_uri=input_uri,
                   output_uri=output_uri, data_type=data_type, content_type=content_type,
                   compression=compression, split_type=split_type, accept=accept,
                   assemble_with=assemble_with, kms_key_id=kms_key_id,
                   instance_type=instance_type, instance_count=instance_count,
                   batch_strategy=batch_strategy, max_payload_mb=max_payload_mb,
                   max_concurrent=max_concurrent, invocations_timeout=invocations_timeout,
                   invocations_max_retries=invocations_max_retries,
                   environment=environment or {}, data_processing=data_processing)

    # --- derived values --------------------------------------------------------------------

    @property
    def input_bucket(self) -> str:
        """The bucket of ``input_uri``."""
        return parse_s3_uri(self.input_uri)[0]

    @property
    def input_prefix(self) -> str:
        """The key (prefix or manifest key) of ``input_uri``."""
        return parse_s3_uri(self.input_uri)[1]

    @property
    def timeout_s(self) -> int:
        """Seconds each invocation may take (600 unless the request says)."""
        return self.invocations_timeout or DEFAULT_TIMEOUT_S

    @property
    def max_retries(self) -> int:
        """Retries after a failed invocation (3 unless the request says)."""
        r = self.invocations_max_retries
        return DEFAULT_MAX_RETRIES if r is None else r

    def notes(self) -> list[str]:
        """Settings that are valid but have no effect, worth a line in the job log."""
        out = []
        if self.split_type == "None" and self.batch_strategy is not None:
            out.append(f"BatchStrategy={self.batch_strategy} has no effect with SplitType=None: "
                       "each object is sent whole, as one request")
        return out

    # --- back to the API shape ---------------------------------------------------------------

    def to_request(self) -> dict[str, Any]:
        """The ``CreateTransformJob`` request dict this spec was (or could be) read from."""
        tin: dict[str, Any] = {
            "DataSource": {"S3DataSource": {"S3DataType": self.data_type,
                                            "S3Uri": self.input_uri}},
            "CompressionType": self.compression,
            "SplitType": self.split_type,
        }
        if self.content_type is not None:
            tin["ContentType"] = self.content_type
        tout: dict[str, Any] = {"S3OutputPath": self.output_uri,
                                "AssembleWith": self.assemble_with}
        if self.accept is not None:
            tout["Accept"] = self.accept
        if self.kms_key_id is not None:
            tout["KmsKeyId"] = self.kms_key_id
        req: dict[str, Any] = {
            "TransformJobName": self.name,
            "ModelName": self.model_name,
            "TransformInput": tin,
            "TransformOutput": tout,
            "TransformResources": {"InstanceType": self.instance_type,
                                   "InstanceCount": self.instance_count},
        }
        optional = (("BatchStrategy", self.batch_strategy),
                    ("MaxPayloadInMB", self.max_payload_mb),
                    ("MaxConcurrentTransforms", self.max_concurrent))
        req.update({k: val for k, val in optional if val is not None})
        mcc = {k: val for k, val in (("InvocationsTimeoutInSeconds", self.invocations_timeout),
                                     ("InvocationsMaxRetries", self.invocations_max_retries))
               if val is not None}
        if mcc:
            req["ModelClientConfig"] = mcc
        if self.environment:
            req["Environment"] = dict(self.environment)
        if self.data_processing is not None:
            req["DataProcessing"] = dict(self.data_processing)
        req.update(dict(self.extra))
        return req

    # --- validation --------------------------------------------------------------------------

    def _validate(self) -> None:
        v.check_name(self.name, "TransformJobName")
        v.check_name(self.model_name, "ModelName")
        s3p = "TransformInput.DataSource.S3DataSource."
        v.check_choice(self.data_type, s3p + "S3DataType", S3_DATA_TYPES,
                       hint="AugmentedManifestFile is not supported by the local data plane")
        parse_s3_uri(self.input_uri, s3p + "S3Uri")
        v.check_len(self.input_uri, s3p + "S3Uri", 1024)
        if self.data_type == "ManifestFile" and not self.input_prefix:
            raise ConfigError(f"{s3p}S3Uri={self.input_uri!r} must name the manifest object "
                              "when S3DataType is ManifestFile", field=s3p + "S3Uri")
        parse_s3_uri(self.output_uri, "TransformOutput.S3OutputPath")
        v.check_len(self.output_uri, "TransformOutput.S3OutputPath", 1024)
        v.check_choice(self.compression, "TransformInput.CompressionType", COMPRESSION_TYPES)
        v.check_choice(self.split_type, "TransformInput.SplitType", SPLIT_TYPES)
        v.check_choice(self.assemble_with, "TransformOutput.AssembleWith", ASSEMBLE_WITH)
        for value, name in ((self.content_type, "TransformInput.ContentType"),
                            (self.accept, "TransformOutput.Accept"),
                            (self.kms_key_id, "TransformOutput.KmsKeyId")):
            if value is not None:
                v.check_len(value, name, 2048 if name.endswith("KmsKeyId") else 256)
        if self.batch_strategy is not None:
            v.check_choice(self.batch_strategy, "BatchStrategy", BATCH_STRATEGIES)
        if not self.instance_type.startswith("ml."):
            raise ConfigError(f"TransformResources.InstanceType={self.instance_type!r} is not "
                              "an instance type; use one like ml.m5.large",
                              field="TransformResources.InstanceType")
        v.check_range(self.instance_count, "TransformResources.InstanceCount", 1, None)
        v.check_range(self.max_payload_mb, "MaxPayloadInMB", 0, 100,
                      hint="0 means no limit")
        v.check_range(self.max_concurrent, "MaxConcurrentTransforms", 0, None,
                      hint="0 lets the container or the default (1) decide")
        v.check_range(self.invocations_timeout, "ModelClientConfig.InvocationsTimeoutInSeconds",
                      1, 3600)
        v.check_range(self.invocations_max_retries, "ModelClientConfig.InvocationsMaxRetries",
                      0, 3)
        if self.max_payload_mb and self.max_concurrent:
            product = self.max_payload_mb * self.max_concurrent
            if product > MAX_PAYLOAD_TIMES_CONCURRENCY:
                raise ConfigError(
                    f"MaxConcurrentTransforms={self.max_concurrent} x MaxPayloadInMB="
                    f"{self.max_payload_mb} = {product} is over {MAX_PAYLOAD_TIMES_CONCURRENCY}; "
                    "lower one of them", field="MaxConcurrentTransforms", value=product)
        self._validate_environment()
        if self.data_processing is not None:
            self._validate_data_processing(self.data_processing)
            if self.has_data_processing():
                check_data_processing(self)

    def _validate_environment(self) -> None:
        if len(self.environment) > MAX_ENVIRONMENT:
            raise ConfigError(f"Environment has {len(self.environment)} entries; at most "
                              f"{MAX_ENVIRONMENT} are allowed", field="Environment")
        for key, value in self.environment.items():
            if not isinstance(key, str) or not _ENV_KEY.match(key):
                raise ConfigError(f"Environment key {key!r} is not a variable name; use "
                                  "[a-zA-Z_][a-zA-Z0-9_]*", field="Environment", value=key)
            if not isinstance(value, str):
                raise ConfigError(f"Environment[{key!r}]={value!r} must be a string",
                                  field=f"Environment.{key}", value=value)
            v.check_len(value, f"Environment[{key!r}]", 10240, low=0)

    @staticmethod
    def _validate_data_processing(dp: Mapping[str, Any]) -> None:
        allowed = {"InputFilter", "OutputFilter", "JoinSource"}
        unknown = sorted(set(dp) - allowed)
        if unknown:
            raise ConfigError(f"unknown field(s) {', '.join(unknown)} in DataProcessing; "
                              f"allowed: {', '.join(sorted(allowed))}", field="DataProcessing")
        for name in ("InputFilter", "OutputFilter"):
            if name in dp:
                value = v.get_str(dp, name, f"DataProcessing.{name}") or ""
                v.check_len(value, f"DataProcessing.{name}", MAX_EXPRESSION, low=0)
                parse_path(value, f"DataProcessing.{name}")
        if "JoinSource" in dp:
            v.check_choice(v.get_str(dp, "JoinSource", "DataProcessing.JoinSource"),
                           "DataProcessing.JoinSource", JOIN_SOURCES)

    def has_data_processing(self) -> bool:
        """True when ``DataProcessing`` asks for anything but the defaults ($, None, $)."""
        dp = self.data_processing or {}
        return (dp.get("InputFilter", "$") not in ("$", "")
                or dp.get("OutputFilter", "$") not in ("$", "")
                or dp.get("JoinSource", "None") != "None")
