"""Finding an image's matrix entry from the labels `builder build` writes (render.py)."""

from __future__ import annotations

from typing import Mapping

TITLE = "org.opencontainers.image.title"  # the matrix image's name


def image_title(labels: Mapping[str, str] | None) -> str | None:
    return (labels or {}).get(TITLE) or None


def spec_for_labels(matrix, labels: Mapping[str, str] | None):
    """The matrix image (ImageSpec) an image's title label names; None without a matrix, a
    title, or a matrix image of that name."""
    title = image_title(labels) if matrix is not None else None
    return matrix.find(title) if title else None
