"""ECR for the image commands: the repository (created if missing) and the registry login.

Thin wrappers over one boto3 call each, and the one-line errors that say what
to fix when AWS refuses (missing or expired credentials, missing permissions).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from serving._image_stream import one_line
from serving.errors import ImageError

_AUTH_CODES = {"UnrecognizedClientException", "InvalidClientTokenId", "InvalidSignatureException",
               "AuthFailure", "SignatureDoesNotMatch"}
_EXPIRED_CODES = {"ExpiredToken", "ExpiredTokenException", "RequestExpired"}
_DENIED_CODES = {"AccessDenied", "AccessDeniedException"}


@dataclass(frozen=True)
class RegistryLogin:
    """What ``GetAuthorizationToken`` gave: the registry and how to log in to it."""

    username: str
    password: str = ""
    registry: str = ""
    endpoint: str = ""

    def auth_config(self) -> dict[str, str]:
        """The Docker SDK's ``auth_config`` (sent as the ``X-Registry-Auth`` header)."""
        return {"username": self.username, "password": self.password,
                "serveraddress": self.registry}

    def __repr__(self) -> str:  # never show the password
        return f"RegistryLogin(username={self.username!r}, registry={self.registry!r})"


def aws_error(err: Exception, action: str, retry: str) -> ImageError:
    """One line for a failed AWS call, saying what to fix."""
    from botocore.exceptions import (
        ClientError,
        NoCredentialsError,
        PartialCredentialsError,
        TokenRetrievalError,
        UnauthorizedSSOTokenError,
    )

    if isinstance(err, NoCredentialsError | PartialCredentialsError):
        return ImageError(f"no AWS credentials to {action}; set AWS_PROFILE, or "
                          f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and rerun: {retry}")
    if isinstance(err, TokenRetrievalError | UnauthorizedSSOTokenError):
        return ImageError(f"the AWS credentials have expired ({one_line(str(err))}); refresh "
                          f"them (aws sso login) and rerun: {retry}")
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        text = one_line(str(err.response.get("Error", {}).get("Message", "")) or str(err))
        if code in _EXPIRED_CODES:
            return ImageError(f"the AWS credentials have expired ({code}); refresh them "
                              f"(aws sso login, or new session credentials) and rerun: {retry}")
        if code in _AUTH_CODES:
            return ImageError(f"AWS does not accept these credentials ({code}: {text}); check "
                              f"AWS_PROFILE / AWS_ACCESS_KEY_ID and rerun: {retry}")
        if code in _DENIED_CODES:
            return ImageError(f"not allowed to {action} ({text}); the caller needs the ECR "
                              "permissions CreateRepository, DescribeRepositories, "
                              "GetAuthorizationToken and the layer-upload ones")
        return ImageError(f"AWS refused to {action}: {code}: {text}")
    return ImageError(f"could not {action}: {one_line(str(err))}; check the network and "
                      f"AWS_ENDPOINT_URL, then rerun: {retry}")


def ensure_repository(ecr: Any, name: str) -> tuple[dict[str, Any], bool]:
    """The repository ``name``, created if missing (scan on push, immutable tags).

    Returns:
        ``(repository description, whether it was created now)``.
    """
    try:
        found = ecr.describe_repositories(repositoryNames=[name])["repositories"]
        return dict(found[0]), False
    except ecr.exceptions.RepositoryNotFoundException:
        pass
    try:
        created = ecr.create_repository(
            repositoryName=name,
            imageScanningConfiguration={"scanOnPush": True},
            imageTagMutability="IMMUTABLE",
        )
        return dict(created["repository"]), True
    except ecr.exceptions.RepositoryAlreadyExistsException:  # created meanwhile
        return dict(ecr.describe_repositories(repositoryNames=[name])["repositories"][0]), False


def registry_login(ecr: Any) -> RegistryLogin:
    """Decode ``GetAuthorizationToken``: user and password, and the registry's address."""
    data = ecr.get_authorization_token()["authorizationData"][0]
    try:
        decoded = base64.b64decode(data["authorizationToken"], validate=True).decode()
    except (ValueError, UnicodeDecodeError) as err:
        raise ImageError("ECR returned an authorization token that is not base64 "
                         "'user:password'") from err
    username, sep, password = decoded.partition(":")
    if not sep or not username:
        raise ImageError("ECR returned an authorization token without 'user:password'")
    endpoint = str(data.get("proxyEndpoint") or "")
    registry = re.sub(r"^[a-z]+://", "", endpoint).rstrip("/")
    if not registry:
        raise ImageError("ECR returned no proxyEndpoint with the authorization token")
    return RegistryLogin(username, password, registry, endpoint)


def repository_settings(repo: Mapping[str, Any]) -> str:
    """`` (tags immutable, scan on push on)``: what a repository is set to."""
    scan = bool((repo.get("imageScanningConfiguration") or {}).get("scanOnPush"))
    mutability = str(repo.get("imageTagMutability") or "MUTABLE").lower()
    return f" (tags {mutability}, scan on push {'on' if scan else 'off'})"
