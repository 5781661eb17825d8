"""Current bases and components (issue 10): the 2026 AL2023 DLC generation, EFA >= 1.48's NGC
detection, bundled aws-ofi-nccl as ranges, the stanza defects, each fixed or refused by a rule with
one clear line. Facts are checked against what the upstream sources named in builder/facts.py say."""

from __future__ import annotations

import copy
import subprocess

import pytest

from builder import components as comp
from builder.matrix import load_matrix
from builder.render import Renderer
from tests.matrix_samples import BASES, DLC, NVIDIA, SOURCE, dump, matrix, with_components
from tests.test_rules import error_of, load

AL2023 = {
    "dlc-al": {"dlc_tag": "2.13-cu133-amzn2023-sagemaker",
               "ships": {"pytorch": "2.13.0", "cuda": "13.3.0", "python": "3.12", "nccl": "2.30.7", "efa": "1.49.0"}},
    "dlc-al-pub": {"dlc_tag": "2.13.0-cu133-amzn2023", "registry": "public",
                   "ships": {"cuda": "13.3.0", "python": "3.12", "nccl": "2.30.7", "efa": "1.49.0"}},
}


@pytest.fixture(scope="module")
def renderer():
    return Renderer()


def with_bases(**extra) -> dict:
    bases = copy.deepcopy(BASES)
    bases.update(copy.deepcopy(extra))
    return bases


# --- AWS DLCs of 2026: Amazon Linux 2023, both registries ---------------------------------------

@pytest.mark.parametrize("tag, expected", [
    ("2.13-cu133-amzn2023", ("2.13", None, "cu133", "amzn2023", "ec2", "pytorch")),
    ("2.13.0-cu133-amzn2023-sagemaker", ("2.13.0", None, "cu133", "amzn2023", "sagemaker", "pytorch")),
    ("2.10.0-gpu-py313-cu130-ubuntu22.04-ec2", ("2.10.0", "3.13", "cu130", "ubuntu22.04", "ec2", "pytorch-training")),
])
def test_dlc_tags_of_both_generations_parse(tag, expected):
    d = comp.parse_dlc_tag(tag)
    assert (d.pytorch, d.python, d.cuda_tag, d.os, d.variant, d.repository) == expected


@pytest.mark.parametrize("tag", ["2.10-cu130-amzn2023", "2.13-cpu-amzn2023", "2.13-cu133-amzn2023-ec2",
                                 "2.13-cu133-amzn2023\n"])
def test_not_a_gpu_al2023_training_tag(tag):
    assert comp.parse_dlc_tag(tag) is None  # AL2023 starts at 2.11; CPU and made-up variants refused


def test_al2023_dlc_from_regional_and_public_registry(write_matrix):
    regional = dict(DLC, base="dlc-al", region="mx-central-1")
    public = dict(DLC, name="pub", base="dlc-al-pub", region="us-west-2", code=None)
    public.pop("code")
    m = load(write_matrix, regional, public, bases=with_bases(**AL2023))
    spec = m.get("dl")
    # region_availability.md: mx-central-1 637423239942; AL2023 DLCs live in repository "pytorch"
    assert spec.base_image == "637423239942.dkr.ecr.mx-central-1.amazonaws.com/pytorch:2.13-cu133-amzn2023-sagemaker"
    assert spec.versions["python"] == "3.12" and spec.versions["pytorch"] == "2.13.0"
    assert spec.base.os == "amzn2023" and spec.base.dlc.variant == "sagemaker"
    assert m.get("pub").base_image == "public.ecr.aws/deep-learning-containers/pytorch:2.13.0-cu133-amzn2023"


@pytest.mark.parametrize("region, account", [("ap-southeast-5", "550225433462"), ("ap-southeast-6", "633930458069"),
                                             ("ap-southeast-7", "590183813437"), ("ap-east-2", "975050140332"),
                                             ("mx-central-1", "637423239942")])
def test_regions_added_by_region_availability(region, account):
    assert comp.dlc_registry(region) == f"{account}.dkr.ecr.{region}.amazonaws.com"


def test_al2023_dlc_needs_python_in_ships(write_matrix):
    bases = with_bases(**AL2023)
    del bases["dlc-al"]["ships"]["python"]
    line = error_of(write_matrix, dict(DLC, base="dlc-al"), bases=bases)
    assert "bases.dlc-al.ships must list python" in line and "Amazon Linux 2023 DLC tag does not name it" in line


def test_short_al2023_tag_agrees_with_any_patch_and_contradictions_are_refused(write_matrix):
    bases = with_bases(**AL2023)
    bases["dlc-al"]["ships"]["pytorch"] = "2.12.1"
    line = error_of(write_matrix, dict(DLC, base="dlc-al"), bases=bases)
    assert "bases.dlc-al.ships.pytorch: 2.12.1 contradicts the DLC tag (2.13)" in line


def test_registry_key_is_checked(write_matrix):
    bases = with_bases(**AL2023)
    bases["dlc-al"]["registry"] = "dockerhub"
    line = error_of(write_matrix, dict(DLC, base="dlc-al"), bases=bases)
    assert "bases.dlc-al.registry: registry: is regional or public, beside a dlc_tag:" in line


def test_apt_stanzas_refused_on_an_al2023_base(write_matrix):
    bases = with_bases(amzn={"image": "nvidia/cuda:13.0.2-devel-amzn2023",
                             "ships": {"pytorch": "2.10.0", "cuda": "13.0.2", "nccl": "2.28.9", "python": "3.12",
                                       "os": "amzn2023"}})
    line = error_of(write_matrix, dict(NVIDIA, base="amzn"), bases=bases)
    assert "stanza remove-conflicts installs packages with apt, but base amzn is amzn2023 (dnf)" in line
    # the dlc flavor installs with pip only: an AL2023 DLC extension is fine
    assert load(write_matrix, dict(DLC, base="dlc-al"), bases=with_bases(**AL2023)).get("dl")


# --- EFA >= 1.48 on NGC and nvidia/cuda bases --------------------------------------------------

def test_efa_148_and_later_get_disable_ngc(write_matrix, renderer):
    assert "--disable-ngc" not in comp.efa_installer_flags("1.47.0")
    assert comp.efa_installer_flags("1.48.0")[-1] == "--disable-ngc"
    spec = load(write_matrix, with_components(NVIDIA, efa="1.51.0", aws_ofi_nccl=None)).get("nv")
    text = renderer.render(spec).dockerfile
    assert "./efa_installer.sh -y -g --skip-kmod --skip-limit-conf --no-verify --disable-ngc" in text
    assert spec.ofi.net_lib == "/opt/amazon/ofi-nccl/lib/libnccl-net-ofi.so"


def test_smoke_resolves_the_plugin_nccl_would_open(write_matrix, renderer):
    spec = load(write_matrix, with_components(NVIDIA, efa="1.51.0", aws_ofi_nccl=None)).get("nv")
    probe = [c for c in renderer.render(spec).checks if c.stanza == "network-env" and c.kind == "command"]
    assert len(probe) == 1 and probe[0].args["argv"][-1] == spec.ofi.net_lib


def _probe(tmp_path, env: dict, want: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/bash", "-c", comp.PLUGIN_PROBE, "probe", want], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", **env})


def test_plugin_probe_follows_nccls_own_search(tmp_path):
    bundled, source = tmp_path / "bundled", tmp_path / "source"
    for d in (bundled, source):
        d.mkdir()
        (d / "libnccl-net-ofi.so").write_bytes(b"")
        (d / "libnccl-net.so").symlink_to("libnccl-net-ofi.so")
    ok = _probe(tmp_path, {"NCCL_NET_PLUGIN": "ofi", "LD_LIBRARY_PATH": f"{bundled}"}, f"{bundled}/libnccl-net-ofi.so")
    assert ok.returncode == 0 and "NCCL opens" in ok.stdout, ok.stderr
    # the source build first on the path shadows the bundled one, with or without NCCL_NET_PLUGIN
    both = {"LD_LIBRARY_PATH": f"{source}:{bundled}"}
    assert _probe(tmp_path, both, f"{source}/libnccl-net.so").returncode == 0
    assert _probe(tmp_path, {**both, "NCCL_NET_PLUGIN": "ofi"}, f"{source}/libnccl-net.so").returncode == 0
    wrong = _probe(tmp_path, both, f"{bundled}/libnccl-net-ofi.so")
    assert wrong.returncode == 1 and "NCCL would open" in wrong.stderr
    gone = _probe(tmp_path, {"NCCL_NET_PLUGIN": "ofi", "LD_LIBRARY_PATH": str(tmp_path / "none")}, f"{bundled}/x.so")
    assert gone.returncode == 1 and "falls back to sockets" in gone.stderr


# --- bundled aws-ofi-nccl as ranges; source builds on top -------------------------------------

@pytest.mark.parametrize("efa, ofi", [("1.38.1", None), ("1.40.0", "1.14.2"), ("1.41.0", "1.14.2"),
                                      ("1.46.0", "1.17.2"), ("1.47.0", "1.18.0"), ("1.49.0", "1.20.0"),
                                      ("1.50.0", "1.21.1"), ("1.51.0", "1.22.0"), ("1.52.0", None)])
def test_bundled_ofi_is_a_range_from_the_changelog(efa, ofi):
    assert comp.bundled_ofi_version(efa) == ofi


def test_source_ofi_over_bundled_efa_comes_first(write_matrix, renderer):
    spec = load(write_matrix, with_components(NVIDIA, efa="1.47.0", aws_ofi_nccl="1.21.1")).get("nv")
    text = renderer.render(spec).dockerfile
    ofi = text.split("--- aws-ofi-nccl")[1].split("\n# --- ")[0]
    assert "ENV LD_LIBRARY_PATH=/opt/aws-ofi-nccl/lib${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}" in ofi
    assert "bundles 1.18.0, which this build shadows" in ofi
    assert 'NCCL_NET_PLUGIN="ofi"' not in text  # libnccl-net.so: the source build, first on the path


def test_newer_efa_than_known_is_a_warning(write_matrix):
    m = load(write_matrix, with_components(NVIDIA, efa="1.52.0", aws_ofi_nccl=None))
    assert any("newer than 1.51.0" in str(w) and "[efa-known]" in str(w) for w in m.warnings)


# --- aws-ofi-nccl facts ---------------------------------------------------------------------

def test_ofi_tag_and_platform_flag_from_the_tag_list(write_matrix, renderer):
    assert comp.ofi_git_tag("1.6.0") == "v1.6.0" and comp.ofi_git_tag("1.5.0") == "v1.5.0-aws"
    assert comp.ofi_git_tag("1.13.2") == "v1.13.2-aws" and comp.ofi_git_tag("1.21.1") == "v1.21.1"
    old = renderer.render(load(write_matrix, with_components(NVIDIA, efa="1.30.0", aws_ofi_nccl="1.5.0")).get("nv"))
    assert "--enable-platform-aws" not in old.dockerfile  # no such option before v1.6.0
    six = renderer.render(load(write_matrix, with_components(NVIDIA, efa="1.30.0", aws_ofi_nccl="1.6.0")).get("nv"))
    assert "--enable-platform-aws" in six.dockerfile and "AWS_OFI_NCCL_VERSION=v1.6.0\n" in six.dockerfile


# --- network env ------------------------------------------------------------------------------

def test_device_rdma_is_never_baked_and_only_set_for_an_instance_with_rdma_read():
    names = [n for n, _, _ in comp.network_env("1.20.0", "1.6.0")]
    assert "FI_EFA_USE_DEVICE_RDMA" not in names and "FI_EFA_USE_HUGE_PAGE" in names
    assert comp.device_rdma_env("1.6.0", True)[0][:2] == ("FI_EFA_USE_DEVICE_RDMA", "1")
    assert comp.device_rdma_env("1.6.0", False) == [] and comp.device_rdma_env("1.6.0", None) == []
    assert comp.device_rdma_env("1.7.4", True) == [] and comp.device_rdma_env(None, True) == []
    old = [n for n, _, _ in comp.network_env("1.14.1", "1.1.3")]
    assert {"FI_PROVIDER", "NCCL_PROTO", "RDMAV_FORK_SAFE"} <= set(old)  # seed 000's era keeps them


def test_sagemaker_images_do_not_bake_btl_tcp_if_exclude(write_matrix, renderer):
    spec = load(write_matrix, SOURCE).get("src")
    assert "sagemaker-toolkit" in spec.stanzas
    env = renderer.render(spec).dockerfile.split("--- network-env")[1].split("\n# --- ")[0]
    assert "OMPI_MCA_btl_tcp_if_exclude=" not in env and "SageMaker's MPI runner passes btl_tcp_if_include" in env
    nv = renderer.render(load(write_matrix, NVIDIA).get("nv")).dockerfile
    assert 'OMPI_MCA_btl_tcp_if_exclude="lo,docker0,veth_def_agent"' in nv


# --- NGC releases whose facts cannot be confirmed ---------------------------------------------

def test_ngc_25_11_and_later_are_refused_with_one_line(write_matrix):
    bases = with_bases(ngc26={"image": "nvcr.io/nvidia/pytorch:26.04-py3",
                              "ships": {"pytorch": "2.12.0a0", "cuda": "13.2.0", "nccl": "2.30.3", "python": "3.12",
                                        "os": "ubuntu24.04"}})
    line = error_of(write_matrix, dict(NVIDIA, base="ngc26", components={"efa": "1.51.0"}), bases=bases)
    assert "NGC 26.04 sets NCCL_NET_PLUGIN in /etc/shinit_v2" in line and "[ngc-release]" in line
    bases["ngc26"]["image"] = "nvcr.io/nvidia/pytorch:25.10-py3"
    assert load(write_matrix, dict(NVIDIA, base="ngc26", components={"efa": "1.51.0"}), bases=bases).get("nv")


# --- stanza defects ---------------------------------------------------------------------------

def test_remove_conflicts_names_only_installed_packages(write_matrix, renderer):
    text = renderer.render(load(write_matrix, NVIDIA).get("nv")).dockerfile
    body = text.split("--- remove-conflicts")[1].split("\n# --- ")[0]
    assert "dpkg-query -W" in body and "xargs -a /tmp/conflicting-packages apt-get remove" in body
    assert "apt-get remove -y --allow-change-held-packages \\\n        libmlx5-1" not in body


def test_pmix_openmpi_replaces_the_installers_tree(write_matrix, renderer):
    entry = with_components(NVIDIA, pmix="4.2.6", openmpi="4.1.6")
    entry["stanzas"] = {"pmix-openmpi": True}
    text = renderer.render(load(write_matrix, entry).get("nv")).dockerfile
    body = text.split("--- pmix-openmpi")[1]
    assert body.index("rm -rf /opt/amazon/openmpi") < body.index("--prefix=/opt/amazon/openmpi")


def test_al2023_plugin_directory_is_lib64():
    # install_efa_amzn2023.sh: /opt/amazon/ofi-nccl/lib64/libnccl-net-ofi.so from EFA 1.44
    assert comp.ofi_plugin("1.49.0", None, "amzn2023").net_lib == "/opt/amazon/ofi-nccl/lib64/libnccl-net-ofi.so"
    assert comp.ofi_plugin("1.49.0", None, "ubuntu22.04").net_lib == "/opt/amazon/ofi-nccl/lib/libnccl-net-ofi.so"


def test_blackwell_instances_and_rdma_read():
    from builder.nccl.instances import INSTANCES, rdma_read

    b200, gb200 = INSTANCES["p6-b200.48xlarge"], INSTANCES["p6e-gb200.36xlarge"]
    assert (b200.gpus, b200.intra_peak, b200.network_peak) == (8, 900.0, 400.0)
    assert (gb200.gpus, gb200.peak(2)) == (4, 200.0)
    assert rdma_read("p3dn.24xlarge") is False and rdma_read("g5.48xlarge") is False
    assert rdma_read("p4d.24xlarge") is True and rdma_read("p6-b200.48xlarge") is True and rdma_read("x1.32xlarge") is None


def test_pytorch_source_from_27_links_a_system_nccl_and_skips_missing_magma(bundled_matrix, renderer):
    new = renderer.render(bundled_matrix.get("source-pt2.10.0-cu130-nccl2.30")).dockerfile
    assert "USE_SYSTEM_NCCL=1 USE_STATIC_NCCL=1 NCCL_INCLUDE_DIR=/opt/conda/include NCCL_LIB_DIR=/opt/conda/lib" in new
    assert "third_party/nccl/nccl" not in new.split("--- pytorch-source")[1].split("\n# --- ")[0]
    assert "conda install -y -c pytorch magma" not in new and "No magma: the last conda magma-cuda package" in new
    assert "\"cmake<4\"" in new
    assert "FORCE_CUDA=1 BUILD_VERSION=" in new
    old = renderer.render(bundled_matrix.get("source-pt2.4.1-cu121-smddp2.5")).dockerfile
    assert "conda install -y -c pytorch magma-cuda121" in old and "USE_SYSTEM_NCCL" not in old
