"""Image references: one strict grammar for every verb and for the matrix's base images.

The grammar is Docker's (distribution/reference, regexp.go: ``reference := name [":" tag]
["@" digest]``, path components ``[a-z0-9]+`` joined by one '.', one or two '_' or any number of
'-', tags ``[\\w][\\w.-]{0,127}``; reference.go: a name is at most 255 characters), with two
deliberate narrowings: digests are ``sha256:<64 hex>`` only (the only algorithm registries use
and the one the lock file records), and the first path component names a registry only by
Docker's rule below (normalize.go, splitDockerDomain), so 'Upper/case' is refused rather than
taken for a registry called 'Upper'. Every pattern is anchored with ``\\Z``: ``$`` also matches
before a trailing newline, which would carry a line break into a Dockerfile or a script.

Registry rule: the first path component names a registry only when it has a '.' or a ':' or is
'localhost' ('123456789012.dkr.ecr.us-west-2.amazonaws.com/team/pt:1', 'host:5000/pt',
'localhost/pt'); otherwise the whole reference is a repository on Docker Hub ('team/pt:1').
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from builder.errors import UsageError

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_LABEL = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
REGISTRY_RE = re.compile(rf"^(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[A-Fa-f0-9:]+\])(?::[0-9]{{1,5}})?\Z")
PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*\Z")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")
_REST_RE = re.compile(
    rf"^(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?\Z"
)
IMAGE_ID_RE = re.compile(r"^(?:sha256:)?[a-f0-9]{12,64}\Z")  # what `docker images -q` prints
NAME_MAX = 255  # reference.go NameTotalLengthMax: registry and path together
# Docker Hub's names (normalize.go: defaultDomain, legacyDefaultDomain; the registry API host).
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
# Names Docker itself treats as Docker Hub (the CLI's default index and its historical hosts).
DOCKER_HUB_ALIASES = frozenset({DOCKER_HUB, "index.docker.io", DOCKER_HUB_API})
# Where `docker login` (and Docker Desktop, pass, secretservice) keeps the Docker Hub login.
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"


def split_registry(ref: str) -> tuple[str | None, str]:
    """'host:5000/team/pt:1' -> ('host:5000', 'team/pt:1'); 'team/pt:1' -> (None, 'team/pt:1')."""
    first, sep, rest = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return None, ref


@dataclass(frozen=True)
class ImageRef:
    """A parsed reference, parts as written (no Docker Hub normalisation: see lock.Reference)."""

    registry: str | None
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """[registry/]path, without tag or digest."""
        return f"{self.registry}/{self.path}" if self.registry else self.path

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse(text: object) -> ImageRef | None:
    """The parts of a valid reference, or None. Never raises: callers word their own error."""
    if not isinstance(text, str):
        return None
    registry, rest = split_registry(text)
    if registry is not None and not REGISTRY_RE.match(registry):
        return None
    m = _REST_RE.match(rest)
    if not m:
        return None
    ref = ImageRef(registry, m["path"], m["tag"], m["digest"])
    return ref if len(ref.name) <= NAME_MAX else None


def is_reference(text: object) -> bool:
    return parse(text) is not None


def require(text: str, what: str = "a valid image reference ([registry/]name[:tag][@sha256:digest])") -> ImageRef:
    """parse() or a UsageError: "'TEXT' is not WHAT"."""
    ref = parse(text)
    if ref is None:
        raise UsageError(f"{text!r} is not {what}")
    return ref


def is_bare(text: str) -> bool:
    """A bare word (no ':', '/' or '@') is a matrix image name first, a reference only after."""
    return not any(c in text for c in ":/@")


def resolve(matrix, arg: str, what: str = "an image of the matrix nor a valid image reference") -> tuple[str, object | None]:
    """One way for every verb to read NAME|IMAGE: (the reference to use, its matrix entry).

    A bare word the matrix knows is that image (its first tag); anything else must be a valid
    reference and comes back as given, with no entry (verbs that match references or title
    labels to entries do so after, each where it needs the engine). ``matrix`` may be None."""
    spec = matrix.find(arg) if matrix is not None and is_bare(arg) else None
    if spec is not None:
        return spec.primary_ref, spec
    if parse(arg) is None:
        raise UsageError(f"{arg!r} is neither {what}")
    return arg, None
