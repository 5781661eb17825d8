"""Rendering the real templates: every stanza, determinism, the seed's steps, the checks."""

from __future__ import annotations

import re

import pytest

from builder.matrix import load_matrix
from builder.render import GENERATED_MARKER, Renderer, dockerfile_path
from builder.stanzas import CHECK_KINDS, load_catalog
from tests.matrix_samples import NVIDIA, dump, matrix, with_components

SECTION_RE = re.compile(r"^# --- ([a-z0-9-]+) -+$", re.M)


@pytest.fixture(scope="module")
def renderer():
    return Renderer()


@pytest.fixture(scope="module")
def rendered(bundled_matrix, renderer):
    return {s.name: renderer.render(s) for s in bundled_matrix.images}


def test_every_stanza_is_rendered_by_some_bundled_image(bundled_matrix):
    used = {s for spec in bundled_matrix.images for s in spec.stanzas}
    assert used == set(load_catalog().stanzas)


def test_every_stanza_opens_with_a_comment_and_declares_metadata():
    catalog = load_catalog()
    for meta in catalog.stanzas.values():
        body = meta.path.read_text().split("---#}\n", 1)[1]
        lines = [line for line in body.splitlines() if line.strip() and not line.startswith("{%")]
        assert lines[0].startswith(f"# --- {meta.name} "), meta.name
        assert lines[1].startswith("# "), f"{meta.name}: explain what and why right after the title"
        assert meta.summary
        for check in meta.checks:
            assert check["kind"] in CHECK_KINDS


def test_sections_appear_in_flavor_order(bundled_matrix, rendered):
    for spec in bundled_matrix.images:
        sections = SECTION_RE.findall(rendered[spec.name].dockerfile)
        assert tuple(sections) == spec.stanzas


def test_rendering_is_deterministic(bundled_matrix, repo_root):
    first = [Renderer().render(s).dockerfile for s in bundled_matrix.images]
    again = [Renderer().render(s).dockerfile for s in load_matrix(repo_root / "matrix.yaml").images]
    assert first == again


def test_committed_images_are_current(bundled_matrix, rendered, repo_root):
    for spec in bundled_matrix.images:
        path = dockerfile_path(repo_root, spec)
        assert path.read_text() == rendered[spec.name].dockerfile, f"{path} is stale: run builder render --all"


def test_header_says_generated_and_names_the_image(rendered):
    for name, r in rendered.items():
        assert r.dockerfile.startswith(GENERATED_MARKER)
        assert f"# image:    {name} " in r.dockerfile
        assert "DO NOT EDIT" in r.dockerfile.splitlines()[0]


def test_conventions_pipefail_args_labels(bundled_matrix, rendered):
    for spec in bundled_matrix.images:
        text = rendered[spec.name].dockerfile
        assert 'SHELL ["/bin/bash", "-o", "pipefail", "-c"]' in text
        assert text.index("FROM ") < text.index("SHELL")
        assert "org.opencontainers.image.title" in text
        for name, version in spec.versions.items():
            if not version.startswith("https://"):
                assert f'builder.component.{name}="{version}"' in text
        if "efa" in spec.components:
            assert f"ARG EFA_INSTALLER_VERSION={spec.components['efa']}" in text
        assert text.rstrip().splitlines()[-1].strip().startswith("org.opencontainers.image.version=")


def test_seed_000_renders_every_step_of_the_seed(rendered):
    text = rendered["source-pt1.10.2-cu113-smddp1.4"].dockerfile
    steps = [
        "FROM nvidia/cuda:11.3.1-cudnn8-devel-ubuntu20.04",
        "curl", "wget" if False else "git",  # basic download tools
        "aws-efa-installer-${EFA_INSTALLER_VERSION}.tar.gz", "./efa_installer.sh -y -g --skip-kmod",
        "Miniconda3-py38_${MINICONDA_VERSION}-Linux-x86_64.sh", "ccache",
        # cmake below 4: CMake 4 breaks older PyTorch trees (pytorch/pytorch#150149)
        'conda install -y astunparse numpy ninja pyyaml mkl mkl-include setuptools "cmake<4" cffi typing_extensions',
        "conda install -y -c pytorch magma-cuda113",
        'git clone --recursive --depth 1 --shallow-submodules --branch "v${PYTORCH_VERSION}"',
        "rm -rf /tmp/pytorch/third_party/nccl/nccl", "ARG NCCL_VERSION=v2.10.3-1",
        "-gencode=arch=compute_70,code=sm_70 -gencode=arch=compute_80,code=sm_80",
        "make -C /tmp/pytorch/third_party/nccl/nccl pkg.txz.build", "-C /opt/conda --strip-components=1",
        "python setup.py install", "ARG AWS_OFI_NCCL_VERSION=v1.1.3-aws", "./autogen.sh",
        "--with-libfabric=/opt/amazon/efa", "--with-nccl=/opt/conda", 'pip install "mpi4py==${MPI4PY_VERSION}"',
        'BUILD_VERSION="${TORCHVISION_VERSION}+cu113" python setup.py install', "openssh-server",
        "StrictHostKeyChecking no", "pam_loginuid.so", "ssh-keygen", "awsio-0.0.1-cp38-cp38-manylinux1_x86_64.whl",
        "/etc/pki/tls/certs/ca-bundle.crt", "boost_1_73_0.tar.gz", "./b2 threading=multi --prefix=/opt/conda",
        "'smclarify'", "'sagemaker>=2,<3'", "'sagemaker-experiments==0.*'", "sagemaker-pytorch-training==",
        "ENV SAGEMAKER_TRAINING_MODULE=sagemaker_pytorch_container.training:main", "libnuma-dev", "hwloc", "jq",
        "ENV SMDATAPARALLEL_PT=1", 'pip install --no-cache-dir "${SMDDP_WHEEL}"',
        "smdistributed_dataparallel-1.4.0-cp38-cp38-linux_x86_64.whl",
        "/opt/conda/lib/python3.8/site-packages/smdistributed/dataparallel/lib",
        'RDMAV_FORK_SAFE="1"', "/opt/amazon/openmpi/bin", "/opt/amazon/efa/lib",
    ]
    missing = [s for s in steps if s not in text]
    assert not missing


def test_efa_checksum_is_verified_when_pinned_and_warned_when_not(write_matrix, renderer):
    # AWS's published value is built in; a matrix pin wins over it.
    text = renderer.render(load_matrix(write_matrix(dump(matrix(NVIDIA)))).get("nv")).dockerfile
    assert "ARG EFA_INSTALLER_SHA256=432b6ad4368ba0cd8b902729d14a908a97be7a3dcc5239422ea994a47f35a5e1" in text
    assert "sha256sum -c -" in text and "WARNING" not in text
    data = matrix(NVIDIA, checksums={"efa_installer": {"1.35.0": "b" * 64}})
    text = renderer.render(load_matrix(write_matrix(dump(data))).get("nv")).dockerfile
    assert f"ARG EFA_INSTALLER_SHA256={'b' * 64}" in text and "sha256sum -c -" in text
    newer = with_components(NVIDIA, efa="1.99.0", aws_ofi_nccl=None)  # published after the built-in table
    text = renderer.render(load_matrix(write_matrix(dump(matrix(newer)))).get("nv")).dockerfile
    assert "WARNING: no SHA256 is pinned for EFA installer 1.99.0" in text and "sha256sum" not in text


def test_network_env_follows_the_plugin_era(write_matrix, renderer):
    def env_of(**components):
        spec = load_matrix(write_matrix(dump(matrix(with_components(NVIDIA, **components))))).get("nv")
        text = renderer.render(spec).dockerfile
        return text[text.index("--- network-env"):text.index("--- nccl-tests")]

    new = env_of()
    assert "FI_PROVIDER" not in new.split("ENV", 1)[1] and "RDMAV_FORK_SAFE" not in new
    assert 'NCCL_SOCKET_IFNAME="^docker,lo,veth"' in new
    assert 'FI_EFA_USE_HUGE_PAGE="0"' in new
    mid = env_of(efa="1.29.1", aws_ofi_nccl="1.6.0")
    # instance-dependent (p3dn has no RDMA read): set at run time, never baked
    assert 'FI_EFA_USE_DEVICE_RDMA="1"' not in mid and 'FI_PROVIDER="efa"' not in mid
    bundled = env_of(efa="1.47.0", aws_ofi_nccl=None)
    assert 'NCCL_NET_PLUGIN="ofi"' in bundled


def test_bundled_plugin_path_reaches_env_labels_and_checks(bundled_matrix, rendered):
    spec = bundled_matrix.get("nvidia-ngc25.06-py3-efa1.47.0")
    r = rendered[spec.name]
    assert "/opt/amazon/ofi-nccl/lib" in r.dockerfile.split("--- efa")[1].split("--- ")[0]
    assert "--- aws-ofi-nccl" not in r.dockerfile
    assert r.labels["builder.ofi.plugin"] == "/opt/amazon/ofi-nccl/lib/libnccl-net-ofi.so"
    assert any(c.kind == "ldd" and c.args["path"] == spec.ofi.net_lib for c in r.checks)


def test_checks_carry_expected_values_from_the_matrix(bundled_matrix, rendered):
    spec = bundled_matrix.get("source-pt2.4.1-cu121-smddp2.5")
    checks = rendered[spec.name].checks
    kinds = {(c.stanza, c.kind) for c in checks}
    assert ("efa", "file_contains") in kinds and ("pytorch-source", "nccl_version") in kinds
    efa = next(c for c in checks if c.stanza == "efa" and c.kind == "file_contains")
    assert efa.args["text"] == "EFA installer version: 1.34.0"
    nccl = next(c for c in checks if c.kind == "nccl_version")
    assert nccl.args["version"] == "2.21.5"
    assert any(c.kind == "label" and c.args == {"name": "builder.component.smddp", "value": "2.5.0"} for c in checks)


def test_custom_render_is_revalidated_and_differs(bundled_matrix, renderer):
    spec = bundled_matrix.customize("nvidia-ngc24.09-efa1.35", {"nccl": "2.23.4"}, ["openssh"], ["nccl-tests"])
    text = renderer.render(spec).dockerfile
    assert "ARG NCCL_VERSION=v2.23.4-1" in text and "--- openssh" in text and "--- nccl-tests" not in text
