"""The layers stay layers: Face -> Stages -> Core, never back, and no import cycles.

Core: loading, validating and rendering a matrix (pure: files in, text out). Stages: build,
smoke, push, export, lock, nccl, slurm, ...: they talk to engines, registries and daemons.
Face: the click layer (builder.cli, builder.commands.*). The graph is read from the source
(every import statement, those inside functions included; ``if TYPE_CHECKING:`` blocks are
not imports at run time), so an import hidden in a function cannot bring a cycle back.
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "builder"

# The pure core. A module added here must import only core modules (the test says which not).
CORE = frozenset({
    "builder", "builder.errors", "builder.yamlio", "builder.facts", "builder.components",
    "builder.stanzas", "builder.matrix", "builder.rules", "builder.render", "builder.imageref",
    "builder.labels", "builder.lockfile", "builder.render_cache",
})
# What loading and rendering may never pull in: network clients and engine SDKs. (The standard
# library's subprocess module is imported, never called, by packaging.tags, which
# packaging.requirements needs; no builder module that runs processes is loaded, see CORE.)
NEVER_IN_CORE = ("requests", "urllib3", "docker", "boto3", "botocore", "socket", "click")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The builder modules ``name`` imports ('from builder.x import y' is builder.x.y when y is a
    module, else builder.x)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "builder")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base.split(".")[0] == "builder":
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(name)
    return found


@functools.lru_cache(maxsize=1)
def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(name: str) -> str:
    if name in ("builder.cli", "builder.__main__") or name.startswith("builder.commands"):
        return "face"
    return "core" if name in CORE else "stage"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in graph:
                continue
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_the_package_has_no_import_cycles():
    assert _cycles(_graph()) == []


def test_core_imports_only_core():
    wrong = sorted(f"{m} imports {d} ({_layer(d)})" for m, deps in _graph().items() if _layer(m) == "core"
                   for d in deps if _layer(d) != "core")
    assert wrong == [], "the core must stay pure; move the code or add a pure module to CORE:\n" + "\n".join(wrong)


def test_nothing_below_the_face_imports_it():
    wrong = sorted(f"{m} imports {d}" for m, deps in _graph().items() if _layer(m) != "face"
                   for d in deps if _layer(d) == "face")
    assert wrong == []


def test_the_graph_reader_sees_imports_inside_functions():
    graph = _graph()
    assert "builder.lock" in graph["builder.commands.lock"]  # imported inside the command only
    assert _layer("builder.smoke") == "stage" and _layer("builder.commands.smoke") == "face"
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_loading_and_rendering_the_matrix_pulls_in_no_network_or_engine_code(repo_root):
    script = (
        "import json, sys\n"
        "from builder.matrix import load_matrix\n"
        "from builder.render import Renderer\n"
        "m = load_matrix(sys.argv[1])\n"
        "r = Renderer(catalog=m.catalog)\n"
        "[r.render(s) for s in m.images]\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(repo_root / "matrix.yaml")], capture_output=True,
                         text=True, check=True, cwd=repo_root)
    loaded = json.loads(out.stdout)
    assert sorted(m for m in loaded if m.split(".")[0] in NEVER_IN_CORE) == []
    assert sorted(m for m in loaded if m.startswith("builder") and _layer(m) != "core") == []
