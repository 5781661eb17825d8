"""Each compatibility rule, both ways: a good entry passes, a bad one fails with one clear line."""

from __future__ import annotations

import copy

import pytest

from builder.errors import MatrixError
from builder.matrix import load_matrix
from tests.matrix_samples import DLC, NVIDIA, SOURCE, dump, matrix, with_components

SMDDP = "https://smdataparallel.s3.amazonaws.com/binary/pytorch/{pt}/{cu}/2024-05-23/smdistributed_dataparallel-2.3.0-{cp}-{cp}-linux_x86_64.whl"


def load(write_matrix, *entries, **top):
    return load_matrix(write_matrix(dump(matrix(*entries, **top))))


def error_of(write_matrix, *entries, **top) -> str:
    with pytest.raises(MatrixError) as exc:
        load(write_matrix, *entries, **top)
    problems = exc.value.problems
    assert len(problems) == 1, str(exc.value)
    line = str(problems[0])
    assert "\n" not in line and "matrix.yaml:" in line.split(": ")[0]
    return line


def test_valid_samples_load(write_matrix):
    m = load(write_matrix, NVIDIA, SOURCE, DLC)
    assert m.names() == ["nv", "src", "dl"]


# --- NCCL >= 2.19 needs EFA >= 1.29.1 ---------------------------------------------------------

def test_new_nccl_with_old_efa_fails(write_matrix):
    entry = with_components(SOURCE, efa="1.28.0", aws_ofi_nccl="1.7.4", nccl="2.19.3", smddp=None)
    line = error_of(write_matrix, entry)
    assert "image 'src': components.efa: NCCL 2.19.3 needs EFA installer >= 1.29.1 (have 1.28.0)" in line
    assert "FI_EFA_SET_CUDA_SYNC_MEMOPS" in line


def test_new_nccl_with_efa_1_29_1_passes_and_the_override_is_accepted(write_matrix):
    load(write_matrix, with_components(SOURCE, efa="1.29.1", nccl="2.19.3", smddp=None))
    entry = with_components(SOURCE, efa="1.28.0", aws_ofi_nccl="1.7.4", nccl="2.19.3", smddp=None)
    entry["env"] = {"FI_EFA_SET_CUDA_SYNC_MEMOPS": "0"}
    spec = load(write_matrix, entry).get("src")
    assert ("FI_EFA_SET_CUDA_SYNC_MEMOPS", "0") in spec.env


def test_versions_compare_as_versions_not_strings(write_matrix):
    # As text "1.5.0" > "1.29.1"; as versions it is older, so the rule must fire.
    entry = with_components(SOURCE, efa="1.5.0", aws_ofi_nccl="1.7.4", nccl="2.19.3", smddp=None)
    assert "needs EFA installer >= 1.29.1" in error_of(write_matrix, entry)


# --- pinned NCCL older than the base's ---------------------------------------------------------

def test_nccl_downgrade_below_base_fails_unless_waived(write_matrix):
    entry = with_components(NVIDIA, nccl="2.19.3")
    line = error_of(write_matrix, entry)
    assert "components.nccl: NCCL 2.19.3 is older than 2.22.3 shipped by base ngc" in line
    entry["waivers"] = {"nccl-older-than-base": "2.22.3 hangs on our p4d fleet, see INC-42"}
    spec = load(write_matrix, entry).get("nv")
    assert spec.components["nccl"] == "2.19.3"


def test_nccl_newer_than_base_passes(write_matrix):
    spec = load(write_matrix, with_components(NVIDIA, nccl="2.23.4")).get("nv")
    assert "nccl-source" in spec.stanzas


def test_waiver_needs_a_real_reason_and_a_waivable_rule(write_matrix):
    entry = with_components(NVIDIA, nccl="2.19.3")
    entry["waivers"] = {"nccl-older-than-base": "ok"}
    with pytest.raises(MatrixError) as exc:
        load(write_matrix, entry)
    assert "waivers.nccl-older-than-base: give the reason" in str(exc.value)
    entry["waivers"] = {"smddp-wheel": "trust me, it is fine"}
    with pytest.raises(MatrixError) as exc:
        load(write_matrix, entry)
    assert "rule cannot be waived" in str(exc.value)


# --- SMDDP wheel ------------------------------------------------------------------------------

def test_smddp_wheel_matching_everything_passes(write_matrix):
    load(write_matrix, SOURCE)


@pytest.mark.parametrize("pt,cu,cp,expect", [
    ("2.3.0", "cu121", "cp310", "wheel is for cp310 but the image has Python 3.11"),
    ("2.3.0", "cu118", "cp311", "wheel is for CUDA cu118 but the image has CUDA 12.1.1"),
    ("2.2.0", "cu121", "cp311", "wheel path is not for PyTorch 2.3.0"),
])
def test_smddp_wheel_mismatch_fails(write_matrix, pt, cu, cp, expect):
    entry = with_components(SOURCE, smddp=SMDDP.format(pt=pt, cu=cu, cp=cp))
    assert expect in error_of(write_matrix, entry)


def test_no_smddp_for_pytorch_2_6_and_later(write_matrix):
    entry = with_components(SOURCE, pytorch="2.6.0", torchvision="0.21.0", python="3.12", efa="1.38.1",
                            aws_ofi_nccl=None, smddp=SMDDP.format(pt="2.6.0", cu="cu121", cp="cp312"))
    entry["base"] = "cuda126"
    bases = {"cuda126": {"image": "nvidia/cuda:12.6.3-cudnn-devel-ubuntu22.04",
                         "ships": {"cuda": "12.6.3", "os": "ubuntu22.04"}}}
    data = matrix(entry)
    data["bases"].update(bases)
    with pytest.raises(MatrixError) as exc:
        load_matrix(write_matrix(dump(data)))
    assert "no SMDDP wheel exists for PyTorch 2.6.0" in str(exc.value)


def test_smddp_url_must_be_a_wheel_of_that_name(write_matrix):
    entry = with_components(SOURCE, smddp="https://example.com/binary/pytorch/2.3.0/cu121/smddp.whl")
    assert "smdistributed_dataparallel-<ver>-cpXY-cpXY-linux_x86_64.whl" in error_of(write_matrix, entry)


# --- aws-ofi-nccl bundling, tag form, plugin path ---------------------------------------------

def test_older_ofi_over_a_bundling_efa_fails_a_newer_one_builds_first_on_the_path(write_matrix):
    line = error_of(write_matrix, with_components(NVIDIA, efa="1.43.2", aws_ofi_nccl="1.13.2"))
    assert "aws-ofi-nccl 1.13.2 is older than the 1.16.3 EFA installer 1.43.2 bundles" in line
    m = load(write_matrix, with_components(NVIDIA, efa="1.43.2", aws_ofi_nccl="1.16.3"))
    assert any("already bundles aws-ofi-nccl 1.16.3" in str(w) for w in m.warnings)
    spec = load(write_matrix, with_components(NVIDIA, efa="1.47.0", aws_ofi_nccl="1.21.1")).get("nv")
    assert "aws-ofi-nccl" in spec.stanzas and not spec.ofi.bundled
    assert spec.ofi.net_lib == "/opt/aws-ofi-nccl/lib/libnccl-net.so"


def test_bundling_efa_without_ofi_passes_and_derives_the_path(write_matrix):
    spec = load(write_matrix, with_components(NVIDIA, efa="1.43.2", aws_ofi_nccl=None)).get("nv")
    assert "aws-ofi-nccl" not in spec.stanzas
    assert spec.ofi.net_lib == "/opt/amazon/ofi-nccl/lib/x86_64-linux-gnu/libnccl-net.so"
    spec = load(write_matrix, with_components(NVIDIA, efa="1.44.0", aws_ofi_nccl=None)).get("nv")
    assert spec.ofi.net_lib == "/opt/amazon/ofi-nccl/lib/libnccl-net-ofi.so"


def test_old_efa_without_ofi_fails(write_matrix):
    line = error_of(write_matrix, with_components(NVIDIA, aws_ofi_nccl=None))
    assert "EFA installer 1.35.0 does not bundle aws-ofi-nccl" in line and "sockets" in line


def test_ofi_tag_form_is_derived_never_typed(write_matrix):
    line = error_of(write_matrix, with_components(NVIDIA, aws_ofi_nccl="1.12.1-aws"))
    assert "write 1.12.1: the -aws tag suffix is derived" in line
    from builder.components import ofi_git_tag

    assert ofi_git_tag("1.13.2") == "v1.13.2-aws" and ofi_git_tag("1.14.0") == "v1.14.0"


def test_old_ofi_with_new_efa_is_a_warning(write_matrix):
    m = load(write_matrix, with_components(NVIDIA, aws_ofi_nccl="1.11.0"))
    assert any("1.12.1 or newer is recommended" in str(w) for w in m.warnings)
    m = load(write_matrix, with_components(NVIDIA, aws_ofi_nccl="1.12.1"))
    assert not any("recommended" in str(w) for w in m.warnings)


# --- PyTorch <-> CUDA <-> Python (source builds) -------------------------------------------------

def test_pytorch_with_unsupported_cuda_fails(write_matrix):
    entry = copy.deepcopy(SOURCE)
    entry["base"] = "cuda113"
    entry["components"].pop("smddp")
    entry["components"]["efa"] = "1.32.0"
    line = error_of(write_matrix, entry)
    assert "PyTorch 2.3.0 supports CUDA 11.8 to 12.1; base cuda113 has CUDA 11.3.1" in line


def test_pytorch_with_unsupported_python_fails(write_matrix):
    entry = with_components(SOURCE, python="3.13", smddp=None)
    assert "PyTorch 2.3.0 supports Python 3.8 to 3.12, not 3.13" in error_of(write_matrix, entry)


def test_torchvision_must_pair_with_pytorch(write_matrix):
    entry = with_components(SOURCE, torchvision="0.9.1")
    assert "torchvision 0.9.1 does not pair with PyTorch 2.3" in error_of(write_matrix, entry)


# --- DLC tag format, region, variant ------------------------------------------------------------

def test_dlc_tag_format_is_checked(write_matrix):
    data = matrix(DLC)
    data["bases"]["dlc-sm"]["dlc_tag"] = "2.4.0-gpu-py311-cu124-sagemaker"
    with pytest.raises(MatrixError) as exc:
        load_matrix(write_matrix(dump(data)))
    assert "bases.dlc-sm.dlc_tag: not a DLC PyTorch training GPU tag" in str(exc.value)


def test_dlc_region_must_have_a_registry(write_matrix):
    line = error_of(write_matrix, dict(DLC, region="us-west-9"))
    assert "no Deep Learning Containers registry known for region 'us-west-9'" in line
    assert "did you mean 'us-west-2'" in line


def test_dlc_ec2_variant_with_code_needs_the_toolkit(write_matrix, tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "train.py").write_text("print('hi')\n")
    entry = dict(DLC, base="dlc-ec2", code={"dir": "code", "program": "train.py"})
    assert "use a -sagemaker tag or switch on stanzas.sagemaker-toolkit" in error_of(write_matrix, entry)
    entry["components"] = {"sagemaker_training": "4.8.1", "sagemaker_pytorch_training": "2.8.1"}
    spec = load(write_matrix, entry).get("dl")
    assert spec.stanzas == ("base", "sagemaker-toolkit", "pip-requirements", "sagemaker-code", "labels")


def test_toolkit_without_the_pytorch_package_fails(write_matrix):
    entry = with_components(SOURCE, sagemaker_pytorch_training=None)
    assert "SAGEMAKER_TRAINING_MODULE" in error_of(write_matrix, entry)


def test_dlc_code_dir_must_exist(write_matrix):
    entry = dict(DLC, code={"dir": "missing", "program": "train.py"})
    assert "missing/train.py does not exist next to the matrix" in error_of(write_matrix, entry)


# --- flavors and OS -----------------------------------------------------------------------------

def test_nvidia_flavor_cannot_change_the_base_pytorch(write_matrix):
    line = error_of(write_matrix, with_components(NVIDIA, pytorch="2.4.0"))
    assert "the base ngc ships pytorch 2.5.0a0; a different one needs flavor source" in line


def test_efa_1_43_rejects_ubuntu_20_04(write_matrix):
    entry = copy.deepcopy(SOURCE)
    entry.update(base="cuda113")
    entry["components"] = {"pytorch": "1.10.2", "python": "3.8", "miniconda": "23.11.0-2", "nccl": "2.10.3",
                           "efa": "1.43.2", "torchvision": "0.11.3"}
    assert "EFA installer 1.43.2 does not support Ubuntu 20.04" in error_of(write_matrix, entry)


def test_nccl_apt_and_source_conflict(write_matrix):
    entry = with_components(NVIDIA, nccl="2.23.4")
    entry["stanzas"] = {"nccl-apt": True}
    assert "nccl-apt and nccl-source both install NCCL" in error_of(write_matrix, entry)
    entry["stanzas"] = {"nccl-apt": True, "nccl-source": False}
    assert load(write_matrix, entry).get("nv").has("nccl-apt")
