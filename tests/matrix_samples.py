"""Small matrices for the unit tests: one valid entry per flavor, to be broken one key at a time."""

from __future__ import annotations

import copy

import yaml

BASES = {
    "ngc": {
        "image": "nvcr.io/nvidia/pytorch:24.09-py3",
        "ships": {"pytorch": "2.5.0a0", "cuda": "12.6.1", "nccl": "2.22.3", "python": "3.10", "os": "ubuntu22.04"},
    },
    "cuda121": {
        "image": "nvidia/cuda:12.1.1-cudnn8-devel-ubuntu22.04",
        "ships": {"cuda": "12.1.1", "cudnn": "8", "os": "ubuntu22.04"},
    },
    "cuda113": {
        "image": "nvidia/cuda:11.3.1-cudnn8-devel-ubuntu20.04",
        "ships": {"cuda": "11.3.1", "cudnn": "8", "os": "ubuntu20.04"},
    },
    "dlc-sm": {
        "dlc_tag": "2.4.0-gpu-py311-cu124-ubuntu22.04-sagemaker",
        "ships": {"cuda": "12.4.1", "nccl": "2.22.3", "efa": "1.34.0"},
    },
    "dlc-ec2": {
        "dlc_tag": "2.4.0-gpu-py311-cu124-ubuntu22.04-ec2",
        "ships": {"cuda": "12.4.1", "nccl": "2.22.3", "efa": "1.34.0"},
    },
}

NVIDIA = {
    "name": "nv",
    "flavor": "nvidia",
    "base": "ngc",
    "components": {"efa": "1.35.0", "aws_ofi_nccl": "1.12.1", "nccl_tests": "2.13.10"},
}
SOURCE = {
    "name": "src",
    "flavor": "source",
    "base": "cuda121",
    "components": {
        "pytorch": "2.3.0", "python": "3.11", "miniconda": "24.7.1-0", "nccl": "2.21.5", "efa": "1.32.0",
        "aws_ofi_nccl": "1.9.1", "gdrcopy": "2.4.1", "torchvision": "0.18.1",
        "sagemaker_training": "4.7.4", "sagemaker_pytorch_training": "2.8.1",
        "smddp": "https://smdataparallel.s3.amazonaws.com/binary/pytorch/2.3.0/cu121/2024-05-23/"
                 "smdistributed_dataparallel-2.3.0-cp311-cp311-linux_x86_64.whl",
        "mpi4py": "3.1.6",  # SMDDP's launcher runs `python -m mpi4py` (rule smddp-launcher)
    },
    "stanzas": {"openssh": True},  # ... and starts sshd on every host
}
DLC = {"name": "dl", "flavor": "dlc", "base": "dlc-sm", "region": "us-west-2", "pip": ["torchmetrics==1.4.0"]}


def matrix(*entries, **top) -> dict:
    data = {"schema": 1, "defaults": {"cuda_archs": ["80", "90"]}, "bases": copy.deepcopy(BASES),
            "images": [copy.deepcopy(e) for e in entries]}
    data.update(copy.deepcopy(top))
    return data


def dump(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def with_components(entry: dict, **changes) -> dict:
    """A copy of entry with components changed (None removes one)."""
    out = copy.deepcopy(entry)
    for key, value in changes.items():
        if value is None:
            out["components"].pop(key, None)
        else:
            out["components"][key] = value
    return out
