"""Asking a registry what a tag points to (OCI distribution API, Docker token authentication).

``HEAD /v2/<repo>/manifests/<tag>`` with an Accept header listing the four manifest types, so
that a multi-platform tag answers with its index (manifest list) digest rather than one
platform's; the digest is ``Docker-Content-Digest``, checked against the sha256 of the bytes
whenever they are fetched. A 401 carries a ``WWW-Authenticate`` challenge: ``Bearer realm=...,
service=...,scope=...`` (fetch a token from the realm, anonymously or with the user's login) or
``Basic`` (send the login). A login the token service refuses (a stale ``docker login``) falls
back to an anonymous token, as public images need none. Used by ``builder lock``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping
from urllib.parse import urlsplit

import requests

from builder import imageref
from builder.imageref import DIGEST_RE, DOCKER_HUB, DOCKER_HUB_ALIASES, DOCKER_HUB_API
from builder.lockfile import LockEntry
from builder.registry_api import ACCEPT, RegistryError, base_url, is_loopback
from builder.registry_auth import Credentials

INDEX_TYPES = (
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
)
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


# --- the registry ------------------------------------------------------------------------------------


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
