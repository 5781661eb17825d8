"""Reproducible bases: resolve each base image tag to its digest and keep it in a lock file.

``builder lock`` asks the registry, through the OCI distribution API, which manifest each base
tag points to today and writes ``matrix.lock.json`` beside the matrix. While that file exists,
loading the matrix pins every locked base to ``image:tag@sha256:...`` (so rendering writes
``FROM image:tag@sha256:...`` and an ``org.opencontainers.image.base.digest`` label), and
``builder lock --check`` tells which tags have moved since.

Registry protocol (distribution spec, "Pulling manifests"; Docker token authentication):
``HEAD /v2/<repo>/manifests/<tag>`` with an Accept header listing the four manifest types, so
that a multi-platform tag answers with its index (manifest list) digest rather than one
platform's; the digest is ``Docker-Content-Digest``, checked against the sha256 of the bytes
whenever they are fetched. A 401 carries a ``WWW-Authenticate`` challenge: ``Bearer realm=...,
service=...,scope=...`` (fetch a token from the realm, anonymously or with the user's login) or
``Basic`` (send the login). Logins come from ECR's get_authorization_token for ECR registries
(boto3) and from the Docker config file (``docker login``) for others; nothing is stored. A
login the token service refuses (a stale ``docker login``) falls back to an anonymous token, as
public images need none. ``--check`` only HEADs (Docker Hub counts GETs as pulls); ``lock`` GETs
an index once to record its platforms.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping
from urllib.parse import urlsplit

import requests

from builder import imageref
from builder.ecr import ECR_HOST_RE, EcrApi
from builder.errors import BuilderError, UsageError
from builder.lockfile import (  # noqa: F401 (the lock file model, re-exported for `builder lock`)
    DIGEST_RE,
    LOCK_SCHEMA,
    LockEntry,
    bases_in_use,
    lock_gaps,
    lock_path,
    lock_text,
    pin,
    pin_specs,
    read_lock,
    tag_ref,
)
from builder.registry_api import ACCEPT, base_url, is_loopback

INDEX_TYPES = (
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
)
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
# Names Docker itself treats as Docker Hub (the CLI's default index and its historical hosts).
DOCKER_HUB_ALIASES = frozenset({DOCKER_HUB, "index.docker.io", DOCKER_HUB_API})
# Where `docker login` (and Docker Desktop, pass, secretservice) keeps the Docker Hub login.
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
# Far beyond any real manifest or index (NGC's multi-platform indexes are a few KiB); a bigger
# answer is not a manifest, so it is not read into memory.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


# --- references ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    registry: str  # as written (docker.io when none)
    repository: str  # path in the registry (library/ added for Docker Hub's official images)
    tag: str
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Reference":
        ref = imageref.require(text, "an image reference like registry/repo:tag (lowercase repository path)")
        registry = ref.registry.lower() if ref.registry else DOCKER_HUB
        path = ref.path
        if registry in DOCKER_HUB_ALIASES:
            registry = DOCKER_HUB
            if "/" not in path:  # Docker Hub's official images live under library/
                path = f"library/{path}"
        return cls(registry, path, ref.tag or "latest", ref.digest)

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def url(self) -> str:
        return base_url(self.api_host)


# --- credentials -------------------------------------------------------------------------------------


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


# --- the registry ------------------------------------------------------------------------------------


class RegistryError(BuilderError):
    """A registry could not be asked (unreachable, refused the login, odd answer)."""

    exit_code = 4


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """'Bearer realm="https://auth",service="reg",scope="repository:x:pull"' -> ('bearer', {...}).
    Values may also be bare tokens (RFC 7235 auth-param: token / quoted-string)."""
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): quoted or bare
              for k, quoted, bare in re.findall(r'([A-Za-z_]+)\s*=\s*(?:"([^"]*)"|([^\s,"]*))', rest)}
    return scheme.lower(), params


@dataclass(frozen=True)
class Resolved:
    ref: str  # the tag reference as the matrix writes it
    digest: str
    media_type: str
    platforms: Mapping[str, str] = field(default_factory=dict)  # os/arch -> manifest digest (indexes)

    def to_dict(self) -> dict:
        out = {"digest": self.digest, "media_type": self.media_type}
        if self.platforms:
            out["platforms"] = dict(sorted(self.platforms.items()))
        return out


class RegistryClient:
    """Resolves tags to digests; one requests session, one token per (registry, repository)."""

    def __init__(self, credentials: Credentials | None = None, timeout: float = 30,
                 session: requests.Session | None = None, warn: Callable[[str], None] = lambda _: None):
        self.credentials = credentials or Credentials()
        self.timeout = timeout
        self.session = session or requests.Session()
        self.warn = warn
        self._auth: dict[tuple[str, str], dict[str, str]] = {}
        self._refused: set[str] = set()  # registries whose token service refused the user's login

    def resolve(self, text: str, platforms: bool = False, known: "LockEntry | None" = None) -> Resolved | None:
        """Digest of the manifest (or index) text points to; None when the registry has no such tag.

        A HEAD that names the digest is the whole answer: Docker Hub counts a manifest GET as a
        pull (its anonymous limit is per hour), a HEAD not. The bytes are fetched only when the
        registry sends no usable digest, or, with ``platforms``, to list a new index's platforms
        (``known``: the lock's entry, whose platforms stand while the digest is unchanged)."""
        ref = Reference.parse(text)
        path = f"/v2/{ref.repository}/manifests/{ref.tag}"
        answer = self._request("HEAD", ref, path)
        if answer.status_code == 404:
            return None
        self._expect_ok(answer, ref, text)
        digest = answer.headers.get("Docker-Content-Digest", "")
        media_type = answer.headers.get("Content-Type", "").split(";")[0].strip()
        if DIGEST_RE.match(digest) and media_type:
            if media_type not in INDEX_TYPES or not platforms:
                return Resolved(text, digest, media_type)
            if known is not None and known.digest == digest and known.platforms:
                return Resolved(text, digest, media_type, dict(known.platforms))
        # Fetch the bytes: the digest is their sha256, and an index lists its platforms.
        body = self._request("GET", ref, path, stream=True)
        if body.status_code == 404:
            body.close()
            return None
        self._expect_ok(body, ref, text)
        content = self._read_manifest(body, ref, text)
        actual = "sha256:" + hashlib.sha256(content).hexdigest()
        if DIGEST_RE.match(digest) and digest != actual:
            raise RegistryError(f"{text}: the registry's digest {digest} does not match the manifest it sent ({actual})")
        media_type = body.headers.get("Content-Type", "").split(";")[0].strip() or media_type
        try:
            document = json.loads(content)
        except ValueError:
            raise RegistryError(f"{text}: the registry sent a manifest that is not JSON") from None
        if not isinstance(document, dict):
            raise RegistryError(f"{text}: the registry sent a manifest that is not a JSON object")
        media_type = document.get("mediaType") or media_type
        found: dict[str, str] = {}
        if media_type in INDEX_TYPES:
            for item in document.get("manifests") or []:
                plat = (item.get("platform") or {}) if isinstance(item, dict) else {}
                if plat.get("os") and plat.get("architecture") and DIGEST_RE.match(str(item.get("digest", ""))):
                    key = f"{plat['os']}/{plat['architecture']}" + (f"/{plat['variant']}" if plat.get("variant") else "")
                    found.setdefault(key, item["digest"])
        return Resolved(text, actual, media_type, found if platforms else {})

    @staticmethod
    def _read_manifest(answer: requests.Response, ref: Reference, text: str) -> bytes:
        too_big = RegistryError(f"{text}: {ref.api_host} sent a manifest over {MAX_MANIFEST_BYTES // (1024 * 1024)} MiB; "
                                "that is not an image manifest")
        try:
            if int(answer.headers.get("Content-Length") or 0) > MAX_MANIFEST_BYTES:
                raise too_big
            chunks, size = [], 0
            for chunk in answer.iter_content(64 * 1024):
                size += len(chunk)
                if size > MAX_MANIFEST_BYTES:
                    raise too_big
                chunks.append(chunk)
            return b"".join(chunks)
        except ValueError:
            raise RegistryError(f"{text}: {ref.api_host} sent a bad Content-Length") from None
        except requests.RequestException as exc:
            raise RegistryError(f"cannot read the manifest of {text} from {ref.api_host}: {type(exc).__name__}") from None
        finally:
            answer.close()

    # -- HTTP with the registry's challenge answered -------------------------------------------------

    def _request(self, method: str, ref: Reference, path: str, stream: bool = False) -> requests.Response:
        key = (ref.api_host, ref.repository)
        answer = self._send(method, ref, path, self._auth.get(key, {}), stream)
        if answer.status_code != 401:
            return answer
        answer.close()
        challenge = answer.headers.get("WWW-Authenticate", "")
        scheme, params = parse_challenge(challenge)
        login = self.credentials.login(ref.api_host)
        if scheme == "bearer":
            token, login = self._token(ref, params, login)
            headers = {"Authorization": f"Bearer {token}"}
        elif scheme == "basic":
            if login is None:
                raise RegistryError(self._needs_login(ref))
            token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
            headers = {"Authorization": f"Basic {token}"}
        else:
            raise RegistryError(f"{ref.api_host} asked for {scheme or 'an unknown'} authentication, which this tool does not speak")
        self._auth[key] = headers
        answer = self._send(method, ref, path, headers, stream)
        if answer.status_code == 401:
            answer.close()
            if ref.api_host in self._refused:
                raise RegistryError(f"{ref.api_host} refused an anonymous pull of {ref.repository}, and its token "
                                    f"service refused your login; run 'docker login {ref.registry}' again")
            raise RegistryError(f"{ref.api_host} refused the credentials for {ref.repository}"
                                + ("" if login else f"; {self._needs_login(ref)}"))
        return answer

    def _send(self, method: str, ref: Reference, path: str, headers: Mapping[str, str],
              stream: bool = False) -> requests.Response:
        try:
            return self.session.request(method, ref.url + path, headers={"Accept": ACCEPT, **headers},
                                        timeout=self.timeout, allow_redirects=True, stream=stream)
        except requests.RequestException as exc:
            raise RegistryError(f"cannot reach {ref.api_host}: {type(exc).__name__}") from None

    def _token(self, ref: Reference, params: Mapping[str, str],
               login: tuple[str, str] | None) -> tuple[str, tuple[str, str] | None]:
        """A token from the challenge's realm, and the login it was got with. A login the token
        service refuses (a stale 'docker login') is dropped for an anonymous token, which is all
        a public image needs; the registry then decides."""
        realm = params.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise RegistryError(f"{ref.api_host} sent a token realm that is not a URL: {realm!r}")
        if parts.scheme == "http" and not is_loopback(parts.netloc):
            # A login (or even a token) over plain http to another host is not something to send.
            raise RegistryError(f"{ref.api_host} wants tokens from {realm}, which is plain http; refusing")
        query = {"scope": params.get("scope") or f"repository:{ref.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        if ref.api_host in self._refused:
            login = None
        try:
            answer = self.session.get(realm, params=query, auth=login, timeout=self.timeout)
            if answer.status_code in (401, 403) and login is not None:
                self._refused.add(ref.api_host)
                self.warn(f"the token service of {ref.api_host} refused your login for {ref.registry} "
                          f"(stale 'docker login'?); trying anonymously")
                login = None
                answer = self.session.get(realm, params=query, timeout=self.timeout)
        except requests.RequestException as exc:
            raise RegistryError(f"cannot reach the token service {parts.netloc} of {ref.api_host}: {type(exc).__name__}") from None
        if answer.status_code in (401, 403):
            raise RegistryError(f"the token service of {ref.api_host} refused "
                                + (f"the login and an anonymous pull of {ref.repository}; run 'docker login {ref.registry}' again"
                                   if ref.api_host in self._refused
                                   else f"an anonymous pull of {ref.repository}; {self._needs_login(ref)}"))
        if answer.status_code != 200:
            raise RegistryError(f"the token service of {ref.api_host} answered HTTP {answer.status_code}")
        try:
            data = answer.json()
        except ValueError:
            data = {}
        token = (data.get("token") or data.get("access_token")) if isinstance(data, dict) else None
        if not token or not isinstance(token, str):
            raise RegistryError(f"the token service of {ref.api_host} sent no token")
        return token, login

    def _needs_login(self, ref: Reference) -> str:
        if self.credentials.is_ecr(ref.api_host):
            return "check the AWS credentials (ECR get_authorization_token)"
        return f"log in with 'docker login {ref.registry}'"

    @staticmethod
    def _expect_ok(answer: requests.Response, ref: Reference, text: str) -> None:
        if answer.status_code == 200:
            return
        answer.close()
        if answer.status_code == 403:
            raise RegistryError(f"{ref.api_host} denied access to {text} (HTTP 403)")
        if answer.status_code == 429:
            raise RegistryError(f"{ref.api_host} is rate-limiting pulls (HTTP 429); try later or log in")
        raise RegistryError(f"{ref.api_host} answered HTTP {answer.status_code} for {text}")


# --- lock and check -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    ref: str
    state: str  # new | unchanged | moved | missing | unlocked | unused | removed | error
    digest: str | None = None  # what the registry says now
    locked: str | None = None  # what the lock says
    message: str | None = None  # why the registry could not be asked (state error)

    @property
    def drift(self) -> bool:
        return self.state in ("moved", "missing", "unlocked")

    def line(self) -> str:
        if self.state == "moved":
            return f"{self.ref}: tag moved: locked {self.locked}, registry now {self.digest}"
        if self.state == "missing":
            return f"{self.ref}: the registry has no such tag now (locked {self.locked})" if self.locked else \
                f"{self.ref}: the registry has no such tag"
        if self.state == "unlocked":
            return f"{self.ref}: not in the lock file (registry: {self.digest})"
        if self.state == "unused":
            return f"{self.ref}: locked but no image uses it"
        if self.state == "removed":
            return f"{self.ref}: removed from the lock (no image uses it now)"
        if self.state == "error":
            return f"{self.ref}: not checked: {self.message}"
        return f"{self.ref}: {self.state} {self.digest or self.locked}"

    def to_dict(self) -> dict:
        out = {"ref": self.ref, "state": self.state, "digest": self.digest, "locked": self.locked}
        if self.message:
            out["message"] = self.message
        return out


def check(refs: Mapping[str, tuple[str, ...]], entries: Mapping[str, LockEntry] | None, client: RegistryClient,
          progress: Callable[[str], None] = lambda _: None) -> list[Finding]:
    """Compare the registry with the lock for every base in use; nothing is written. A registry
    that cannot be asked is one 'error' finding; the other registries are still checked."""
    entries = entries or {}
    findings = []
    for ref in refs:
        progress(f"resolving {ref}")
        locked = entries.get(ref)
        try:
            now = client.resolve(ref)
        except RegistryError as exc:
            findings.append(Finding(ref, "error", None, locked.digest if locked else None, str(exc)))
            continue
        if now is None:
            findings.append(Finding(ref, "missing", None, locked.digest if locked else None))
        elif locked is None:
            findings.append(Finding(ref, "unlocked", now.digest))
        elif locked.digest != now.digest:
            findings.append(Finding(ref, "moved", now.digest, locked.digest))
        else:
            findings.append(Finding(ref, "unchanged", now.digest, locked.digest))
    for ref in sorted(set(entries) - set(refs)):
        findings.append(Finding(ref, "unused", None, entries[ref].digest))
    return findings


def relock(refs: Mapping[str, tuple[str, ...]], entries: Mapping[str, LockEntry] | None, client: RegistryClient,
           prune: bool, progress: Callable[[str], None] = lambda _: None,
           in_use: Iterable[str] | None = None) -> tuple[dict[str, LockEntry], list[Finding]]:
    """Resolve every ref and return the new lock entries and what changed. A tag the registry
    does not have is an error: a lock with a hole would render some images unpinned.

    ``prune`` (the whole matrix) drops every entry not in ``refs``. Otherwise (some images)
    entries of the same bases that no image of the matrix uses any more (``in_use``: every ref
    of the matrix) are dropped: after a base's tag changed, its old entry would only mislead."""
    old = dict(entries or {})
    if prune:
        new: dict[str, LockEntry] = {}
    else:
        keys = {key for bases in refs.values() for key in bases}
        used = set(in_use if in_use is not None else refs) | set(refs)
        new = {ref: e for ref, e in old.items() if ref in used or not keys & set(e.bases)}
    findings, missing, failed = [], [], []
    for ref, bases in refs.items():
        progress(f"resolving {ref}")
        before = old.get(ref)
        try:
            now = client.resolve(ref, platforms=True, known=before)
        except RegistryError as exc:
            failed.append(f"{ref}: {exc}")
            continue
        if now is None:
            missing.append(ref)
            continue
        new[ref] = LockEntry(now.digest, now.media_type, dict(now.platforms), bases)
        state = "new" if before is None else ("unchanged" if before.digest == now.digest else "moved")
        findings.append(Finding(ref, state, now.digest, before.digest if before else None))
    if failed:
        raise RegistryError("nothing written; these bases could not be resolved:\n" + "\n".join(failed)
                            + ("".join(f"\n{ref}: the registry has no such tag" for ref in missing)))
    if missing:
        raise BuilderError("the registry has no such tag: " + ", ".join(missing) + "; fix the base image in the matrix")
    findings += [Finding(ref, "removed", None, old[ref].digest) for ref in sorted(set(old) - set(new))]
    return new, findings
