"""A finished one-image render, kept under the hash of everything it was made from.

`builder render NAME --stdout` is a review tool run again and again on an unchanged checkout.
Rendering is deterministic, so its result (the Dockerfile and the warnings loading printed)
is a function of its inputs: the matrix file, its lock file, every template, builder's own
code, the versions of the libraries that parse and render (PyYAML, packaging, Jinja2), the
Python version, the working folder (warnings name files relative to it) and the command's
arguments. When all of them hash the same, the stored result is printed without loading YAML,
Jinja or the matrix code; anything changed is a miss, and only a successful render is stored
(errors are always found again). ``BUILDER_NO_CACHE=1`` turns it off.

Stored in ``$BUILDER_CACHE_DIR`` (default ``$XDG_CACHE_HOME/builder``, else ``~/.cache/builder``),
one JSON file per key, written atomically; a folder that cannot be written means no cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

VERSION = b"builder render cache 1\n"
_PACKAGE = Path(__file__).resolve().parent
# Libraries whose behaviour shapes the output; identified by their installed files.
_LIBRARIES = ("yaml", "packaging", "jinja2", "markupsafe", "click")


def cache_dir() -> Path | None:
    """The cache folder, or None when caching is off or there is no home to put it in."""
    if os.environ.get("BUILDER_NO_CACHE"):
        return None
    try:
        root = os.environ.get("BUILDER_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "builder"
    except RuntimeError:  # no home folder
        return None
    return Path(root)


def _templates_dir() -> Path:
    # The same rule as builder.stanzas.TEMPLATES_DIR (an installed wheel carries builder/templates;
    # a checkout reads the repository's templates/), without importing the catalogue's YAML.
    return next((d for d in (_PACKAGE / "templates", _PACKAGE.parent / "templates") if (d / "flavors").is_dir()),
                _PACKAGE.parent / "templates")


def _add_tree(digest, root: Path, suffixes: tuple[str, ...]) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in suffixes and "__pycache__" not in p.parts):
        digest.update(f"{path.relative_to(root)}\0{path.stat().st_size}\0".encode())
        digest.update(path.read_bytes())


def _add_file(digest, path: Path) -> None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b"\0missing"
    digest.update(f"{path}\0{len(data)}\0".encode())
    digest.update(data)


def key(matrix_path: Path, request: object) -> str:
    """The hash of every input of one render (``request``: the command's arguments, JSON-able)."""
    digest = hashlib.sha256(VERSION)
    digest.update(f"{sys.version}\0{Path.cwd()}\0{Path(matrix_path).resolve()}\0".encode())
    digest.update(json.dumps(request, sort_keys=True).encode())
    matrix_path = Path(matrix_path)
    _add_file(digest, matrix_path)
    _add_file(digest, matrix_path.with_name(f"{matrix_path.stem}.lock.json"))  # lockfile.lock_path
    _add_tree(digest, _templates_dir(), (".j2", ".yaml"))
    _add_tree(digest, _PACKAGE, (".py",))
    for name in _LIBRARIES:
        spec = importlib.util.find_spec(name)
        origin = Path(spec.origin) if spec and spec.origin else None
        stat = origin.stat() if origin and origin.exists() else None
        digest.update(f"{name}\0{origin}\0{stat.st_mtime_ns if stat else 0}\0{stat.st_size if stat else 0}\0".encode())
    return digest.hexdigest()


def load(cache_key: str) -> dict | None:
    folder = cache_dir()
    if folder is None:
        return None
    try:
        data = json.loads((folder / "render" / f"{cache_key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and isinstance(data.get("dockerfile"), str) and isinstance(data.get("warnings"), list)
    return data if ok else None


def store(cache_key: str, dockerfile: str, warnings: list[str]) -> None:
    folder = cache_dir()
    if folder is None:
        return
    import tempfile  # local: a cache hit never writes

    try:
        (folder / "render").mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=folder / "render", prefix=".tmp-", suffix=".json")
    except OSError:
        return  # no cache this time; the render itself succeeded
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"dockerfile": dockerfile, "warnings": warnings}, out)
        os.replace(temp, folder / "render" / f"{cache_key}.json")
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temp)
