"""The lock file model: ``matrix.lock.json`` read, written and applied to specs. Pure.

Loading a matrix pins its bases through this module, so it imports nothing that talks to a
registry: ``builder.lock`` holds the registry client and the ``builder lock`` logic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from builder import imageref
from builder.errors import UsageError

LOCK_SCHEMA = 1
DIGEST_RE = imageref.DIGEST_RE


def lock_path(matrix_path: Path) -> Path:
    """matrix.yaml -> matrix.lock.json, beside it."""
    matrix_path = Path(matrix_path)
    return matrix_path.with_name(f"{matrix_path.stem}.lock.json")


@dataclass(frozen=True)
class LockEntry:
    digest: str
    media_type: str = ""
    platforms: Mapping[str, str] = field(default_factory=dict)
    bases: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        out: dict = {"digest": self.digest}
        if self.media_type:
            out["media_type"] = self.media_type
        if self.platforms:
            out["platforms"] = dict(sorted(self.platforms.items()))
        out["bases"] = sorted(self.bases)
        return out


def read_lock(path: Path) -> dict[str, LockEntry] | None:
    """The lock's entries (tag reference -> entry), or None when there is no lock file."""
    path = Path(path)
    rewrite = "fix it, or run 'builder lock' (no image names) to rewrite it from the matrix"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable lock file ({exc}); {rewrite}") from None
    if not isinstance(data, dict) or data.get("schema") != LOCK_SCHEMA or not isinstance(data.get("images"), dict):
        raise UsageError(f"{path}: expected {{\"schema\": {LOCK_SCHEMA}, \"images\": {{...}}}}; {rewrite}")
    entries = {}
    for ref, entry in data["images"].items():
        digest = entry.get("digest") if isinstance(entry, dict) else None
        parsed = imageref.parse(ref)
        if parsed is None or parsed.digest or not isinstance(digest, str) or not DIGEST_RE.match(digest):
            raise UsageError(f"{path}: entry {ref!r} needs a tag reference and a sha256 digest; {rewrite}")
        platforms = entry.get("platforms") or {}
        bases = entry.get("bases") or ()
        if not isinstance(platforms, dict) or not isinstance(bases, (list, tuple)):
            raise UsageError(f"{path}: entry {ref!r} has malformed platforms or bases; {rewrite}")
        entries[ref] = LockEntry(digest, str(entry.get("media_type", "")), dict(platforms), tuple(map(str, bases)))
    return entries


def lock_text(entries: Mapping[str, LockEntry]) -> str:
    """Deterministic JSON (no timestamps): re-locking unchanged tags changes nothing."""
    data = {
        "schema": LOCK_SCHEMA,
        "comment": "Base image digests written by 'builder lock'; rendering pins FROM to them. "
                   "Refresh with 'builder lock', check with 'builder lock --check'.",
        "images": {ref: entries[ref].to_dict() for ref in sorted(entries)},
    }
    return json.dumps(data, indent=2) + "\n"


# --- pinning specs (called by builder.matrix.load_matrix) ---------------------------------------------

def pin_specs(matrix_path: Path, specs: Sequence, complete: bool = True) -> tuple[list, list[str]]:
    """The specs with each locked base image pinned to tag@digest (unchanged without a lock file),
    and what the lock does not cover (``lock_gaps``): a base with no entry for its exact image
    renders unpinned, and an entry no base uses is dead; neither may pass in silence.
    ``complete``: the specs are the whole matrix (else entries unused by them are not reported)."""
    entries = read_lock(lock_path(matrix_path))
    if entries is None:
        return list(specs), []
    return [pin(spec, entries) for spec in specs], lock_gaps(specs, entries, complete)


def lock_gaps(specs: Sequence, entries: Mapping[str, LockEntry], complete: bool = True) -> list[str]:
    """What the lock does not cover: bases whose exact image has no entry (saying which entry
    their base was locked under before, when the tag changed) and, for the whole matrix
    (``complete``), entries no base uses."""
    in_use: dict[str, set[str]] = {}  # tag reference -> base keys (unpinned bases only)
    for spec in specs:
        if "@" not in spec.base.image:
            in_use.setdefault(spec.base.image, set()).add(spec.base.key)
    unused = {ref: entry for ref, entry in entries.items() if ref not in in_use}
    explained: set[str] = set()
    out = []
    for ref, keys in sorted(in_use.items()):
        if ref in entries:
            continue
        for key in sorted(keys):
            before = sorted(old for old, entry in unused.items() if key in entry.bases)
            if before:
                explained.update(before)
                out.append(f"base {key} is locked as {' and '.join(before)} but the matrix now says {ref}; "
                           "run 'builder lock'")
            else:
                out.append(f"base {key} ({ref}) has no entry, so its images render unpinned; run 'builder lock'")
    for ref in sorted(set(unused) - explained) if complete else ():
        owners = f" (locked for base {', '.join(unused[ref].bases)})" if unused[ref].bases else ""
        out.append(f"entry {ref}{owners} is used by no image; run 'builder lock' to drop it")
    return out


def pin(spec, entries: Mapping[str, LockEntry]):
    image = spec.base.image
    entry = entries.get(image)
    if "@" in image or entry is None:  # pinned in the matrix already, or not locked
        return spec
    return replace(spec, base=replace(spec.base, image=f"{image}@{entry.digest}"))


def tag_ref(spec, entries: Mapping[str, LockEntry] | None) -> str | None:
    """The tag reference a spec's base is locked under (undoing the pin), or None when the
    matrix itself pins the base by digest (nothing for a lock to do)."""
    image = spec.base.image
    if "@" not in image:
        return image
    ref, _, digest = image.partition("@")
    if entries and ref in entries and entries[ref].digest == digest:
        return ref
    return None


def bases_in_use(specs: Iterable, entries: Mapping[str, LockEntry] | None) -> dict[str, tuple[str, ...]]:
    """tag reference -> names of the matrix bases that use it (a DLC base has one per region)."""
    out: dict[str, set[str]] = {}
    for spec in specs:
        ref = tag_ref(spec, entries)
        if ref is not None:
            out.setdefault(ref, set()).add(spec.base.key)
    return {ref: tuple(sorted(keys)) for ref, keys in sorted(out.items())}
