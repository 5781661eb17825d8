"""builder outdated's parts without a registry: version forms, tag families, the round-trip
document and its edits, GnuPG verification (real gpg, throw-away keys), GitHub pagination and
rate limits and the EFA probe against the local stand-in server (tests/outdated_support.py)."""

from __future__ import annotations

import shutil

import pytest
import requests

from outdated_support import FIXTURES, ThrowawayKey, Upstreams, published_efa, synthetic_tarball
from builder.outdated import efa, versions
from builder.outdated.families import family_of
from builder.outdated.gpg import SignatureError, verify_detached
from builder.outdated.plan import MatrixDocument
from builder.outdated.web import SourceError, Web, rate_limit_message

# --- version forms ------------------------------------------------------------------------------


@pytest.mark.parametrize("component, tag, version", [
    ("nccl", "v2.23.4-1", "2.23.4"),
    ("nccl", "v2.18.3-2", "2.18.3-2"),
    ("nccl", "v2.23.4", None),
    ("aws_ofi_nccl", "v1.12.1-aws", "1.12.1"),
    ("aws_ofi_nccl", "v1.14.0", "1.14.0"),
    ("aws_ofi_nccl", "v1.14.0-rc1", None),
    ("nccl_tests", "v2.13.10", "2.13.10"),
    ("gdrcopy", "v2.6", "2.6"),
    ("gdrcopy", "v2.4.1", "2.4.1"),
    ("gdrcopy", "2.4.1", None),
])
def test_tags_in_the_matrix_forms(component, tag, version):
    assert versions.from_tag(component, tag) == version


def test_newer_orders_and_skips_what_is_not_newer():
    assert versions.newer("2.23.4", ["2.22.3", "2.23.4", "2.23.4-2", "2.24.3", "2.30.0rc1", "oops"]) == ["2.23.4-2", "2.24.3"]
    assert versions.newer("https://example.com/x.whl", ["1.0"]) == []


SKIPPED = {  # what the real repositories tag besides releases: pre-releases, CUDA-specific 1.x builds, other packages
    "nccl": {"v1.2.3-1+cuda8.0", "v1.2.3-1+cuda7.5", "v1.2.2-1+cuda8.0", "v1.2.2-1+cuda7.5", "v1.2.1-2+cuda7.5",
             "v1.2.1-1+cuda8.0-1", "v1.2.1-1+cuda8.0", "v1.2.1-1+cuda7.5-1", "v1.2.1-1+cuda7.5", "inc_nsteps_v2.16",
             "nccl-ep-v0.1.0", "nccl4py-v0.1.1", "nccl4py-v0.2.0", "nccl4py-v0.3.1"},
    "aws_ofi_nccl": {"v1.7.0rc1-aws", "v0.9", "v1.4.0aws"},
    "nccl_tests": {"delete"},
    "gdrcopy": {"v2.3.1-1", "v2.1-beta2", "v2.1-beta1", "v2.0-beta.4", "v2.0-beta.3", "v2.0-beta.2", "v2.0-beta.1"},
}


def test_the_real_repositories_tags_normalise_and_only_non_releases_are_skipped():
    import json

    for component, (repo, _) in versions.GITHUB_COMPONENTS.items():
        tags = [t["name"] for t in json.loads((FIXTURES / "github" / f"{repo.replace('/', '-')}.tags.json").read_text())]
        assert {t for t in tags if versions.from_tag(component, t) is None} == SKIPPED[component]
    assert versions.from_tag("nccl", "v2.30.7-1") == "2.30.7"


def test_pypi_releases_skip_yanked_and_prereleases():
    document = {"releases": {"1.0": [{"yanked": False}], "1.1": [{"yanked": True}], "1.2rc1": [{"yanked": False}],
                             "1.3": [], "1.4": [{"yanked": True}, {"yanked": False}]}}
    assert versions.pypi_releases(document) == ["1.0", "1.4"]
    import json

    recorded = json.loads((FIXTURES / "pypi" / "sagemaker-training.json").read_text())
    assert "5.1.4" in versions.pypi_releases(recorded) and recorded["info"]["version"] == "5.1.4"


# --- tag families --------------------------------------------------------------------------------

NGC = ["24.09-py3", "25.06-py3", "25.06-py3-igpu", "25.11-py3", "26.01-py3-igpu", "latest"]
CUDA = ["12.8.1-cudnn-devel-ubuntu22.04", "12.9.1-cudnn-devel-ubuntu22.04", "13.0.2-cudnn-devel-ubuntu24.04",
        "13.0.2-cudnn-runtime-ubuntu22.04", "13.0.2-devel-ubuntu22.04", "12.10.0-cudnn-devel-ubuntu22.04"]
DLC1 = ["2.8.0-gpu-py312-cu129-ubuntu22.04-ec2", "2.8.0-gpu-py312-cu129-ubuntu22.04-ec2-v1.10",
        "2.9.0-gpu-py312-cu130-ubuntu22.04-ec2", "2.10.0-gpu-py313-cu130-ubuntu22.04-sagemaker",
        "2.10.0-cpu-py313-ubuntu22.04-ec2"]
DLC2 = ["2.11-cu130-amzn2023", "2.11-cu130-amzn2023-sagemaker", "2.12-cu130-amzn2023", "2.12-cu130-amzn2023-sagemaker",
        "2.12.1-cu130-amzn2023-sagemaker", "2.13-cu133-amzn2023", "2.13-cu133-amzn2023-sagemaker",
        "2.13-cpu-amzn2023", "2.13-cpu-amzn2023-sagemaker"]


@pytest.mark.parametrize("current, tags, expected", [
    ("25.06-py3", NGC, ["25.11-py3"]),
    ("12.8.1-cudnn-devel-ubuntu22.04", CUDA, ["12.9.1-cudnn-devel-ubuntu22.04", "12.10.0-cudnn-devel-ubuntu22.04"]),
    ("2.8.0-gpu-py312-cu129-ubuntu22.04-ec2", DLC1, ["2.9.0-gpu-py312-cu130-ubuntu22.04-ec2"]),
    ("2.11-cu130-amzn2023", DLC2, ["2.12-cu130-amzn2023", "2.13-cu133-amzn2023"]),
    ("2.11-cu130-amzn2023-sagemaker", DLC2, ["2.12-cu130-amzn2023-sagemaker", "2.13-cu133-amzn2023-sagemaker"]),
    ("2.11.0-cu130-amzn2023-sagemaker", DLC2, ["2.12.1-cu130-amzn2023-sagemaker"]),
    ("2.11-cpu-amzn2023", DLC2, ["2.13-cpu-amzn2023"]),
    ("v1.2-slim", ["v1.3-slim", "v1.10-slim", "v2.0", "v1.1-slim"], ["v1.3-slim", "v1.10-slim"]),
])
def test_a_base_moves_within_its_family(current, tags, expected):
    assert family_of(current).newer(current, tags) == expected


def test_families_have_names_people_read():
    assert family_of("25.06-py3").name == "NGC YY.MM-py3"
    assert family_of("2.13-cu133-amzn2023-sagemaker").name == "DLC X.Y-cuNNN-amzn2023-sagemaker"
    assert family_of("2.8.0-gpu-py312-cu129-ubuntu22.04-ec2").name.startswith("DLC X.Y.Z-gpu")


# --- the round-trip document ---------------------------------------------------------------------


def test_the_bundled_matrix_round_trips_byte_for_byte(repo_root):
    document = MatrixDocument(repo_root / "matrix.yaml")
    assert document.text() == (repo_root / "matrix.yaml").read_text()


def _fixture_matrix(tmp_path):
    path = tmp_path / "matrix.yaml"
    path.write_text((FIXTURES / "matrix.yaml").read_text().replace("@REGISTRY@", "127.0.0.1:5000"))
    return path


def test_component_edits_find_every_place_and_spare_older_axis_values(tmp_path):
    document = MatrixDocument(_fixture_matrix(tmp_path))
    assert document.text() == (tmp_path / "matrix.yaml").read_text()
    where = [e.where for e in document.component_edits("gdrcopy", "2.4.1", "2.6")]
    assert where == ["flavor_defaults.nvidia.components.gdrcopy", "images.2.components.gdrcopy"]
    assert [e.where for e in document.component_edits("efa", "1.47.0", "1.51.0")] == ["images.0.axes.efa.1"]
    assert document.component_edits("efa", "1.38.1", "1.51.0") == []  # an older axis value: an anchor
    refused = document.attempt(document.component_edits("efa", "1.35.0", "1.51.0")[0])
    assert not refused.accepted and "[ofi-bundled]" in refused.problems[0]
    assert refused.images == ("nvidia-ngc25.01-efa1.35-ofi",)
    assert document.text() == (tmp_path / "matrix.yaml").read_text()  # a refused edit leaves nothing behind


def test_base_edit_names_the_new_base_after_its_predecessor(tmp_path):
    document = MatrixDocument(_fixture_matrix(tmp_path))
    edit = document.base_edit("ngc-25.06", "25.11-py3", {"nccl": "2.28.7"})
    assert edit.subject == "ngc-25.11" and edit.base["fields"] == {"image": "127.0.0.1:5000/nvidia/pytorch:25.11-py3"}
    assert edit.axes == (("images", 0, "axes", "base"),)
    dlc = document.base_edit("dlc-2.8.0-ec2", "2.10.0-gpu-py313-cu130-ubuntu22.04-ec2", {})
    assert dlc.subject == "dlc-2.10.0-ec2" and set(dlc.base["fields"]) == {"dlc_tag", "image"}
    assert document.base_edit("ngc-25.01", "25.06-py3", {}) is None  # that tag is a base already


# --- GnuPG -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    if shutil.which("gpg") is None:
        from prereq import need

        need(False, "gpg is not installed (apt-get install gnupg)")
    return ThrowawayKey(tmp_path_factory.mktemp("gnupg"))


def _signed(tmp_path, signer, data: bytes):
    (tmp_path / "file").write_bytes(data)
    (tmp_path / "file.sig").write_bytes(signer.sign(data))
    (tmp_path / "key").write_bytes(signer.public)
    return tmp_path / "file", tmp_path / "file.sig", tmp_path / "key"


def test_a_good_signature_by_the_pinned_key_passes(tmp_path, signer):
    data, sig, key = _signed(tmp_path, signer, synthetic_tarball("1.51.0"))
    verify_detached(data, sig, key, signer.fingerprint, "test")
    spaced = " ".join(signer.fingerprint[i:i + 4] for i in range(0, 40, 4))  # as AWS prints it
    verify_detached(data, sig, key, spaced, "test")


def test_a_forged_file_fails(tmp_path, signer):
    data, sig, key = _signed(tmp_path, signer, synthetic_tarball("1.51.0"))
    data.write_bytes(data.read_bytes() + b"\0")
    with pytest.raises(SignatureError, match="bad signature"):
        verify_detached(data, sig, key, signer.fingerprint, "test")


def test_a_signature_by_another_key_fails_even_from_the_same_key_file(tmp_path, signer):
    other = ThrowawayKey(tmp_path / "other", "other <other@example.invalid>")
    data, _, _ = _signed(tmp_path, signer, b"payload")
    (tmp_path / "other.sig").write_bytes(other.sign(b"payload"))
    (tmp_path / "both").write_bytes(signer.public + other.public)
    with pytest.raises(SignatureError, match="no good signature by the pinned key"):
        verify_detached(data, tmp_path / "other.sig", tmp_path / "both", signer.fingerprint, "test")
    with pytest.raises(SignatureError, match="does not hold the pinned key"):
        verify_detached(data, tmp_path / "other.sig", tmp_path / "key", other.fingerprint, "test")


def test_the_pinned_fingerprint_is_awss():
    assert efa.EFA_GPG_FINGERPRINT.replace(" ", "") == "4E9091BCBB97A96B26B15E59A05480B1DD2D3CCC"


# --- GitHub and the EFA site (local stand-in) -------------------------------------------------------


@pytest.fixture
def upstreams(signer):
    server = Upstreams(signer).start()
    yield server
    server.stop()


def test_github_pages_are_followed_by_their_link_header(upstreams):
    web = Web(timeout=10)
    web.per_page = 20  # NCCL's 78 tags: four pages
    tags = [t["name"] for t in web.github_list(f"{upstreams.github_api}/repos/NVIDIA/nccl/tags", "NCCL tags")]
    assert len(tags) == 78 and tags[0] == "v2.30.7-1" and len(set(tags)) == 78
    assert [p for m, p in upstreams.requests if p.endswith("/tags")] == ["/github/repos/NVIDIA/nccl/tags"] * 4


def test_a_rate_limit_in_the_middle_of_the_pages_stops_with_when_to_retry(upstreams):
    web = Web(timeout=10)
    web.per_page = 20
    upstreams.github_remaining = 2
    with pytest.raises(SourceError, match=r"rate limit is used up until \d{4}-\d\d-\d\d \d\d:\d\d UTC \(HTTP 403\); set GITHUB_TOKEN"):
        list(web.github_list(f"{upstreams.github_api}/repos/NVIDIA/nccl/tags", "NCCL tags"))


def test_secondary_rate_limits_say_when_to_retry():
    answer = requests.Response()
    answer.status_code = 429
    answer.headers["retry-after"] = "60"
    assert rate_limit_message(answer, True) == "GitHub's secondary rate limit: retry after 60 s (HTTP 429)"


def test_efa_probe_finds_the_newest_and_checks_the_latest_tarball(upstreams):
    found = efa.newest(Web(timeout=10), upstreams.efa_template, ["1.35.0", "1.47.0"])
    assert found.newest == published_efa()[-1] == "1.51.0"
    assert found.found == ("1.48.0", "1.49.0", "1.50.0", "1.51.0") and found.note is None
    heads = [p for m, p in upstreams.requests if m == "HEAD"]
    assert len(heads) <= 4 * 3 + 2  # a few HEADs per version, never a blind scan


def test_efa_probe_reports_a_skipped_version_number(upstreams):
    upstreams.efa_versions.remove("1.50.0")  # AWS publishing 1.51.0 without 1.50.0
    found = efa.newest(Web(timeout=10), upstreams.efa_template, ["1.47.0"])
    assert found.newest == "1.49.0" and "skipped a version" in found.note


@pytest.mark.parametrize("args, message", [
    (["--efa-url", "http://example.com/aws-efa-installer-{version}.tar.gz"], "is not an https URL"),
    (["--efa-url", "https://example.com/x.tar.gz"], "needs a {version} placeholder"),
    (["--github-api", "ftp://example.com"], "--github-api"),
    (["--only", "pytorch"], "Invalid value for '--only'"),
    (["nope"], "no image named 'nope'"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, repo_root):
    from click.testing import CliRunner

    from builder.cli import cli

    result = CliRunner().invoke(cli, ["--matrix", str(repo_root / "matrix.yaml"), "outdated", *args])
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
