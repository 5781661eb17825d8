"""YAML in, plain Python out, with the line of every key kept for error messages.

Duplicate keys are rejected (plain PyYAML silently keeps the last one), and so are YAML
aliases/anchors' merge surprises: a matrix is small and should read literally.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from builder.errors import MatrixError, Problem


class LineDict(dict):
    """A mapping that remembers the source line of itself and of each key (1-based)."""

    line: int = 0
    key_lines: dict

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.key_lines = {}

    def line_of(self, key) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list):
    line: int = 0


# libyaml's parser when PyYAML was built with it (about 10x faster), same safe constructors.
class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) or key is None:
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be plain strings", key_node.start_mark
            )
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {result.key_lines[key]})", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(path: Path):
    """Parse a YAML file; a syntax error becomes a one-line MatrixError naming file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MatrixError([Problem(str(path), 0, None, None, "file not found; pass --matrix PATH or set BUILDER_MATRIX")])
    except (OSError, UnicodeDecodeError) as exc:
        raise MatrixError([Problem(str(path), 0, None, None, f"cannot read: {exc}")])
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise MatrixError([Problem(str(path), line, None, None, f"invalid YAML: {what}; fix the syntax at this line")])
    except yaml.YAMLError as exc:
        raise MatrixError([Problem(str(path), 0, None, None, f"invalid YAML: {exc}")])
