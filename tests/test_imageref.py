"""Docker's registry rule, shared by lock, push, export and nccl run."""

import pytest

from builder.imageref import split_registry


@pytest.mark.parametrize("ref, expected", [
    ("team/pt:1", (None, "team/pt:1")),
    ("pt", (None, "pt")),
    ("123456789012.dkr.ecr.us-west-2.amazonaws.com/team/pt:1",
     ("123456789012.dkr.ecr.us-west-2.amazonaws.com", "team/pt:1")),
    ("127.0.0.1:5000/pt:x", ("127.0.0.1:5000", "pt:x")),
    ("localhost/pt", ("localhost", "pt")),
    ("nvcr.io/nvidia/pytorch:24.09-py3", ("nvcr.io", "nvidia/pytorch:24.09-py3")),
])
def test_split_registry(ref, expected):
    assert split_registry(ref) == expected
