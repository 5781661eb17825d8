"""`builder outdated` end to end against local stand-ins speaking the real protocols: Debian's
docker-registry (htpasswd logins, tags of several families), and one HTTP server answering as
GitHub's API, PyPI's JSON API and the EFA download site (tests/outdated_support.py).

The EFA signing key is a throw-away key made here; the pinned AWS fingerprint is replaced for
the test run only, by monkeypatching builder.outdated.efa.EFA_GPG_FINGERPRINT in this process
(the CLI runs in-process through click's runner for that reason; nothing in the product reads
an override)."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re

import pytest
from click.testing import CliRunner

from lock_support import AuthRegistry
from outdated_support import ThrowawayKey, Upstreams, fill_registry, project, synthetic_tarball
from builder.cli import cli
from builder.outdated import efa

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    registry = AuthRegistry(tmp_path_factory.mktemp("registry"), "htpasswd").start()
    fill_registry(registry)
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    return ThrowawayKey(tmp_path_factory.mktemp("gnupg"))


@pytest.fixture
def upstreams(key):
    server = Upstreams(key).start()
    yield server
    server.stop()


@pytest.fixture
def test_key_pinned(monkeypatch, key):
    """TEST ONLY: the throw-away key's fingerprint stands in for AWS's pinned one."""
    monkeypatch.setattr(efa, "EFA_GPG_FINGERPRINT", key.fingerprint)


def outdated(matrix, upstreams, registry, tmp_path, *args):
    env = {"DOCKER_CONFIG": str(registry.docker_config(tmp_path / "login")), "GITHUB_TOKEN": "",
           "AWS_EC2_METADATA_DISABLED": "true"}
    result = CliRunner().invoke(cli, ["--matrix", str(matrix), "outdated", "--github-api", upstreams.github_api,
                                      "--pypi-url", upstreams.pypi, "--efa-url", upstreams.efa_template, *args],
                                env=env, catch_exceptions=False)
    return result


def findings(result) -> dict[tuple[str, str], dict]:
    return {(f["image"], f["subject"]): f for f in json.loads(result.stdout)["findings"]}


def test_report_lists_every_newer_release_with_its_implications(tmp_path, registry, upstreams):
    matrix = project(tmp_path / "proj", registry.host)
    before = matrix.read_text()
    result = outdated(matrix, upstreams, registry, tmp_path, "--json")
    assert result.exit_code == 0, result.output
    assert matrix.read_text() == before  # a report writes nothing
    found = findings(result)
    ngc = "nvidia-ngc25.06-py3-efa1.47.0"
    assert found[(ngc, "gdrcopy")]["newest"] == "2.6" and found[(ngc, "gdrcopy")]["verdict"] == "valid"
    assert found[(ngc, "nccl_tests")]["newest"] == "2.19.6"
    efa_bump = found[(ngc, "efa")]
    assert efa_bump["current"] == "1.47.0" and efa_bump["newest"] == "1.51.0"
    assert "bundles aws-ofi-nccl 1.22.0" in efa_bump["implications"]
    assert any("--write verifies" in note for note in efa_bump["implications"])
    # The older axis value is an anchor, kept.
    assert found[("nvidia-ngc25.01-py3-efa1.38.1", "efa")]["verdict"] == "kept"
    # A source-built aws-ofi-nccl with an installer that bundles one: the rule refuses it.
    refused = found[("nvidia-ngc25.01-efa1.35-ofi", "efa")]
    assert refused["verdict"] == "refused" and any("[ofi-bundled]" in r for r in refused["reasons"])
    assert any("new plugin era" in note for note in refused["implications"])
    assert found[("nvidia-ngc25.01-efa1.35-ofi", "aws_ofi_nccl")]["newest"] == "1.21.1"
    assert found[("source-pt2.7.1", "nccl")]["newest"] == "2.30.7"
    assert found[("source-pt2.7.1", "sagemaker_training")]["newest"] == "5.1.4"  # pypi.org, recorded
    # Bases: newest tag of the same family only (not -igpu, not another OS, not a -vN build tag).
    assert found[(ngc, "base")]["newest"] == "25.11-py3"
    assert any("nccl 2.28.7" in note for note in found[(ngc, "base")]["implications"])
    assert found[("source-pt2.7.1", "base")]["newest"] == "13.0.2-cudnn-devel-ubuntu22.04"
    assert found[("dlc-pt2.8.0-ec2", "base")]["newest"] == "2.10.0-gpu-py313-cu130-ubuntu22.04-ec2"
    # The second DLC generation: same variant, two-part versions, not the CPU image nor 2.12.1-...
    assert found[("dlc-pt2.12-al2023-sagemaker", "base")]["newest"] == "2.13-cu133-amzn2023-sagemaker"
    sources = {s["subject"]: s for s in json.loads(result.stdout)["sources"]}
    assert all(s["error"] is None for s in sources.values())
    assert sources["base ngc-25.06"]["family"] == "NGC YY.MM-py3"

    table = outdated(matrix, upstreams, registry, tmp_path)
    assert table.exit_code == 0
    assert re.search(r"^  efa +1\.47\.0 -> 1\.51\.0 \(\d+ newer\): the rules accept it; SHA256 not yet verified",
                     table.stdout, re.M)
    check = outdated(matrix, upstreams, registry, tmp_path, "--check")
    assert check.exit_code == 1 and "newer upstream releases" in check.output


def test_write_keeps_the_file_but_the_bumps_and_pins_the_verified_checksum(tmp_path, registry, upstreams, test_key_pinned):
    matrix = project(tmp_path / "proj", registry.host)
    before = matrix.read_text()
    result = outdated(matrix, upstreams, registry, tmp_path, "--write")
    assert result.exit_code == 0, result.output
    after = matrix.read_text()
    diff = [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    removed = [line[1:] for line in diff if line.startswith("-")]
    added = [line[1:] for line in diff if line.startswith("+")]
    # Each removed line comes back with only its version changed; everything else is untouched.
    assert removed == [
        '      gdrcopy: "2.4.1"  # GDRCopy: bumped here, for every nvidia image',
        '      efa: ["1.38.1", "1.47.0"]   # the newest is bumped, 1.38.1 stays as the era\'s anchor',
        '      nccl_tests: "2.16.9"',
        '      aws_ofi_nccl: "1.12.1"',
        '      nccl_tests: "2.13.10"',
        '      nccl: "2.26.2"',
        '      efa: "1.41.0"',
        '      gdrcopy: "2.4.1"',
        '      nccl_tests: "2.15.2"',
        '      sagemaker_training: "4.8.1"',
        '      sagemaker_pytorch_training: "2.8.1"',
    ], removed
    digest = hashlib.sha256(synthetic_tarball("1.51.0")).hexdigest()
    assert added[:2] == ['      gdrcopy: "2.6"    # GDRCopy: bumped here, for every nvidia image',
                         "  efa_installer:"]  # ruamel keeps the comment's column
    assert added[2] == f'    "1.51.0": {digest}'  # the SHA256 of the tarball whose signature verified
    assert added[3:7] == ["  ngc-25.11:", f"    image: {registry.host}/nvidia/pytorch:25.11-py3",
                          "    description: 25.11-py3, added by builder outdated beside ngc-25.06",
                          '    ships: {cuda: "13.0.2", nccl: "2.28.7", pytorch: "2.10.0a0"}']
    assert "  dlc-2.10.0-ec2:" in added and "    dlc_tag: 2.10.0-gpu-py313-cu130-ubuntu22.04-ec2" in added
    assert "  dlc-2.13-al2023-sagemaker:" in added and "    dlc_tag: 2.13-cu133-amzn2023-sagemaker" in added
    for line in ('      efa: ["1.38.1", "1.51.0"]   # the newest is bumped, 1.38.1 stays as the era\'s anchor',
                 '      nccl: "2.30.7"', '      sagemaker_training: "5.1.4"', '      aws_ofi_nccl: "1.21.1"'):
        assert line in added, (line, added)
    # NGC's environment does not say its Python, which the nvidia images' rules need: the new base
    # is added alone, not joined to the axis (a person fills in ships.python, then adds it).
    assert "      base: [ngc-25.01, ngc-25.06]" in after
    assert re.search(r"^  base +25\.06-py3 -> 25\.11-py3 .*: written; .*must list python", result.stdout, re.M) \
        or "added as a base" in result.stdout
    assert '      efa: "1.35.0"' not in removed  # refused by ofi-bundled: not written
    # What --write wrote is a valid matrix, and images/ was rendered from it.
    assert not (tmp_path / "proj" / "images" / "nvidia-ngc25.06-py3-efa1.47.0").exists()
    dockerfile = (tmp_path / "proj" / "images" / "nvidia-ngc25.06-py3-efa1.51.0" / "Dockerfile").read_text()
    assert digest in dockerfile
    again = outdated(matrix, upstreams, registry, tmp_path, "--json", "--only", "efa")
    assert again.exit_code == 0
    assert ("nvidia-ngc25.06-py3-efa1.51.0", "efa") not in findings(again)


def test_a_forged_efa_tarball_is_refused(tmp_path, registry, upstreams, test_key_pinned):
    matrix = project(tmp_path / "proj", registry.host)
    before = matrix.read_text()
    upstreams.forged.add("1.51.0")
    result = outdated(matrix, upstreams, registry, tmp_path, "--write", "--only", "efa")
    assert result.exit_code == 1, result.output
    assert "signature check failed (bad signature)" in result.output
    assert matrix.read_text() == before  # nothing else to write, and the efa bump is not written


def test_a_key_other_than_the_pinned_one_is_refused(tmp_path, registry, upstreams, test_key_pinned):
    matrix = project(tmp_path / "proj", registry.host)
    other = ThrowawayKey(tmp_path / "other-gnupg", "someone else <other@example.invalid>")
    upstreams.foreign_key = other.public
    result = outdated(matrix, upstreams, registry, tmp_path, "--write", "--only", "efa")
    assert result.exit_code == 1 and "does not hold the pinned key" in result.output


def test_without_the_test_pin_the_throwaway_key_is_refused(tmp_path, registry, upstreams):
    """AWS's real fingerprint stays pinned: a tarball signed by any other key is not written."""
    matrix = project(tmp_path / "proj", registry.host)
    result = outdated(matrix, upstreams, registry, tmp_path, "--write", "--only", "efa")
    assert result.exit_code == 1 and "4E9091BCBB97A96B26B15E59A05480B1DD2D3CCC" in result.output


def test_a_rate_limited_source_is_reported_and_the_rest_go_on(tmp_path, registry, upstreams):
    matrix = project(tmp_path / "proj", registry.host)
    upstreams.github_remaining = 2  # aws-ofi-nccl and GDRCopy (one page each) are answered, then 403
    result = outdated(matrix, upstreams, registry, tmp_path, "--json")
    assert result.exit_code == 4, result.output
    data = json.loads(result.stdout)
    errors = {s["subject"]: s["error"] for s in data["sources"] if s["error"]}
    assert set(errors) == {"nccl", "nccl_tests"}
    assert "rate limit is used up until" in errors["nccl"] and "GITHUB_TOKEN" in errors["nccl"]
    assert any(f["subject"] == "efa" for f in data["findings"])  # the other sources were asked
    assert "2 sources could not be asked: nccl, nccl_tests" in result.output


def test_the_bundled_matrix_against_the_fixtures(tmp_path, registry, upstreams, repo_root):
    """The bundled matrix, its NGC and CUDA bases mapped onto the local registry; its DLC bases
    live in AWS's regional ECR, which cannot be asked here: reported, exit 4, the rest listed."""
    text = (repo_root / "matrix.yaml").read_text()
    text = text.replace("nvcr.io/nvidia/pytorch:", f"{registry.host}/nvidia/pytorch:")
    text = text.replace("image: nvidia/cuda:", f"image: {registry.host}/nvidia/cuda:")
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "matrix.yaml").write_text(text)
    (folder / "examples").symlink_to(repo_root / "examples")
    env_backup = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("AWS_")}
    try:
        result = outdated(folder / "matrix.yaml", upstreams, registry, tmp_path, "--json")
    finally:
        os.environ.update(env_backup)
    assert result.exit_code == 4, result.output
    data = json.loads(result.stdout)
    errors = [s["subject"] for s in data["sources"] if s["error"]]
    assert errors and all(e.startswith("base dlc-") for e in errors)
    subjects = {f["subject"] for f in data["findings"]}
    assert {"efa", "nccl", "aws_ofi_nccl", "nccl_tests", "gdrcopy", "sagemaker_training", "base"} <= subjects


def test_tag_lists_and_configs_through_lock_s_registry_client(tmp_path, registry, key):
    """builder.lock's registry client, extended: the tag list of the real docker-registry (Basic
    login from a Docker config, as lock reads it), an image config found through an OCI index;
    and the spec's n/last pagination with Link headers, which docker-registry 2.8 does not do for
    tags, against the stand-in that follows the spec (outdated_support.Upstreams._tags)."""
    import requests

    from builder.registry_auth import Credentials
    from builder.outdated.families import family_of
    from builder.outdated.registry import TagLister, ships_from_config
    from outdated_support import REGISTRY_TAGS

    asked = []

    class Counting(requests.Session):
        def request(self, method, url, *args, **kwargs):
            asked.append(url)
            return super().request(method, url, *args, **kwargs)

    login = registry.docker_config(tmp_path / "login") / "config.json"
    lister = TagLister(Credentials(docker_config=login), timeout=10, session=Counting())
    expected = sorted(REGISTRY_TAGS["deep-learning-containers/pytorch"])
    tags = lister.tags(f"{registry.host}/deep-learning-containers/pytorch:2.11-cu130-amzn2023-sagemaker")
    assert sorted(tags) == expected
    assert family_of("2.11-cu130-amzn2023-sagemaker").newer("2.11-cu130-amzn2023-sagemaker", tags) == \
        ["2.12-cu130-amzn2023-sagemaker", "2.13-cu133-amzn2023-sagemaker"]
    config = lister.image_config(f"{registry.host}/nvidia/pytorch:25.11-py3")  # an OCI index -> linux/amd64
    assert ships_from_config(config) == {"nccl": "2.28.7", "cuda": "13.0.2", "pytorch": "2.10.0a0"}

    server = Upstreams(key).start()
    try:
        lister.page_size = 2
        asked.clear()
        paged = lister.tags(f"127.0.0.1:{server.port}/deep-learning-containers/pytorch:2.11-cu130-amzn2023")
    finally:
        server.stop()
    assert paged == expected  # lexical order, every tag once
    assert len(asked) == 5 and asked[1].endswith(f"?n=2&last={expected[1]}")  # 9 tags, 2 a page


def test_a_registry_taken_for_ecr_is_asked_with_an_ecr_login(tmp_path):
    """As `builder lock`: --ecr-registry makes the login come from ECR's get_authorization_token
    (moto in server mode); the registry accepts the AWS:<token> login it decodes to."""
    from push_support import MOTO_PASSWORD, MotoEcr, aws_env

    moto = MotoEcr().start()
    registry = AuthRegistry(tmp_path / "registry", "htpasswd", username="AWS", password=MOTO_PASSWORD).start()
    try:
        for tag in ("25.01-py3", "25.06-py3", "25.11-py3"):
            from outdated_support import NGC_ENV, push_image

            push_image(registry, "nvidia/pytorch", tag, NGC_ENV[tag], index=True)
        matrix = project(tmp_path / "proj", registry.host)
        env = {k: v for k, v in aws_env(moto.endpoint).items() if k.startswith("AWS_")}
        env["DOCKER_CONFIG"] = str(tmp_path / "empty")  # no docker login: only ECR's can work
        result = CliRunner().invoke(cli, ["--matrix", str(matrix), "outdated", "nvidia-ngc25.01-efa1.35-ofi", "--only",
                                          "bases", "--json", "--ecr-registry", registry.host], env=env)
        assert result.exit_code == 0, result.output
        found = findings(result)
        assert found[("nvidia-ngc25.01-efa1.35-ofi", "base")]["newest"] == "25.11-py3"
        refused = CliRunner().invoke(cli, ["--matrix", str(matrix), "outdated", "nvidia-ngc25.01-efa1.35-ofi", "--only",
                                           "bases", "--json"], env=env)
        assert refused.exit_code == 4 and "docker login" in refused.output  # without ECR: no login at all
    finally:
        registry.stop()
        moto.stop()
