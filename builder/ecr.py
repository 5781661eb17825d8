"""The Amazon ECR API side of a push (boto3): repository, authorization token, image records.

The registry side (layers and manifests) goes through the Docker engine; see ``builder.push``.
The authorization token lives only in memory: it is handed to the engine in the push request
(X-Registry-Auth) and to the registry in an Authorization header, never printed, logged or
written to a docker config file (``docker login`` would store it on disk).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from datetime import datetime

from builder import imageref
from builder.errors import BuilderError, UsageError

# <account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]: the account and region are read from it.
ECR_HOST_RE = re.compile(
    r"^(?P<account>[0-9]{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9])\.amazonaws\.com(?:\.cn)?\Z"
)
# Any registry host[:port], repository and tag: the one reference grammar (ECR adds 2-256
# characters for a repository name).
REGISTRY_RE = imageref.REGISTRY_RE
REPOSITORY_RE = imageref.PATH_RE
TAG_RE = imageref.TAG_RE

# Manifest types a pushed single-platform image can have (Docker engine 20.10 pushes the first).
MANIFEST_MEDIA_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
)


def check_registry(registry: str) -> str:
    if not REGISTRY_RE.match(registry):
        raise UsageError(
            f"invalid --registry {registry!r}: expected a host[:port] such as 123456789012.dkr.ecr.us-east-1.amazonaws.com"
        )
    return registry.lower()


def check_repository(name: str) -> str:
    if not (2 <= len(name) <= 256 and REPOSITORY_RE.match(name)):
        raise UsageError(f"invalid repository name {name!r}: ECR needs 2-256 chars of [a-z0-9._-] parts joined by '/'")
    return name


def check_tag(tag: str) -> str:
    if not TAG_RE.match(tag):
        raise UsageError(f"invalid tag {tag!r}: up to 128 chars of [A-Za-z0-9_.-], not starting with '.' or '-'")
    return tag


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for one registry, from get_authorization_token. The password never shows in repr."""

    username: str
    password: str = field(repr=False)
    registry: str  # host of the proxyEndpoint ECR reported
    expires_at: datetime | None = None

    def docker_auth_config(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password}

    def basic(self) -> tuple[str, str]:
        return (self.username, self.password)


@dataclass(frozen=True)
class Repository:
    name: str
    uri: str
    immutable: bool  # the repository's rule for tags in general (IMMUTABLE or IMMUTABLE_WITH_EXCLUSION)
    scan_on_push: bool
    created: bool  # created by this run
    tag_mutability: str = ""  # ECR's imageTagMutability, as it reports it
    exclusions: tuple[str, ...] = ()  # imageTagMutabilityExclusionFilters: tags that follow the other rule

    def tag_immutable(self, tag: str) -> bool | None:
        """Whether ECR refuses to move ``tag``: True/False from the repository's settings, None
        when exclusion filters take part (the registry's answer to the push then decides, so a
        guess about ECR's wildcard matching can never turn into a wrong error)."""
        if self.tag_mutability in ("IMMUTABLE", "MUTABLE"):
            return self.tag_mutability == "IMMUTABLE"
        if not self.tag_mutability:
            return self.immutable
        return None


def _repository(answer: dict, created: bool) -> Repository:
    mutability = str(answer.get("imageTagMutability", "MUTABLE"))
    filters = answer.get("imageTagMutabilityExclusionFilters") or []
    return Repository(
        name=answer["repositoryName"],
        uri=answer.get("repositoryUri", ""),
        immutable=mutability.startswith("IMMUTABLE"),
        scan_on_push=bool(answer.get("imageScanningConfiguration", {}).get("scanOnPush", False)),
        created=created,
        tag_mutability=mutability,
        exclusions=tuple(str(f.get("filter", "")) for f in filters if isinstance(f, dict)),
    )


_DENIED_CODES = ("AccessDeniedException", "AccessDenied", "UnauthorizedOperation", "403")


def _client_error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _client_error_message(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Message", "")) or str(exc)


class EcrApi:
    """A small wrapper over the boto3 ECR client: one method per question the push asks.

    ``registry_id`` is the account named in an ECR registry host (None: the caller's account).
    Every botocore failure becomes a one-line ``BuilderError``; throttling and 5xx answers are
    retried by botocore itself (standard retry mode).
    """

    def __init__(self, client, registry_id: str | None = None):
        self.client = client
        self.registry_id = registry_id

    @classmethod
    def connect(
        cls, *, registry: str | None = None, region: str | None = None, endpoint_url: str | None = None
    ) -> "EcrApi":
        import boto3
        from botocore.config import Config

        account = None
        if registry:
            match = ECR_HOST_RE.match(registry)
            if match:
                account = match["account"]
                if region and region != match["region"]:
                    raise UsageError(f"--region {region} does not match the registry {registry} (region {match['region']})")
                region = match["region"]
        session = boto3.session.Session(region_name=region) if region else boto3.session.Session()
        if not session.region_name:
            raise UsageError(
                "no AWS region: pass --region, an ECR --registry (ACCOUNT.dkr.ecr.REGION.amazonaws.com) or set AWS_REGION"
            )
        config = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=60)
        client = session.client("ecr", endpoint_url=endpoint_url, config=config)
        return cls(client, account)

    def _call(self, operation: str, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return getattr(self.client, operation)(**kwargs)
        except NoCredentialsError:
            raise BuilderError(
                "no AWS credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or use an instance role)"
            ) from None
        except ClientError:
            raise  # callers handle the codes they expect; see _fail
        except BotoCoreError as exc:
            raise BuilderError(f"ECR {operation} failed: {exc}") from None

    @staticmethod
    def _fail(operation: str, exc: Exception) -> BuilderError:
        return BuilderError(f"ECR {operation} failed: {_client_error_code(exc)}: {_client_error_message(exc)}")

    # --- repository -------------------------------------------------------------------------

    def ensure_repository(self, name: str, *, immutable: bool = True, scan_on_push: bool = True) -> Repository:
        """The repository, created when missing; an existing one keeps its settings (read back,
        not changed). Looked up first: a CI role often may push but not create repositories."""
        from botocore.exceptions import ClientError

        check_repository(name)
        existing = self._describe_repository(name)
        if existing is not None:
            return _repository(existing, created=False)
        try:
            answer = self._call(
                "create_repository",
                **self._scope(),
                repositoryName=name,
                imageTagMutability="IMMUTABLE" if immutable else "MUTABLE",
                imageScanningConfiguration={"scanOnPush": scan_on_push},
            )
        except ClientError as exc:
            code = _client_error_code(exc)
            if code == "RepositoryAlreadyExistsException":  # another job made it just now
                existing = self._describe_repository(name)
                if existing is not None:
                    return _repository(existing, created=False)
            if code in _DENIED_CODES or "not authorized" in _client_error_message(exc):
                raise BuilderError(
                    f"ECR repository {name} does not exist and these credentials may not create it "
                    "(ecr:CreateRepository): create it once with an admin role, or grant that permission"
                ) from None
            raise self._fail("create_repository", exc) from None
        return _repository(answer["repository"], created=True)

    def _describe_repository(self, name: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            answer = self._call("describe_repositories", **self._scope(), repositoryNames=[name])
        except ClientError as exc:
            if _client_error_code(exc) == "RepositoryNotFoundException":
                return None
            raise self._fail("describe_repositories", exc) from None
        repositories = answer.get("repositories") or []
        return repositories[0] if repositories else None

    # --- authorization ----------------------------------------------------------------------

    def authorization(self) -> RegistryAuth:
        """A fresh registry token (valid 12 h on ECR). Decodes to 'AWS:<password>'."""
        from botocore.exceptions import ClientError

        kwargs = {"registryIds": [self.registry_id]} if self.registry_id else {}
        try:
            answer = self._call("get_authorization_token", **kwargs)
        except ClientError as exc:
            raise self._fail("get_authorization_token", exc) from None
        data = (answer.get("authorizationData") or [None])[0]
        if not data:
            raise BuilderError("ECR get_authorization_token returned no authorization data")
        try:
            username, password = base64.b64decode(data["authorizationToken"]).decode().split(":", 1)
        except (ValueError, KeyError, UnicodeDecodeError):
            raise BuilderError("ECR get_authorization_token returned a token that does not decode to USER:PASSWORD") from None
        endpoint = str(data.get("proxyEndpoint", ""))
        host = re.sub(r"^[a-z]+://", "", endpoint).rstrip("/")
        return RegistryAuth(username=username, password=password, registry=host, expires_at=data.get("expiresAt"))

    def _scope(self) -> dict[str, str]:
        return {"registryId": self.registry_id} if self.registry_id else {}

    # --- image records ----------------------------------------------------------------------

    def image_digest(self, repository: str, tag: str) -> str | None:
        """The manifest digest ECR records for repository:tag, or None when the tag is not there."""
        from botocore.exceptions import ClientError

        try:
            answer = self._call("describe_images", **self._scope(), repositoryName=repository, imageIds=[{"imageTag": tag}])
        except ClientError as exc:
            if _client_error_code(exc) == "ImageNotFoundException":
                return None
            raise self._fail("describe_images", exc) from None
        details = answer.get("imageDetails") or []
        return details[0].get("imageDigest") if details else None

    def image_manifest(self, repository: str, tag: str | None = None, *, digest: str | None = None) -> dict | None:
        """The manifest ECR holds for repository:tag (or @digest), parsed, or None when absent."""
        from botocore.exceptions import ClientError

        image_id = {"imageDigest": digest} if digest else {"imageTag": tag}
        try:
            answer = self._call(
                "batch_get_image",
                **self._scope(),
                repositoryName=repository,
                imageIds=[image_id],
                acceptedMediaTypes=list(MANIFEST_MEDIA_TYPES),
            )
        except ClientError as exc:
            raise self._fail("batch_get_image", exc) from None
        images = answer.get("images") or []
        if not images or not images[0].get("imageManifest"):
            return None
        try:
            return json.loads(images[0]["imageManifest"])
        except ValueError:
            return None
