"""`builder bake`: the file bake's documented schema accepts, naming every image; stale images/
refused; options; and, where buildx runs here, `docker buildx bake --print` reading it back."""

from __future__ import annotations

import json
import os
import subprocess

import jsonschema
import pytest

from bake_support import REPO, buildx_config, need, run_builder, write_project
from builder.bake import BakeOptions, bake_definition, build_args, target_name
from builder.errors import BuilderError, UsageError
from builder.matrix import load_matrix

SCHEMA = json.loads((REPO / "tests" / "fixtures" / "bake-schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


@pytest.fixture
def project(tmp_path):
    matrix = write_project(tmp_path / "proj")
    result = run_builder("--matrix", str(matrix), "render", "--all")
    assert result.returncode == 0, result.stderr
    return matrix


def test_schema_is_a_valid_json_schema_and_strict():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    good = {"group": {"default": {"targets": ["a"]}}, "target": {"a": {"context": ".", "tags": ["r/a:1"]}}}
    VALIDATOR.validate(good)
    for cache in (["type=inline"], ["ref=r/c:a,type=registry,mode=max"], [{"type": "registry", "ref": "r/c:a"}]):
        VALIDATOR.validate({"target": {"a": {"cache-to": cache, "cache-from": cache}}})
    for bad in (
        {"target": {"a.b": {}}},  # bake target names cannot hold dots
        {"target": {"a": {"dockerfiles": "x"}}},  # not a bake attribute
        {"target": {"a": {"tags": "r/a:1"}}},  # a list, not a string
        {"target": {"a": {"network": "bridge"}}},
        {"group": {"g": {}}},  # targets required
        {"targets": {}},
        {"target": {"a": {"cache-to": ["ref=r/cache:a"]}}},  # buildx: "type required form"
        {"target": {"a": {"cache-from": [{"ref": "r/cache:a"}]}}},
        {"target": {"a": {"cache-from": ["typo=registry,ref=r/cache:a"]}}},
    ):
        assert not VALIDATOR.is_valid(bad), bad


def test_bake_all_accepted_by_schema_and_names_every_image(project):
    out = project.parent / "docker-bake.json"
    result = run_builder("--matrix", str(project), "bake", "--all")
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    VALIDATOR.validate(data)
    matrix = load_matrix(project)
    assert set(data["target"]) == {target_name(s.name) for s in matrix.images} == {"nv-efa1_35", "dl"}
    assert data["group"]["default"]["targets"] == ["nv-efa1_35", "dl"]
    assert data["group"]["nvidia"]["targets"] == ["nv-efa1_35"]
    assert data["group"]["dlc"]["targets"] == ["dl"]
    assert "source" not in data["group"]  # no empty groups
    nv = data["target"]["nv-efa1_35"]
    assert nv["context"] == "."
    assert nv["dockerfile"] == "images/nv-efa1.35/Dockerfile"
    assert (project.parent / nv["context"] / nv["dockerfile"]).is_file()
    assert nv["tags"] == ["team/nvidia:nv-efa1.35", "team/nvidia:efa1.35.0"]
    assert nv["platforms"] == ["linux/amd64"]
    assert nv["args"]["EFA_INSTALLER_VERSION"] == "1.35.0"
    assert "DEBIAN_FRONTEND" not in nv["args"]
    assert nv["labels"]["builder.component.efa"] == "1.35.0"
    assert nv["labels"]["org.opencontainers.image.title"] == "nv-efa1.35"
    # No registry named: no cache is read (a bare tag would be Docker Hub's), inline cache written.
    assert "cache-from" not in nv and nv["cache-to"] == ["type=inline"]
    # Byte-stable: the same matrix gives the same file.
    first = out.read_bytes()
    assert run_builder("--matrix", str(project), "bake", "--all").returncode == 0
    assert out.read_bytes() == first


def test_bundled_matrix_bakes_every_image(bundled_matrix):
    data = bake_definition(REPO, bundled_matrix.images, BakeOptions(cache_ref="registry.example.com/cache"))
    VALIDATOR.validate(data)
    assert len(data["target"]) == len(bundled_matrix.images)
    assert sorted(data["group"]["default"]["targets"]) == sorted(target_name(s.name) for s in bundled_matrix.images)
    for spec in bundled_matrix.images:
        target = data["target"][target_name(spec.name)]
        assert (REPO / target["dockerfile"]).is_file()
        assert target["tags"] == list(spec.refs)


def test_registry_cache_and_network_options(project):
    result = run_builder("--matrix", str(project), "bake", "nv-efa1.35", "--out", "-",
                         "--registry", "123456789012.dkr.ecr.us-west-2.amazonaws.com",
                         "--cache-ref", "123456789012.dkr.ecr.us-west-2.amazonaws.com/team/cache",
                         "--network", "host", "--platform", "linux/amd64")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    VALIDATOR.validate(data)
    nv = data["target"]["nv-efa1_35"]
    assert list(data["target"]) == ["nv-efa1_35"]
    assert nv["tags"][0] == "123456789012.dkr.ecr.us-west-2.amazonaws.com/team/nvidia:nv-efa1.35"
    cache = "123456789012.dkr.ecr.us-west-2.amazonaws.com/team/cache:nv-efa1_35"
    assert nv["cache-from"] == [f"type=registry,ref={cache}"]
    assert nv["cache-to"] == [f"type=registry,ref={cache},mode=max,image-manifest=true,oci-mediatypes=true"]
    assert nv["network"] == "host"
    assert nv["platforms"] == ["linux/amd64"]


def test_registry_alone_reads_cache_from_the_image_there(project):
    result = run_builder("--matrix", str(project), "bake", "dl", "--out", "-", "--registry", "reg.example.com:5000")
    assert result.returncode == 0, result.stderr
    dl = json.loads(result.stdout)["target"]["dl"]
    assert dl["cache-from"] == [f"type=registry,ref={dl['tags'][0]}"]
    assert dl["tags"][0].startswith("reg.example.com:5000/") and dl["cache-to"] == ["type=inline"]


def test_context_is_where_bake_runs_whatever_the_file_folder(project):
    """bake resolves context from its working directory, so the file says '.' and the CLI
    says where to run it."""
    out = project.parent / "ci" / "bake.json"
    result = run_builder("--matrix", str(project), "bake", "--all", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"run 'docker buildx bake -f ci/bake.json' from {project.parent.resolve()}" in result.stderr
    target = json.loads(out.read_text())["target"]["dl"]
    assert target["context"] == "."
    assert (project.parent / target["context"] / target["dockerfile"]).is_file()


@pytest.mark.parametrize("name", ["default", "nvidia", "dlc", "source"])
def test_an_image_named_like_a_group_is_refused(tmp_path, name):
    matrix = write_project(tmp_path)
    matrix.write_text(matrix.read_text().replace("  - name: dl\n", f"  - name: {name}\n"))
    assert run_builder("--matrix", str(matrix), "render", "--all").returncode == 0
    result = run_builder("--matrix", str(matrix), "bake", "--all")
    assert result.returncode == 2, result.stderr
    assert f"image '{name}': bake target '{name}' has the name of a group" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--cache-ref", "Bad Ref"], "--cache-ref"),
    (["--cache-ref", "reg.example.com/cache:tag"], "--cache-ref"),
    (["--cache-ref", "team/cache"], "fully qualified"),  # would be Docker Hub's team/cache
    (["--registry", "https://reg.example.com"], "--registry"),
    (["--platform", "windows/amd64"], "only linux/amd64 is supported"),
    (["--platform", "linux/arm64"], "x86_64 software"),
    ([], "name at least one image"),
    (["nope"], "no image named 'nope'"),
])
def test_bad_input_exits_2(project, args, message):
    extra = [] if args and args[0] == "nope" or not args else ["--all"]
    result = run_builder("--matrix", str(project), "bake", *extra, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_stale_or_missing_dockerfile_exits_1(project):
    dockerfile = project.parent / "images" / "nv-efa1.35" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "RUN true\n")
    (project.parent / "images" / "dl" / "Dockerfile").unlink()
    result = run_builder("--matrix", str(project), "bake", "--all")
    assert result.returncode == 1
    assert "images/nv-efa1.35/Dockerfile (stale)" in result.stderr
    assert "images/dl/Dockerfile (missing)" in result.stderr
    assert "builder render --all" in result.stderr
    assert not (project.parent / "docker-bake.json").exists()


def test_build_args_are_the_dockerfile_args():
    text = "FROM x\nARG DEBIAN_FRONTEND=noninteractive\nARG NCCL_VERSION=v2.23.4-1\nARG NOVALUE\nRUN echo\n"
    assert build_args(text) == {"NCCL_VERSION": "v2.23.4-1"}


def test_options_checked_in_python_too():
    with pytest.raises(UsageError):
        BakeOptions(network="bridge").check()
    with pytest.raises(BuilderError):
        target_name("a/b")


def cache_entries(entries) -> list[dict]:
    """buildx prints cache entries as CSV strings (0.13 and older) or, since the composable
    attributes, as objects; both as {key: value} for comparison."""
    out = []
    for entry in entries or []:
        if isinstance(entry, dict):
            out.append({k: str(v) for k, v in entry.items()})
        else:
            out.append(dict(part.split("=", 1) for part in entry.split(",")))
    return out


def test_cache_entries_normalise_both_forms():
    assert cache_entries(["type=registry,ref=r/c:a,mode=max"]) == \
        cache_entries([{"type": "registry", "ref": "r/c:a", "mode": "max"}]) == [{"type": "registry", "ref": "r/c:a", "mode": "max"}]


def _bake_print(config, folder, *args):
    return subprocess.run(["/usr/bin/docker", "buildx", "bake", "--print", *args], cwd=folder,
                          env={**os.environ, "DOCKER_CONFIG": str(config)}, capture_output=True, text=True, timeout=120)


@pytest.mark.integration
def test_buildx_bake_print_reads_the_file(project, record_property):
    config = buildx_config()
    need(config is not None, "no docker buildx plugin here and none could be fetched from Debian (docker-buildx)")
    version = subprocess.run(["/usr/bin/docker", "buildx", "version"], env={**os.environ, "DOCKER_CONFIG": str(config)},
                             capture_output=True, text=True, timeout=60).stdout.strip()
    record_property("buildx_version", version)
    print(f"buildx: {version}")  # what this check ran against (shown with -rP or on failure)
    assert run_builder("--matrix", str(project), "bake", "--all", "--cache-ref", "127.0.0.1:5000/cache").returncode == 0
    ours = json.loads((project.parent / "docker-bake.json").read_text())
    result = _bake_print(config, project.parent, "-f", "docker-bake.json")
    assert result.returncode == 0, (version, result.stderr)
    printed = json.loads(result.stdout)
    assert set(printed["target"]) == set(ours["target"]), version
    assert printed["group"]["default"]["targets"] == ours["group"]["default"]["targets"], version
    for name, target in ours["target"].items():
        seen = printed["target"][name]
        assert seen["context"] == "." and (project.parent / seen["dockerfile"]).is_file(), version
        for key in ("dockerfile", "tags", "args", "labels", "platforms"):
            assert seen.get(key) == (target[key] or None), (version, name, key)  # bake drops empty maps
        for key in ("cache-from", "cache-to"):
            assert cache_entries(seen.get(key)) == cache_entries(target[key]), (version, name, key)

    # The same buildx refuses what is wrong, so its acceptance above means something: a cache
    # entry without type, a group naming a target that does not exist, a list given as a string.
    for damage, message in (
        (lambda d: d["target"]["dl"].update({"cache-to": ["ref=127.0.0.1:5000/cache:dl"]}), "type required"),
        (lambda d: d["group"]["default"]["targets"].append("missing"), "failed to find target missing"),
        (lambda d: d["target"]["dl"].update({"platforms": "linux/amd64"}), "Unsuitable value"),
    ):
        broken = json.loads(json.dumps(ours))
        damage(broken)
        path = project.parent / "broken-bake.json"
        path.write_text(json.dumps(broken))
        refused = _bake_print(config, project.parent, "-f", path.name)
        assert refused.returncode != 0 and message in refused.stderr, (version, message, refused.stderr[-500:])
