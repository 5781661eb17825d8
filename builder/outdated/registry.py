"""Tag lists and image configurations, through the registry client `builder lock` uses
(builder.registry_client.RegistryClient: its logins, token challenges and error messages),
extended with two reads of the distribution API:

- Listing tags (OCI distribution spec, "Content discovery"; Docker Registry HTTP API v2):
  ``GET /v2/<name>/tags/list?n=<int>`` answers ``{"name": ..., "tags": [...]}``; when more remain,
  a ``Link: <...?n=<int>&last=<tag>>; rel="next"`` header names the next page (a relative URL).
- A base's configuration: the image index is resolved to its linux/amd64 manifest, whose
  ``config.digest`` is fetched as a blob (``GET /v2/<name>/blobs/<digest>``); its ``config.Env``
  and ``config.Labels`` say what the image ships (NGC sets NCCL_VERSION, CUDA_VERSION and
  PYTORCH_VERSION in its environment).
"""

from __future__ import annotations

import hashlib
import json
from urllib.parse import urlsplit

from builder.registry_api import RegistryError
from builder.registry_client import INDEX_TYPES, Reference, RegistryClient

PAGE_SIZE = 1000  # the distribution registry's own default maximum for n
MAX_PAGES = 100
PLATFORM = "linux/amd64"


class TagLister(RegistryClient):
    """builder.registry_client.RegistryClient (lock's client) with tag listing and image configs."""

    page_size = PAGE_SIZE

    def tags(self, text: str) -> list[str]:
        """Every tag of the repository ``text`` names (its own tag is ignored)."""
        ref = Reference.parse(text)
        path: str | None = f"/v2/{ref.repository}/tags/list?n={self.page_size}"
        found: list[str] = []
        for _ in range(MAX_PAGES):
            if path is None:
                return found
            answer = self._request("GET", ref, path, stream=True)
            self._expect_ok(answer, ref, f"the tag list of {ref.registry}/{ref.repository}")
            document = self._json(answer, ref, "tag list")
            tags = document.get("tags") if isinstance(document, dict) else None
            if tags is not None and not isinstance(tags, list):
                raise RegistryError(f"{ref.api_host} sent a tag list that is not a list for {ref.repository}")
            found += [t for t in tags or [] if isinstance(t, str)]
            path = _next_path(answer.headers.get("Link", ""), ref)
        raise RegistryError(f"{ref.api_host}: more than {MAX_PAGES} pages of tags for {ref.repository}; refusing to go on")

    def image_config(self, text: str) -> dict:
        """The image configuration of ``text`` (its linux/amd64 image for an index)."""
        ref = Reference.parse(text)
        resolved = self.resolve(text, platforms=True)
        if resolved is None:
            raise RegistryError(f"{text}: the registry has no such tag")
        digest = resolved.digest
        if resolved.media_type in INDEX_TYPES:
            digest = resolved.platforms.get(PLATFORM)
            if digest is None:
                raise RegistryError(f"{text}: the index has no {PLATFORM} image")
        manifest = self._get_json(ref, f"/v2/{ref.repository}/manifests/{digest}", text, digest)
        config = manifest.get("config") if isinstance(manifest, dict) else None
        blob = config.get("digest") if isinstance(config, dict) else None
        if not isinstance(blob, str) or not blob.startswith("sha256:"):
            raise RegistryError(f"{text}: the manifest names no sha256 config blob")
        document = self._get_json(ref, f"/v2/{ref.repository}/blobs/{blob}", text, blob)
        inner = document.get("config") if isinstance(document, dict) else None
        return inner if isinstance(inner, dict) else {}

    def _get_json(self, ref: Reference, path: str, text: str, digest: str):
        answer = self._request("GET", ref, path, stream=True)
        self._expect_ok(answer, ref, text)
        content = self._read_manifest(answer, ref, text)
        if "sha256:" + hashlib.sha256(content).hexdigest() != digest:
            raise RegistryError(f"{text}: {ref.api_host} sent bytes that do not match {digest}")
        try:
            return json.loads(content)
        except ValueError:
            raise RegistryError(f"{text}: {ref.api_host} sent something that is not JSON for {digest}") from None

    def _json(self, answer, ref: Reference, what: str):
        content = self._read_manifest(answer, ref, f"{ref.registry}/{ref.repository} ({what})")
        try:
            return json.loads(content)
        except ValueError:
            raise RegistryError(f"{ref.api_host} sent a {what} that is not JSON for {ref.repository}") from None


def _next_path(link: str, ref: Reference) -> str | None:
    """The path of a ``Link: <url>; rel="next"`` header (RFC 8288), relative or on the same host."""
    for part in link.split(","):
        target, _, params = part.partition(";")
        if 'rel="next"' not in params.replace(" ", "") and "rel=next" not in params.replace(" ", ""):
            continue
        url = target.strip().strip("<>")
        parts = urlsplit(url)
        if parts.netloc and parts.netloc != urlsplit(ref.url).netloc:
            raise RegistryError(f"{ref.api_host} sent a next page on another host ({parts.netloc}); refusing")
        if not parts.path.startswith(f"/v2/{ref.repository}/tags/list"):
            raise RegistryError(f"{ref.api_host} sent a next page that is not this tag list: {url}")
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return None


def ships_from_config(config: dict) -> dict[str, str]:
    """What a base ships, as far as its environment says: NGC images set NCCL_VERSION,
    CUDA_VERSION and PYTORCH_VERSION (e.g. ``2.8.0a0+5228986c39``, whose local part is dropped,
    as the matrix writes ``2.8.0a0``); nvidia/cuda images set CUDA_VERSION. Python and the OS are not
    in the environment: a person fills them in (the rules say so when an image needs them)."""
    env = {}
    for item in config.get("Env") or []:
        if isinstance(item, str) and "=" in item:
            name, _, value = item.partition("=")
            env[name] = value
    ships = {}
    for name, component in (("NCCL_VERSION", "nccl"), ("CUDA_VERSION", "cuda"), ("PYTORCH_VERSION", "pytorch")):
        value = env.get(name, "").split("+", 1)[0].strip()
        if component == "cuda":  # NGC writes a build number too (12.9.1.010); the matrix writes x.y.z
            value = ".".join(value.split(".")[:3])
        if value:
            ships[component] = value
    return ships
