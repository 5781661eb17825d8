"""Bumps as edits of matrix.yaml, each one re-validated by the matrix loader before it is kept.

The file is read and written with ruamel.yaml's round-trip mode (comments, key order, quoting
and flow/block layout kept), so a written matrix differs from the original only on the lines of
the bumps. Every edit is tried on its own on top of the edits kept so far: the matrix is loaded
and validated exactly as every command loads it, and an edit that brings any error is dropped
and reported with the loader's lines (the rule's reason). The images an edit touches are found
by comparing the expanded images before and after it.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, ScalarString

from builder.errors import MatrixError
from builder.outdated import versions as vers

# Quoted like the matrix writes versions (YAML would read 3.10 as 3.1).
Q = DoubleQuotedScalarString


def _yaml() -> YAML:
    y = YAML()
    y.preserve_quotes = True
    y.width = 4096  # never re-wrap a long line
    y.indent(mapping=2, sequence=4, offset=2)
    return y


@dataclass
class Edit:
    """One change: a component's value at one place, or a new base (with the axes it joins)."""

    kind: str  # component | base
    subject: str  # component name, or the new base key
    old: str
    new: str
    path: tuple = ()  # component: where the value sits in the document
    selectors: tuple = ()  # component on an axis: include/exclude entries naming the old value
    base: dict = field(default_factory=dict)  # base: {"from": old key, "fields": {image|dlc_tag: value}, "ships": {...}}
    axes: tuple = ()  # base: paths of the axis lists it is appended to
    checksum: str | None = None  # efa: the verified SHA256 to pin in checksums.efa_installer

    @property
    def where(self) -> str:
        return ".".join(str(p) for p in self.path) if self.path else f"bases.{self.subject}"


@dataclass
class Outcome:
    edit: Edit
    accepted: bool
    images: tuple[str, ...]  # expanded images it changes (after it, or before it when refused)
    problems: tuple[str, ...] = ()


class MatrixDocument:
    """matrix.yaml as a round-trip document, and validation of candidate texts."""

    def __init__(self, path: Path, catalog=None):
        self.path = Path(path)
        self.catalog = catalog
        self.yaml = _yaml()
        self.original = self.path.read_text(encoding="utf-8")
        self.doc = self.yaml.load(self.original)
        self.matrix = self.load(self.original)  # raises MatrixError: the matrix must be valid to start
        self.start = self.matrix  # the images as they were before any edit

    def text(self, doc=None) -> str:
        out = io.StringIO()
        self.yaml.dump(self.doc if doc is None else doc, out)
        return out.getvalue()

    def load(self, text: str):
        """Validate ``text`` as this matrix would be (same folder: code dirs resolve alike)."""
        from builder.matrix import load_matrix

        trial = self.path.with_name(f".{self.path.stem}.outdated-{os.getpid()}.yaml")
        trial.write_text(text, encoding="utf-8")
        try:
            return load_matrix(trial, catalog=self.catalog, pin=False)
        except MatrixError as exc:
            exc.problems = [str(p).replace(trial.name, self.path.name) for p in exc.problems]
            raise
        finally:
            trial.unlink(missing_ok=True)

    # -- finding where versions sit ------------------------------------------------------------------

    def component_edits(self, component: str, old: str, new: str, checksum: str | None = None) -> list[Edit]:
        """An edit for every place the matrix writes ``old`` for ``component``: defaults,
        flavor defaults, an entry's components or include, and an axis where ``old`` is the
        newest value (older axis values are kept on purpose: eras, regression anchors)."""
        doc, edits = self.doc, []
        mappings = [(("defaults", "components"), _get(doc, "defaults", "components"))]
        mappings += [(("flavor_defaults", f, "components"), _get(doc, "flavor_defaults", f, "components"))
                     for f in (doc.get("flavor_defaults") or {})]
        for i, entry in enumerate(doc.get("images") or []):
            if not isinstance(entry, dict):
                continue
            mappings.append((("images", i, "components"), entry.get("components")))
            axis = _get(entry, "axes", component)
            if isinstance(axis, list) and old in axis and new not in axis and _newest(axis) == old:
                selectors = tuple(("images", i, group, k) for group in ("include", "exclude")
                                  for k, item in enumerate(entry.get(group) or [])
                                  if isinstance(item, dict) and item.get(component) == old)
                edits.append(Edit("component", component, old, new, ("images", i, "axes", component, axis.index(old)),
                                  selectors, checksum=checksum))
            for k, item in enumerate(entry.get("include") or []):
                if isinstance(item, dict) and item.get(component) == old and not isinstance(axis, list):
                    mappings.append((("images", i, "include", k), item))
        for where, mapping in mappings:
            if isinstance(mapping, dict) and mapping.get(component) == old:
                edits.append(Edit("component", component, old, new, (*where, component), checksum=checksum))
        return edits

    def base_edit(self, old_key: str, new_tag: str, ships: dict[str, str]) -> Edit | None:
        """A new base beside ``old_key`` for ``new_tag``, joining every axis that lists ``old_key``;
        None when a base with that tag exists already."""
        bases = self.doc.get("bases") or {}
        old = bases.get(old_key)
        if not isinstance(old, dict):
            return None
        fields = {}  # a DLC base's dlc_tag, and its image where it names one (a region without an account)
        if "dlc_tag" in old:
            fields["dlc_tag"] = new_tag
        if "image" in old:
            fields["image"] = str(old["image"]).split("@", 1)[0].rsplit(":", 1)[0] + ":" + new_tag
        old_tag = str(old["dlc_tag"]) if "dlc_tag" in old else str(old.get("image", "")).split("@", 1)[0].rsplit(":", 1)[-1]
        if any(isinstance(b, dict) and all(str(b.get(k, "")).split("@", 1)[0] == v for k, v in fields.items())
               for b in bases.values()):
            return None
        new_key = _new_key(old_key, old_tag, new_tag, bases)
        axes = tuple(("images", i, "axes", "base") for i, entry in enumerate(self.doc.get("images") or [])
                     if isinstance(entry, dict) and isinstance(_get(entry, "axes", "base"), list)
                     and old_key in entry["axes"]["base"])
        return Edit("base", new_key, old_tag, new_tag, base={"from": old_key, "fields": fields, "ships": dict(ships)},
                    axes=axes)

    # -- trying edits -----------------------------------------------------------------------------

    def attempt(self, edit: Edit) -> Outcome:
        """Apply ``edit``, validate; keep it when the matrix stays valid, else go back to the
        text before it (ruamel's documents do not survive deepcopy with their layout intact)."""
        before_text = self.text()
        apply(self.doc, edit)
        before = {s.name: s for s in self.matrix.images}
        try:
            after_matrix = self.load(self.text())
        except MatrixError as exc:
            self.doc = self.yaml.load(before_text)
            return Outcome(edit, False, self.touched(edit), tuple(exc.problems))
        after = {s.name: s for s in after_matrix.images}
        changed = tuple(sorted(n for n in set(before) | set(after)
                               if n not in before or n not in after or _differs(before[n], after[n])))
        self.matrix = after_matrix
        return Outcome(edit, True, changed)

    def touched(self, edit: Edit) -> tuple[str, ...]:
        """The images, as the matrix first named them, that ``edit`` is about."""
        return names_touched(edit, self.start)


def apply(doc, edit: Edit) -> None:
    if edit.kind == "component":
        _set(doc, edit.path, edit.new)
        for selector in edit.selectors:
            _set(doc, (*selector, edit.subject), edit.new)
        if edit.checksum:
            _pin_checksum(doc, edit.new, edit.checksum)
        return
    bases = doc["bases"]
    entry = CommentedMap()
    for name, value in edit.base["fields"].items():
        entry[name] = value
    entry["description"] = f"{edit.new}, added by builder outdated beside {edit.base['from']}"
    if edit.base["ships"]:
        ships = CommentedMap((k, Q(v)) for k, v in sorted(edit.base["ships"].items()))
        ships.fa.set_flow_style()
        entry["ships"] = ships
    bases.insert(list(bases).index(edit.base["from"]) + 1, edit.subject, entry)
    for path in edit.axes:
        _get(doc, *path).append(edit.subject)


def _pin_checksum(doc, version: str, digest: str) -> None:
    if doc.get("checksums") is None:
        position = list(doc).index("bases") if "bases" in doc else len(doc)
        doc.insert(position, "checksums", CommentedMap())
    table = doc["checksums"].get("efa_installer")
    if table is None:
        table = CommentedMap()
        trailing = _take_trailing(doc["checksums"])
        doc["checksums"]["efa_installer"] = table
        table[Q(version)] = digest
        if trailing is not None:  # the blank line that closed the section closes it again
            table.ca.items[Q(version)] = trailing
        return
    table[Q(version)] = digest


def _take_trailing(mapping):
    """Detach the comment (often just a blank line) after the last value of ``mapping``, kept by
    ruamel on its deepest last key, so that an entry appended after it goes before the blank."""
    node = mapping
    while isinstance(node, dict) and node:
        key = list(node)[-1]
        if isinstance(node[key], dict) and node[key]:
            node = node[key]
            continue
        item = node.ca.items.pop(key, None)
        return item
    return None


def _set(doc, path: tuple, value: str) -> None:
    container = _get(doc, *path[:-1])
    old = container[path[-1]]
    container[path[-1]] = type(old)(value) if isinstance(old, ScalarString) else value


def _get(node, *path):
    for part in path:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return None
    return node


def _newest(values: list) -> str | None:
    try:
        return max((str(v) for v in values), key=vers.key)
    except ValueError:
        return None


def _new_key(old_key: str, old_tag: str, new_tag: str, bases) -> str:
    """ngc-25.06 (25.06-py3) -> ngc-25.11 for 25.11-py3: the old tag's first number in the key
    becomes the new tag's; else the new number is appended."""
    old_num, new_num = re.search(r"\d+(?:\.\d+)*", old_tag), re.search(r"\d+(?:\.\d+)*", new_tag)
    number = new_num.group(0) if new_num else new_tag
    if old_num and old_num.group(0) in old_key:
        key = old_key.replace(old_num.group(0), number, 1)
    else:
        key = f"{old_key}-{number}"
    candidate, n = key, 2
    while candidate in bases:
        candidate, n = f"{key}-{n}", n + 1
    return candidate


def _differs(a, b) -> bool:
    return (dict(a.components) != dict(b.components) or a.base.key != b.base.key
            or dict(a.checksums) != dict(b.checksums))


def names_touched(edit: Edit, matrix) -> tuple[str, ...]:
    """The images of ``matrix`` that use the edit's old base, or its old value at the edit's
    place (an entry's own images; a flavor's images for flavor defaults; all for defaults)."""
    specs = matrix.images
    if edit.kind == "base":
        return tuple(sorted(s.name for s in specs if s.base.key == edit.base["from"]))
    names = [s for s in specs if s.components.get(edit.subject) == edit.old]
    drafts = getattr(matrix, "_drafts", {}) or {}
    if edit.path[0] == "images" and drafts:
        names = [s for s in names if getattr(drafts.get(s.name), "index", None) == edit.path[1]]
    elif edit.path[0] == "flavor_defaults":
        names = [s for s in names if s.flavor == edit.path[1]]
    return tuple(sorted(s.name for s in names))
