"""Anchor generators built from plain config lists."""

from __future__ import annotations

from collections.abc import Sequence

from torchvision.models.detection.anchor_utils import AnchorGenerator


def per_level_anchor_generator(
    *, sizes: Sequence[int], aspect_ratios: Sequence[float]
) -> AnchorGenerator:
    """One anchor size per feature level (FPN), the same aspect ratios on every level."""
    return AnchorGenerator(
        sizes=tuple((int(s),) for s in sizes),
        aspect_ratios=tuple(tuple(float(r) for r in aspect_ratios) for _ in sizes),
    )
