"""A model's ``ModelDataUrl``: fetched from S3 and extracted safely into ``model/``.

Used by the embedded stack's transform jobs and by ``smserve replay``. Every
problem raises :class:`~serving.errors.TransformError` whose message is a
``FailureReason``: what happened and what to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from serving import diskspace
from serving.errors import ConfigError, NoSpaceError, TransformError
from serving.transform.spec import parse_s3_uri

ARCHIVE = "model.tar.gz"
_FIX = ("build it with `smserve package models/NAME -o model.tar.gz`, upload it, and create "
        "the model again with that ModelDataUrl")


def _failure(text: str, url: str | None) -> TransformError:
    return TransformError(f"ClientError: {text}", reason="ClientError", uri=url)


def model_data_url(container: Mapping[str, Any]) -> str:
    """The container's ``ModelDataUrl``.

    Raises:
        TransformError: it has none (or only a ``ModelDataSource``, not supported locally).
    """
    url = container.get("ModelDataUrl")
    if url:
        return str(url)
    if container.get("ModelDataSource"):
        raise _failure("the model uses ModelDataSource (uncompressed model data), which the "
                       "embedded stack does not run; package the model as model.tar.gz and "
                       "set PrimaryContainer.ModelDataUrl instead", None)
    raise _failure("the model has no ModelDataUrl; local containers run the model's code "
                   f"from model.tar.gz (code/serving.py): {_FIX}", None)


def fetch_model(s3: Any, container: Mapping[str, Any], workdir: Path,
                program: str = "serving.py") -> Path:
    """Download the container's ``ModelDataUrl`` and extract it into ``workdir/model``.

    Args:
        s3: a boto3 S3 client.
        container: the model's container definition.
        workdir: a private folder; the archive and ``model/`` go there.
        program: the handler module the archive must hold under ``code/``.

    Returns:
        the extracted model folder (what goes to ``/opt/ml/model``).

    Raises:
        TransformError: no URL, an object that cannot be read, an archive that
            is not a ``.tar.gz``, holds an unsafe member (``../``, an absolute
            path, a link out, a device) or has no ``code/<program>``.
    """
    url = model_data_url(container)
    try:
        bucket, key = parse_s3_uri(url, "ModelDataUrl")
    except ConfigError as err:
        raise _failure(f"ModelDataUrl {url!r} is not an s3:// URI of an object; {_FIX}",
                       url) from err
    if not key or key.endswith("/"):
        raise _failure(f"ModelDataUrl {url} names a prefix, not a model.tar.gz object; {_FIX}",
                       url)
    archive = workdir / ARCHIVE
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with open(archive, "wb") as out:
            s3.download_fileobj(bucket, key, out)
    except Exception as err:
        if diskspace.is_full(err):
            archive.unlink(missing_ok=True)
            raise _failure(diskspace.no_space(workdir, _size(s3, bucket, key),
                                              f"the model data {url}").message, url) from err
        raise _failure(f"Could not download model data from {url}: {_code(err)}. Make sure "
                       f"the object exists (aws s3 ls {url}); if it does not, {_FIX}",
                       url) from err
    from serving.package import extract_archive

    try:
        model_dir = extract_archive(archive, workdir / "model")
    except NoSpaceError as err:
        raise _failure(err.message, url) from err
    except ConfigError as err:
        text = err.message.replace(str(archive), url)
        raise _failure(f"the {text}, upload it and create the model and the job again",
                       url) from err
    finally:
        archive.unlink(missing_ok=True)
    if not (model_dir / "code" / program).is_file():
        raise _failure(f"model data {url} has no code/{program}; the archive must hold the "
                       f"handlers under code/ (SAGEMAKER_PROGRAM names the file): {_FIX}", url)
    return model_dir


def _size(s3: Any, bucket: str, key: str) -> int | None:
    try:
        return int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
    except Exception:  # only for the message: unknown is fine
        return None


def _code(err: Exception) -> str:
    response = getattr(err, "response", None) or {}
    error = response.get("Error", {})
    code = str(error.get("Code") or type(err).__name__)
    if code in ("404", "NoSuchKey"):
        return "404 Not Found (no such object)"
    if code == "NoSuchBucket":
        return "NoSuchBucket (no such bucket)"
    return code
