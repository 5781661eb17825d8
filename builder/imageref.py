"""Docker's rule for the registry part of an image reference, in one place.

The first path component names a registry only when it has a '.' or a ':' or is 'localhost'
('123456789012.dkr.ecr.us-west-2.amazonaws.com/team/pt:1', 'host:5000/pt', 'localhost/pt');
otherwise the whole reference is a repository on Docker Hub ('team/pt:1').
"""

from __future__ import annotations


def split_registry(ref: str) -> tuple[str | None, str]:
    """'host:5000/team/pt:1' -> ('host:5000', 'team/pt:1'); 'team/pt:1' -> (None, 'team/pt:1')."""
    first, sep, rest = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return None, ref
