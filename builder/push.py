"""Push stage: a local image to Amazon ECR, every tag verified by digest.

For each tag: make sure the repository exists (looked up first, created with immutable tags and
scan on push when missing), get a fresh authorization token, push through the Docker engine while
checking every stream line, then take the manifest digest from the stream and require the registry
(``HEAD .../manifests/<tag>``) and ECR (``describe_images``) to report the same one, and the
manifest ECR holds to be this image's. Only then is the tag reported as pushed.

Transient failures (network, 5xx, throttling, an expired or refused token) are retried with
exponential backoff and a fresh token. A tag that already holds this very image is not pushed
again. "This very image": the digest ECR records is the local image ID (the containerd image store
names images by manifest digest) or one of its RepoDigests, or that manifest's config digest (or
its platform manifest's, for an index) is the local image ID (the classic store). On an immutable
repository a tag holding another image stops the push with ``TagConflict`` (exit code 3); with
exclusion filters the registry's answer to the push decides.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from builder.buildkit import sdk_client
from builder.ecr import EcrApi, Repository, check_registry, check_repository, check_tag
from builder.errors import BuilderError
from builder.push_stream import AUTH, FATAL, TAG_CONFLICT, LayerProgress, PushStreamError, read_push_stream
from builder.registry_api import RegistryUnreachable, manifest_digest

EXIT_TAG_CONFLICT = 3
MAX_BACKOFF_S = 60.0
# describe_images right after a push: ECR records the image when the manifest is accepted; a few
# short polls cover any lag in its read path rather than failing a good push.
RECORD_POLLS = 4
RECORD_POLL_S = 1.0


class TagConflict(BuilderError):
    """An immutable tag already holds a different image."""

    exit_code = EXIT_TAG_CONFLICT


@dataclass(frozen=True)
class PushRequest:
    """What to push: a local image and the (repository, tag) pairs it should get in the registry."""

    source: str  # a reference the local engine knows (the matrix entry's primary ref, or IMAGE)
    targets: tuple[tuple[str, str], ...]  # (repository, tag)

    def __post_init__(self):
        if not self.targets:
            raise BuilderError(f"nothing to push for {self.source}: no tags")
        for repository, tag in self.targets:
            check_repository(repository)
            check_tag(tag)


@dataclass(frozen=True)
class TagResult:
    ref: str  # registry/repository:tag
    repository: str
    tag: str
    digest: str  # verified: stream == registry == ECR
    outcome: str  # "pushed" | "already-present"
    attempts: int


@dataclass(frozen=True)
class PushResult:
    source: str
    image_id: str
    registry: str
    repositories: tuple[Repository, ...]
    tags: tuple[TagResult, ...]

    def to_dict(self) -> dict:
        return asdict(self)


def backoff_delay(attempt: int, base: float) -> float:
    """Exponential backoff with jitter: base, 2*base, 4*base ... (capped), each +-25%."""
    delay = min(base * (2 ** (attempt - 1)), MAX_BACKOFF_S)
    return delay * random.uniform(0.75, 1.25)


class Pusher:
    def __init__(
        self,
        ecr: EcrApi,
        docker_client=None,
        *,
        registry: str | None = None,
        immutable: bool = True,
        scan_on_push: bool = True,
        attempts: int = 4,
        retry_delay: float = 2.0,
        report: Callable[[str], None] = lambda line: None,
        show_progress: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.ecr = ecr
        self._docker = docker_client
        self.registry = check_registry(registry) if registry else None
        self.immutable = immutable
        self.scan_on_push = scan_on_push
        self.attempts = max(1, attempts)
        self.retry_delay = retry_delay
        self.report = report
        self.show_progress = show_progress
        self.sleep = sleep

    @property
    def docker(self):
        if self._docker is None:
            self._docker = sdk_client(timeout=600)
        return self._docker

    def push(self, request: PushRequest) -> PushResult:
        import docker

        try:
            image = self.docker.images.get(request.source)
        except docker.errors.ImageNotFound:
            raise BuilderError(
                f"image {request.source} is not in the local Docker engine: build it first (builder build NAME)"
            ) from None
        except docker.errors.APIError as exc:
            raise BuilderError(f"the Docker engine could not look up {request.source}: {exc.explanation or exc}") from None

        repos: dict[str, Repository] = {}
        for repository, _ in request.targets:
            if repository not in repos:
                repos[repository] = self.ecr.ensure_repository(
                    repository, immutable=self.immutable, scan_on_push=self.scan_on_push
                )
                self._describe_repository(repos[repository])
        # --registry wins; else the registry ECR names for these credentials (proxyEndpoint).
        registry = self.registry or check_registry(self.ecr.authorization().registry)
        results = tuple(
            self._push_tag(image, registry, repos[repository], tag) for repository, tag in request.targets
        )
        return PushResult(
            source=request.source,
            image_id=image.id,
            registry=registry,
            repositories=tuple(repos.values()),
            tags=results,
        )

    def _describe_repository(self, repo: Repository) -> None:
        state = "created" if repo.created else "exists"
        tags = "immutable" if repo.immutable else "mutable"
        if repo.exclusions:
            tags += f" (except tags matching {', '.join(repo.exclusions)})"
        scan = "scan on push" if repo.scan_on_push else "no scan on push"
        self.report(f"repository {repo.name}: {state}, {tags} tags, {scan}")
        if not repo.created and repo.immutable != self.immutable:
            self.report(f"warning: repository {repo.name} keeps its {tags} tags (existing settings are not changed)")

    # --- one tag ----------------------------------------------------------------------------

    def _push_tag(self, image, registry: str, repo: Repository, tag: str) -> TagResult:
        ref = f"{registry}/{repo.name}:{tag}"
        existing = self.ecr.image_digest(repo.name, tag)
        if existing:
            same = self._same_image(image, repo.name, existing)
            if same or repo.tag_immutable(tag):
                return self._adopt_existing(image, registry, repo, tag, existing, same)

        self.report(f"pushing {ref}")
        # The engine pushes by name: tag the image as registry/repository:tag for the push only.
        added_tag = ref not in image.tags
        try:
            image.tag(f"{registry}/{repo.name}", tag)
        except Exception as exc:  # docker.errors.APIError: the engine refused the tag
            raise BuilderError(f"could not tag the image as {ref}: {exc}") from None
        try:
            return self._push_tagged(image, registry, repo, tag)
        finally:
            if added_tag:
                try:
                    self.docker.images.remove(ref, noprune=True)
                except Exception:  # only a leftover name in the local engine
                    pass

    def _push_tagged(self, image, registry: str, repo: Repository, tag: str) -> TagResult:
        ref = f"{registry}/{repo.name}:{tag}"

        last_error = ""
        last_kind = FATAL
        refused = 0  # auth refusals: a fresh token fixes an expired one; a second refusal will not pass
        attempt = 0
        while attempt < self.attempts:
            attempt += 1
            auth = self.ecr.authorization()  # a fresh token each attempt: an expired one is a transient failure
            try:
                progress = LayerProgress(self.report) if self.show_progress else None
                stream = self.docker.api.push(
                    f"{registry}/{repo.name}", tag, stream=True, decode=True, auth_config=auth.docker_auth_config()
                )
                outcome = read_push_stream(stream, tag, progress)
                self._verify(registry, repo.name, tag, outcome.digest, auth)
                if not self._same_image(image, repo.name, outcome.digest):
                    raise BuilderError(
                        f"{ref} was pushed as {outcome.digest}, but the manifest ECR holds under that digest is not "
                        f"the local image {image.id}; another push may have raced this one"
                    )
                self.report(f"pushed {ref} {outcome.digest} (verified with the registry and ECR)")
                return TagResult(ref, repo.name, tag, outcome.digest, "pushed", attempt)
            except PushStreamError as exc:
                if exc.kind == TAG_CONFLICT:
                    existing = self.ecr.image_digest(repo.name, tag)
                    if existing:
                        return self._adopt_existing(image, registry, repo, tag, existing)
                    raise BuilderError(f"push of {ref} failed: {exc.message}") from None
                if exc.kind == FATAL:
                    raise BuilderError(f"push of {ref} failed: {exc.message}") from None
                last_error, last_kind = exc.message, exc.kind
                refused += exc.kind == AUTH
                if refused >= 2:
                    break
            except RegistryUnreachable as exc:
                last_error, last_kind = str(exc), "transient"
            except BuilderError:
                raise
            except Exception as exc:  # the engine connection itself (requests/docker errors)
                if not _engine_transient(exc):
                    raise BuilderError(f"push of {ref} failed: {_engine_message(exc)}") from None
                last_error, last_kind = _engine_message(exc), "transient"
            if attempt < self.attempts:
                delay = backoff_delay(attempt, self.retry_delay)
                self.report(
                    f"push of {ref} failed ({last_error}); retrying in {delay:.1f}s with a fresh token "
                    f"(attempt {attempt + 1} of {self.attempts})"
                )
                self.sleep(delay)
        hint = ""
        if last_kind == AUTH:
            hint = "; the registry refused the ECR token: check that --registry belongs to the account and region of your AWS credentials"
        raise BuilderError(f"push of {ref} failed after {attempt} attempts: {last_error}{hint}")

    def _verify(self, registry: str, repository: str, tag: str, digest: str, auth) -> None:
        """The digest from the push stream must be what the registry serves and what ECR records."""
        ref = f"{registry}/{repository}:{tag}"
        served = manifest_digest(registry, repository, tag, auth.basic())
        if served != digest:
            raise BuilderError(
                f"digest mismatch for {ref}: the push reported {digest} but the registry serves {served or 'nothing'}"
            )
        recorded = None
        for poll in range(RECORD_POLLS):
            recorded = self.ecr.image_digest(repository, tag)
            if recorded is not None:
                break
            if poll + 1 < RECORD_POLLS:
                self.sleep(RECORD_POLL_S)
        if recorded != digest:
            raise BuilderError(
                f"digest mismatch for {ref}: the push reported {digest} but ECR describe_images reports "
                f"{recorded or 'no image'}"
            )

    def _same_image(self, image, repository: str, digest: str) -> bool:
        """Whether the manifest ECR holds as ``digest`` is the local ``image`` (see the module docstring)."""
        if digest == image.id:
            return True
        if any(d.rpartition("@")[2] == digest for d in image.attrs.get("RepoDigests") or []):
            return True
        manifest = self.ecr.image_manifest(repository, digest=digest) or {}
        if (manifest.get("config") or {}).get("digest") == image.id:
            return True
        arch, os_name = image.attrs.get("Architecture"), image.attrs.get("Os")
        for child in manifest.get("manifests") or []:  # an index: the manifest for this image's platform
            platform = child.get("platform") or {}
            if platform.get("architecture") != arch or platform.get("os") != os_name or not child.get("digest"):
                continue
            sub = self.ecr.image_manifest(repository, digest=child["digest"]) or {}
            if (sub.get("config") or {}).get("digest") == image.id:
                return True
        return False

    def _adopt_existing(self, image, registry: str, repo: Repository, tag: str, existing: str,
                        same: bool | None = None) -> TagResult:
        """The tag already exists: fine only if it holds this image; on an immutable tag anything else is a conflict."""
        ref = f"{registry}/{repo.name}:{tag}"
        if not (self._same_image(image, repo.name, existing) if same is None else same):
            raise TagConflict(
                f"{ref} already holds a different image ({existing}) and the repository's tags are immutable: "
                f"give this image a new tag, or delete the old one from ECR first"
            )
        auth = self.ecr.authorization()
        served = manifest_digest(registry, repo.name, tag, auth.basic())
        if served != existing:
            raise BuilderError(
                f"digest mismatch for {ref}: ECR records {existing} but the registry serves {served or 'nothing'}"
            )
        self.report(f"{ref} already holds this image ({existing}); nothing to push")
        return TagResult(ref, repo.name, tag, existing, "already-present", 0)


def _engine_transient(exc: Exception) -> bool:
    import docker
    import requests

    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return True
    if isinstance(exc, docker.errors.APIError):
        return exc.is_server_error() and "does not exist" not in str(exc)
    return False


def _engine_message(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc).splitlines()[0] if str(explanation or exc) else type(exc).__name__
