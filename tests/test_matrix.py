"""Loading the matrix: the bundled one, defaults, axes, immutability, customisation."""

from __future__ import annotations

import dataclasses

import pytest

from builder.errors import MatrixError, UsageError
from builder.matrix import load_matrix
from tests.matrix_samples import DLC, NVIDIA, SOURCE, dump, matrix, with_components


def test_bundled_matrix_has_at_least_12_images_over_three_flavors(bundled_matrix):
    assert len(bundled_matrix.images) >= 12
    assert {s.flavor for s in bundled_matrix.images} == {"dlc", "source", "nvidia"}
    assert len({s.name for s in bundled_matrix.images}) == len(bundled_matrix.images)


def test_bundled_matrix_covers_both_aws_ofi_nccl_eras(bundled_matrix):
    built = [s for s in bundled_matrix.images if s.flavor == "nvidia" and "aws-ofi-nccl" in s.stanzas]
    bundled = [s for s in bundled_matrix.images if s.flavor == "nvidia" and s.ofi.bundled]
    assert built and bundled
    paths = {s.ofi.net_lib for s in bundled}
    # 1.38-1.43 and >= 1.44 put the plugin in different places.
    assert "/opt/amazon/ofi-nccl/lib/x86_64-linux-gnu/libnccl-net.so" in paths
    assert "/opt/amazon/ofi-nccl/lib/libnccl-net-ofi.so" in paths


def test_seed_000_combination_is_exact(bundled_matrix):
    seed = bundled_matrix.get("source-pt1.10.2-cu113-smddp1.4")
    assert seed.base_image == "nvidia/cuda:11.3.1-cudnn8-devel-ubuntu20.04"
    assert {k: seed.versions[k] for k in ("pytorch", "python", "nccl", "efa", "aws_ofi_nccl", "cuda")} == {
        "pytorch": "1.10.2", "python": "3.8", "nccl": "2.10.3", "efa": "1.14.1", "aws_ofi_nccl": "1.1.3",
        "cuda": "11.3.1"}
    assert seed.components["smddp"].endswith("/1.10.2/cu113/2022-02-18/smdistributed_dataparallel-1.4.0-cp38-cp38-linux_x86_64.whl")


def test_specs_are_immutable(bundled_matrix):
    spec = bundled_matrix.images[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "x"
    with pytest.raises(TypeError):
        spec.components["efa"] = "9.9.9"


def test_defaults_and_flavor_defaults_merge_with_entry_winning(write_matrix):
    data = matrix(NVIDIA, defaults={"labels": {"org.opencontainers.image.vendor": "A"}, "tags": ["d-{name}"],
                                    "cuda_archs": ["80", "90"]},
                  flavor_defaults={"nvidia": {"components": {"gdrcopy": "2.4.1"}, "tags": ["f-{name}"]}})
    data["images"][0]["labels"] = {"org.opencontainers.image.vendor": "B"}
    spec = load_matrix(write_matrix(dump(data))).get("nv")
    assert spec.components["gdrcopy"] == "2.4.1"
    assert spec.tags == ("f-nv",)
    assert spec.labels["org.opencontainers.image.vendor"] == "B"
    assert spec.provenance["components.gdrcopy"] == "flavor_defaults.nvidia"


def test_a_default_component_can_be_unset_with_null(write_matrix):
    data = matrix(with_components(NVIDIA, gdrcopy=None), flavor_defaults={"nvidia": {"components": {"gdrcopy": "2.4.1"}}})
    data["images"][0]["components"]["gdrcopy"] = None
    spec = load_matrix(write_matrix(dump(data))).get("nv")
    assert "gdrcopy" not in spec.components and "gdrcopy" not in spec.stanzas


def test_axes_expand_with_include_and_exclude_like_a_ci_matrix(write_matrix):
    entry = dict(NVIDIA, name="nv-efa{efa}-{base}", components={"nccl_tests": "2.13.10"},
                 axes={"efa": ["1.38.1", "1.43.2", "1.47.0"], "base": ["ngc", "ngc2"]},
                 exclude=[{"efa": "1.38.1", "base": "ngc2"}],
                 include=[{"base": "ngc2", "nccl_tests": "2.16.9"}, {"efa": "1.41.0", "base": "ngc"}])
    data = matrix(entry)
    data["bases"]["ngc2"] = dict(data["bases"]["ngc"], image="nvcr.io/nvidia/pytorch:25.06-py3")
    m = load_matrix(write_matrix(dump(data)))
    names = m.names()
    assert len(names) == 6  # 3x2 - 1 excluded + 1 new combination
    assert "nv-efa1.38.1-ngc2" not in names and "nv-efa1.41.0-ngc" in names
    assert m.get("nv-efa1.43.2-ngc2").components["nccl_tests"] == "2.16.9"  # include extended it
    assert m.get("nv-efa1.43.2-ngc").components["nccl_tests"] == "2.13.10"
    assert m.get("nv-efa1.47.0-ngc").provenance["components.efa"] == "axis efa"


def test_tags_and_repository_come_from_templates(write_matrix):
    entry = dict(NVIDIA, repository="team/{flavor}", tags=["{name}", "pt{pytorch}-{cuda_tag}-efa{efa}"])
    spec = load_matrix(write_matrix(dump(matrix(entry)))).get("nv")
    assert spec.refs == ("team/nvidia:nv", "team/nvidia:pt2.5.0a0-cu126-efa1.35.0")
    assert spec.primary_ref == "team/nvidia:nv"


def test_dlc_base_image_is_derived_from_region(write_matrix):
    spec = load_matrix(write_matrix(dump(matrix(dict(DLC, region="eu-central-2"))))).get("dl")
    assert spec.base_image == ("380420809688.dkr.ecr.eu-central-2.amazonaws.com/pytorch-training:"
                               "2.4.0-gpu-py311-cu124-ubuntu22.04-sagemaker")
    cn = load_matrix(write_matrix(dump(matrix(dict(DLC, region="cn-north-1"))))).get("dl")
    assert cn.base_image.startswith("727897471807.dkr.ecr.cn-north-1.amazonaws.com.cn/")
    assert spec.versions["python"] == "3.11" and spec.versions["pytorch"] == "2.4.0"


def test_customize_overrides_and_revalidates(bundled_matrix):
    spec = bundled_matrix.customize("nvidia-ngc24.09-efa1.35", {"nccl": "2.23.4"}, ["openssh"], ["nccl-tests"])
    assert spec.components["nccl"] == "2.23.4"
    assert "nccl-source" in spec.stanzas and "openssh" in spec.stanzas and "nccl-tests" not in spec.stanzas
    assert spec.provenance["components.nccl"] == "command line"
    with pytest.raises(MatrixError) as exc:
        bundled_matrix.customize("nvidia-ngc24.09-efa1.35", {}, ["xformers"], [])
    assert "stanzas.xformers: needs xformers; set components.xformers" in str(exc.value)
    with pytest.raises(MatrixError) as exc:
        bundled_matrix.customize("nvidia-ngc24.09-efa1.35", {"nccl": "2.19.3"})
    assert "older than 2.22.3" in str(exc.value)


def test_unknown_image_name_suggests_the_closest(bundled_matrix):
    with pytest.raises(UsageError) as exc:
        bundled_matrix.get("nvidia-ngc24.09-efa1.36")
    assert "did you mean 'nvidia-ngc24.09-efa1.35'" in str(exc.value)


def test_every_problem_is_reported_at_once(write_matrix):
    bad1 = with_components(NVIDIA, efa="one")
    bad2 = dict(SOURCE, name="src2", flavor="sorce")
    bad3 = dict(DLC, region="mars-1")
    with pytest.raises(MatrixError) as exc:
        load_matrix(write_matrix(dump(matrix(bad1, bad2, bad3))))
    lines = str(exc.value).splitlines()
    assert len(exc.value.problems) == 3 == len(lines)
    assert all(line.startswith("matrix.yaml:") or "matrix.yaml:" in line for line in lines)


def test_sources_default_to_upstream_and_a_matrix_overrides_one(write_matrix):
    data = matrix(NVIDIA)
    spec = load_matrix(write_matrix(dump(data))).get("nv")
    assert spec.sources["efa_installer"] == "https://efa-installer.amazonaws.com/aws-efa-installer-1.35.0.tar.gz"
    assert spec.sources["nccl_tests_git"] == "https://github.com/NVIDIA/nccl-tests.git"
    data["sources"] = {"efa_installer": "https://mirror.example.com/efa/aws-efa-installer-{version}.tar.gz"}
    spec = load_matrix(write_matrix(dump(data))).get("nv")
    assert spec.sources["efa_installer"] == "https://mirror.example.com/efa/aws-efa-installer-1.35.0.tar.gz"
    assert spec.sources["aws_ofi_nccl_git"] == "https://github.com/aws/aws-ofi-nccl.git"


def test_stanzas_that_run_nvcc_need_cuda_archs(write_matrix):
    data = matrix(NVIDIA, defaults={})
    with pytest.raises(MatrixError) as exc:
        load_matrix(write_matrix(dump(data)))
    assert "cuda_archs: stanza nccl-tests compiles CUDA code" in str(exc.value)
    data = matrix(dict(NVIDIA, components={"efa": "1.47.0"}), defaults={})  # nothing compiled: fine
    assert load_matrix(write_matrix(dump(data))).get("nv").cuda_archs == ()


def test_dlc_base_cuda_comes_from_its_tag_and_an_explicit_image_serves_any_region(write_matrix):
    data = matrix(dict(DLC, region="us-gov-west-1"))  # not in region_availability.md
    data["bases"]["dlc-sm"].pop("ships")
    with pytest.raises(MatrixError) as exc:
        load_matrix(write_matrix(dump(data)))
    assert "no Deep Learning Containers registry known for region 'us-gov-west-1'" in str(exc.value)
    assert "bases.dlc-sm.image" in str(exc.value)
    uri = "111122223333.dkr.ecr.us-gov-west-1.amazonaws.com/pytorch-training:2.4.0-gpu-py311-cu124-ubuntu22.04-sagemaker"
    data["bases"]["dlc-sm"]["image"] = uri
    spec = load_matrix(write_matrix(dump(data))).get("dl")
    assert spec.base_image == uri
    assert spec.versions["cuda"] == "12.4" and spec.versions["python"] == "3.11" and spec.versions["pytorch"] == "2.4.0"
