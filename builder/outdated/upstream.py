"""Ask every source once: the releases of each tracked component, and the tags of each base's
repository in its family. A source that cannot be asked is recorded and the others go on."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

from builder import facts
from builder.registry_api import RegistryError
from builder.outdated import efa, versions
from builder.outdated.families import family_of
from builder.outdated.registry import TagLister, ships_from_config
from builder.outdated.web import GITHUB_API, SourceError, Web

PYPI_URL = "https://pypi.org"
EFA_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+\Z")
TRACKED = ("efa", *versions.GITHUB_COMPONENTS, *versions.PYPI_COMPONENTS)


@dataclass(frozen=True)
class Endpoints:
    """Where each kind of source is asked (the official services unless overridden: a mirror,
    GitHub Enterprise, or the tests' local servers)."""

    github_api: str = GITHUB_API
    pypi: str = PYPI_URL
    efa_template: str = efa.EFA_URL_TEMPLATE


@dataclass
class Source:
    subject: str  # a component name, or "base <key>"
    where: str  # what was asked, for people
    releases: list[str] = field(default_factory=list)  # components: every release found
    tags: list[str] = field(default_factory=list)  # bases: the family's newer tags, oldest first
    error: str | None = None
    note: str | None = None
    family: str | None = None
    ships: dict[str, str] = field(default_factory=dict)  # bases: what the newest tag ships


@dataclass
class Survey:
    components: dict[str, Source] = field(default_factory=dict)
    bases: dict[str, Source] = field(default_factory=dict)

    @property
    def errors(self) -> list[Source]:
        return [s for s in (*self.components.values(), *self.bases.values()) if s.error]


def in_use(specs: Sequence, only: Iterable[str] = ()) -> dict[str, set[str]]:
    """component -> the versions the selected images pin (tracked components only)."""
    wanted = set(only) or set(TRACKED)
    out: dict[str, set[str]] = {}
    for spec in specs:
        for component in TRACKED:
            value = spec.components.get(component)
            if component in wanted and isinstance(value, str) and value:
                out.setdefault(component, set()).add(value)
    return out


def survey(specs: Sequence, web: Web, lister: TagLister, endpoints: Endpoints, checksums: Mapping[str, str],
           only: Iterable[str] = (), progress: Callable[[str], None] = lambda _: None) -> Survey:
    only = set(only)
    result = Survey()
    for component, current in sorted(in_use(specs, only).items()):
        progress(f"asking upstream for {component}")
        result.components[component] = _component(component, current, web, endpoints, checksums)
    if not only or "bases" in only:
        for key, ref in _bases(specs).items():
            progress(f"listing the tags of {ref}")
            result.bases[key] = _base(key, ref, lister)
    return result


def _bases(specs: Sequence) -> dict[str, str]:
    """base key -> the tag reference of its image (a DLC base's first region stands for all)."""
    out: dict[str, str] = {}
    for spec in specs:
        out.setdefault(spec.base.key, spec.base.image.split("@", 1)[0])
    return dict(sorted(out.items()))


def _component(component: str, current: set[str], web: Web, endpoints: Endpoints, checksums: Mapping[str, str]) -> Source:
    try:
        if component == "efa":
            known = {v for v in set(current) | set(facts.EFA_INSTALLER_SHA256) | set(checksums) if EFA_VERSION_RE.match(v)}
            found = efa.newest(web, endpoints.efa_template, known)
            return Source("efa", efa.tarball_url(endpoints.efa_template, "<version>"),
                          sorted(known | set(found.found), key=versions.key), note=found.note)
        if component in versions.GITHUB_COMPONENTS:
            repo, _ = versions.GITHUB_COMPONENTS[component]
            url = f"{endpoints.github_api.rstrip('/')}/repos/{repo}/tags"
            tags = [str(item.get("name", "")) for item in web.github_list(url, f"{repo} tags")]
            releases = [v for t in tags if (v := versions.from_tag(component, t))]
            return Source(component, f"github.com/{repo} tags", releases)
        project = versions.PYPI_COMPONENTS[component]
        url = f"{endpoints.pypi.rstrip('/')}/pypi/{project}/json"
        document, _ = web.json(url, f"PyPI {project}")
        return Source(component, f"PyPI {project}", versions.pypi_releases(document))
    except SourceError as exc:
        return Source(component, component, error=str(exc))


def _base(key: str, ref: str, lister: TagLister) -> Source:
    tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else "latest"
    family = family_of(tag)
    source = Source(f"base {key}", ref, family=family.name)
    try:
        source.tags = family.newer(tag, lister.tags(ref))
        if source.tags:
            newest = ref.rsplit(":", 1)[0] + ":" + source.tags[-1]
            source.ships = ships_from_config(lister.image_config(newest))
    except (RegistryError, SourceError) as exc:
        source.error = str(exc)
    return source
