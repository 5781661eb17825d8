"""Reproducible bases: resolve each base image tag to its digest and keep it in a lock file.

``builder lock`` asks the registry, through the OCI distribution API, which manifest each base
tag points to today and writes ``matrix.lock.json`` beside the matrix. While that file exists,
loading the matrix pins every locked base to ``image:tag@sha256:...`` (so rendering writes
``FROM image:tag@sha256:...`` and an ``org.opencontainers.image.base.digest`` label), and
``builder lock --check`` tells which tags have moved since.

The registry client (``registry_client``: the distribution API, ``registry_auth``: logins) and
the lock file model (``lockfile``, pure) are apart; this module compares the two. ``--check``
only HEADs (Docker Hub counts GETs as pulls); ``lock`` GETs an index once to record its platforms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from builder.errors import BuilderError
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
from builder.registry_api import RegistryError
from builder.registry_auth import Credentials, docker_config_path, docker_login  # noqa: F401 (re-exported)
from builder.registry_client import (  # noqa: F401 (re-exported: the client `builder lock` asks)
    INDEX_TYPES,
    MAX_MANIFEST_BYTES,
    Reference,
    RegistryClient,
    Resolved,
    parse_challenge,
)


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
