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


from builder import imageref  # noqa: E402
from builder.errors import UsageError  # noqa: E402

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize("ref, parts", [
    ("pt", (None, "pt", None, None)),
    ("team/pt:2.3-cu121", (None, "team/pt", "2.3-cu121", None)),
    ("nvcr.io/nvidia/pytorch:24.09-py3", ("nvcr.io", "nvidia/pytorch", "24.09-py3", None)),
    ("127.0.0.1:5000/a/b:1", ("127.0.0.1:5000", "a/b", "1", None)),
    ("localhost/pt@" + DIGEST, ("localhost", "pt", None, DIGEST)),
    ("Registry.Example.com/a__b/c---d:x@" + DIGEST, ("Registry.Example.com", "a__b/c---d", "x", DIGEST)),
    ("[::1]:5000/pt:1", ("[::1]:5000", "pt", "1", None)),
])
def test_one_grammar_parses_the_parts(ref, parts):
    parsed = imageref.parse(ref)
    assert (parsed.registry, parsed.path, parsed.tag, parsed.digest) == parts
    assert str(parsed) == ref


@pytest.mark.parametrize("ref", [
    "pt\n", "pt:1\n", "nvcr.io/nvidia/pytorch:24.09-py3\n",  # $ would have let these through
    "Upper/case:v1", "a//b", "-x", "x:", "pt:-x", "pt:v1;rm -rf /", "a_-b", "pt@sha256:abc",
    "pt@md5:" + "a" * 32, "host:port/pt", "x" * 256, "", None, 3,
])
def test_one_grammar_refuses_the_rest(ref):
    assert imageref.parse(ref) is None and not imageref.is_reference(ref)


def test_resolve_name_or_image():
    class Spec:
        primary_ref = "repo/pt:a"

    class Matrix:
        def find(self, name):
            return Spec if name == "pt-efa" else None

    assert imageref.resolve(Matrix(), "pt-efa") == ("repo/pt:a", Spec)
    assert imageref.resolve(Matrix(), "other:1") == ("other:1", None)
    assert imageref.resolve(None, "pt-efa") == ("pt-efa", None)
    with pytest.raises(UsageError, match=r"^'pt:1\\n' is neither an image of the matrix"):
        imageref.resolve(Matrix(), "pt:1\n")
