"""Asking a registry (Docker Registry HTTP API v2 / OCI distribution) what a tag points to.

Used to cross-check the digest the engine reported after a push: ``HEAD /v2/<name>/manifests/<tag>``
answers with ``Docker-Content-Digest``, the digest of the manifest bytes the registry stores.
ECR takes basic auth with the ``AWS:<token>`` pair from get_authorization_token.
"""

from __future__ import annotations

import ipaddress

import requests

from builder.errors import BuilderError

ACCEPT = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
    )
)


def is_loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url(registry: str) -> str:
    """https, except for a loopback registry, which the Docker engine also reaches over plain http
    (it treats 127.0.0.0/8 as an insecure registry by default)."""
    return f"{'http' if is_loopback(registry) else 'https'}://{registry}"


class RegistryError(BuilderError):
    """A registry could not be asked (unreachable, refused the login, odd answer)."""

    exit_code = 4


class RegistryUnreachable(BuilderError):
    """The registry did not answer (connection refused, reset, timeout): worth another try."""


def manifest_digest(registry: str, repository: str, reference: str, auth: tuple[str, str], timeout: float = 30) -> str | None:
    """The registry's digest for repository:reference, or None when it has no such manifest."""
    url = f"{base_url(registry)}/v2/{repository}/manifests/{reference}"
    try:
        answer = requests.head(url, auth=auth, headers={"Accept": ACCEPT}, timeout=timeout, allow_redirects=True)
    except requests.RequestException as exc:
        raise RegistryUnreachable(f"cannot reach the registry at {registry} to check {repository}:{reference}: {type(exc).__name__}") from None
    if answer.status_code == 404:
        return None
    if answer.status_code in (401, 403):
        raise BuilderError(f"the registry at {registry} refused the ECR token when checking {repository}:{reference} (HTTP {answer.status_code})")
    if answer.status_code >= 500:
        raise RegistryUnreachable(f"the registry at {registry} answered HTTP {answer.status_code} when checking {repository}:{reference}")
    if answer.status_code != 200:
        raise BuilderError(f"the registry at {registry} answered HTTP {answer.status_code} when checking {repository}:{reference}")
    digest = answer.headers.get("Docker-Content-Digest")
    if not digest:
        raise BuilderError(f"the registry at {registry} gave no Docker-Content-Digest for {repository}:{reference}")
    return digest
