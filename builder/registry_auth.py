"""Registry logins, as Docker keeps them: ECR's get_authorization_token for ECR registries, else
the Docker config (credential helpers, credsStore, base64 'auth' entries). Nothing is stored."""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from builder.ecr import ECR_HOST_RE, EcrApi
from builder.errors import BuilderError, UsageError
from builder.imageref import DOCKER_HUB, DOCKER_HUB_ALIASES, DOCKER_HUB_API, DOCKER_HUB_SERVER
from builder.registry_api import RegistryError


def docker_config_path() -> Path:
    folder = os.environ.get("DOCKER_CONFIG")
    return Path(folder) / "config.json" if folder else Path.home() / ".docker" / "config.json"


def docker_login(registry: str, config: Path | None = None) -> tuple[str, str] | None:
    """The login `docker login REGISTRY` stored: from the registry's credential helper
    (credHelpers, else credsStore) when the config names one, else a base64 'auth' entry."""
    path = config or docker_config_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise BuilderError(f"cannot read the Docker config {path}: {exc}") from None
    hub = registry in DOCKER_HUB_ALIASES
    # Docker files the Docker Hub login under https://index.docker.io/v1/, in helpers too.
    server = DOCKER_HUB_SERVER if hub else registry
    helpers = data.get("credHelpers") or {}
    keys = [DOCKER_HUB_SERVER, "index.docker.io", DOCKER_HUB, DOCKER_HUB_API] if hub else [registry]
    helper = next((helpers[k] for k in keys if isinstance(helpers.get(k), str)), None) or data.get("credsStore")
    if isinstance(helper, str) and re.match(r"^[a-z0-9][a-z0-9_.-]*$", helper):
        found = _helper_login(helper, server)
        if found:
            return found
    auths = data.get("auths") or {}
    names = [registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/", f"https://{registry}/v2/"]
    if hub:
        names += [DOCKER_HUB_SERVER, "index.docker.io", DOCKER_HUB, DOCKER_HUB_API]
    for name in names:
        entry = auths.get(name)
        if isinstance(entry, dict) and entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise BuilderError(f"{path}: the login for {registry} does not decode; run docker login {registry} again") from None
            return user, password
    return None


def _helper_login(helper: str, registry: str) -> tuple[str, str] | None:
    """Ask docker-credential-<helper> (the credential helper protocol: 'get', the server on
    stdin, JSON with Username and Secret on stdout); None when it has no login for it."""
    import shutil
    import subprocess

    program = shutil.which(f"docker-credential-{helper}")
    if program is None:
        return None
    try:
        answer = subprocess.run([program, "get"], input=registry, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if answer.returncode != 0:
        return None  # "credentials not found in native keychain" and the like
    try:
        data = json.loads(answer.stdout)
        return str(data["Username"]), str(data["Secret"])
    except (ValueError, KeyError, TypeError):
        raise BuilderError(f"docker-credential-{helper} answered something that is not a login for {registry}") from None


@dataclass
class Credentials:
    """Where logins come from: ECR's API for ECR registries (and for ``ecr_hosts``, e.g. a
    private endpoint), else the Docker config. Looked up once per registry, kept in memory."""

    ecr_hosts: frozenset[str] = frozenset()
    ecr_region: str | None = None
    ecr_endpoint_url: str | None = None
    docker_config: Path | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def is_ecr(self, registry: str) -> bool:
        return registry in self.ecr_hosts or bool(ECR_HOST_RE.match(registry))

    def login(self, registry: str) -> tuple[str, str] | None:
        if registry not in self._cache:
            try:
                self._cache[registry] = self._ecr_login(registry) if self.is_ecr(registry) \
                    else docker_login(registry, self.docker_config)
            except RegistryError as exc:
                self._cache[registry] = exc  # one failed login per registry, not one per image
        found = self._cache[registry]
        if isinstance(found, RegistryError):
            raise found
        return found

    def _ecr_login(self, registry: str) -> tuple[str, str]:
        """The AWS:<token> login from ECR's get_authorization_token. A refused or failed call
        (no credentials, expired session, no permission) is a login failure: exit 4, like any
        registry that refuses a login, so `lock --check` keeps exit 1 for drift alone."""
        try:
            api = EcrApi.connect(registry=registry if ECR_HOST_RE.match(registry) else None,
                                 region=self.ecr_region, endpoint_url=self.ecr_endpoint_url)
        except UsageError as exc:
            if "no AWS region" in str(exc):
                # botocore reads AWS_DEFAULT_REGION and the profile's region (not AWS_REGION).
                raise UsageError(f"no AWS region for the ECR login to {registry}: pass --region, "
                                 "or set AWS_DEFAULT_REGION or a region in your AWS profile") from None
            raise
        try:
            return api.authorization().basic()
        except UsageError:
            raise
        except BuilderError as exc:
            raise RegistryError(f"ECR login for {registry} failed: {exc}") from None
