"""Per-RoI choice of pyramid scales (SPP-net) and the maxout merge of their pooled features.

Pure functions used by multi-scale testing in the ResNet paper's form (:mod:`multiscale_paper`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def select_scale_pairs(
    areas: Tensor,
    scale_factors: Tensor,
    *,
    target_size: float = 224.0,
    allowed: Tensor | None = None,
) -> Tensor:
    """Two adjacent pyramid scales per RoI.

    SPP-net's rule: the first is the scale at which the RoI's area is closest to
    ``target_size ** 2`` pixels; the second is its neighbour in the pyramid whose scaled area is
    the closer of the two neighbours (the only neighbour at either end of the pyramid; the same
    scale when the pyramid has one scale). Ties go to the smaller scale.

    Args:
        areas: (R,) RoI areas in pixels of the image the RoIs are given in.
        scale_factors: (S,) strictly increasing linear factors from that image to each pyramid
            level (the area scales by the factor squared).
        allowed: optional (R, S) bool, the levels each RoI may be pooled at (see
            :func:`levels_within`). Both scales are chosen among them by the same rule: the
            closest allowed level, and its neighbour only if that is allowed too (else the
            closest twice, i.e. one scale). A RoI with no allowed level uses every level.

    Returns:
        (R, 2) int64 scale indices ``[closest, neighbour]``.
    """
    f = torch.as_tensor(scale_factors, dtype=torch.float64, device=areas.device).reshape(-1)
    if f.numel() == 0 or bool((f <= 0).any()) or bool((f[1:] <= f[:-1]).any()):
        raise ValueError(
            f"scale_factors must be positive and strictly increasing, got {f.tolist()}"
        )
    dist = (areas.to(torch.float64)[:, None] * f[None, :] ** 2 - float(target_size) ** 2).abs()
    if allowed is not None:
        if allowed.shape != dist.shape:
            raise ValueError(
                f"allowed must be (R, S) = {tuple(dist.shape)}, got {tuple(allowed.shape)}"
            )
        if allowed.dtype != torch.bool:
            raise ValueError(f"allowed must be a bool tensor, got {allowed.dtype}")
        allowed = allowed.to(dist.device) | ~allowed.any(dim=1, keepdim=True)
        dist = torch.where(allowed, dist, torch.full_like(dist, float("inf")))
    best = dist.argmin(dim=1)
    num = f.numel()
    if num == 1:
        return torch.stack([best, best], dim=1)
    inf = torch.full_like(best, 0, dtype=torch.float64) + float("inf")
    lower, upper = (best - 1).clamp(min=0), (best + 1).clamp(max=num - 1)
    d_lower = torch.where(best > 0, dist.gather(1, lower[:, None])[:, 0], inf)
    d_upper = torch.where(best < num - 1, dist.gather(1, upper[:, None])[:, 0], inf)
    neighbour = torch.where(d_lower <= d_upper, lower, upper)
    # no allowed neighbour (both at infinity): the closest level alone
    neighbour = torch.where(torch.minimum(d_lower, d_upper).isinf(), best, neighbour)
    return torch.stack([best, neighbour], dim=1)


def levels_within(areas: Tensor, scale_factors: Tensor, size_range: tuple[float, float]) -> Tensor:
    """(R, S) bool: the pyramid levels a RoI may be pooled at under ``levels_in_range``.

    - levels at which its side (the square root of its area) lies within ``size_range`` pixels;
    - the level whose factor is 1 (the test scale, where training showed the head objects of
      every size), if the pyramid has one;
    - for a RoI below the range at the test scale, the enlarged levels that bring it toward the
      range without reaching it (enlarging small objects is what the multi-scale test is for).

    A RoI above the range at the test scale may thus go to a smaller level only where it lies
    within the range; one that is no longer within it at any level stays at the test scale.
    """
    f = torch.as_tensor(scale_factors, dtype=torch.float64, device=areas.device).reshape(-1)
    base = areas.to(torch.float64).clamp(min=0).sqrt()[:, None]
    sides = base * f[None, :]
    low, high = size_range
    inside = (sides >= low) & (sides <= high)
    growing = (base < low) & (sides >= base) & (sides < low)
    return inside | growing | ((f - 1.0).abs() < 1e-6)[None, :]


def maxout_pool(pairs: Tensor, pool_at_scale: Callable[[int, Tensor], Tensor]) -> Tensor:
    """Element-wise max of each RoI's features pooled at its scales.

    Args:
        pairs: (R, K) scale indices per RoI (K = 2 for the paper's adjacent pair).
        pool_at_scale: ``pool_at_scale(s, idx) -> (len(idx), C, S, S)``, the RoIs ``idx``
            (sorted int64 indices into the R RoIs) pooled at scale ``s``.

    Returns:
        (R, C, S, S): ``max over k of pool_at_scale(pairs[r, k])[r]``. Each scale is pooled once,
        for the RoIs that use it.
    """
    if pairs.dim() != 2:
        raise ValueError(f"pairs must be (R, K), got {tuple(pairs.shape)}")
    num = pairs.shape[0]
    if num == 0:
        return pool_at_scale(0, pairs.new_zeros((0,)))
    out: Tensor | None = None
    for s in torch.unique(pairs).tolist():
        idx = torch.where((pairs == s).any(dim=1))[0]
        pooled = pool_at_scale(int(s), idx)
        if out is None:
            out = pooled.new_full((num, *pooled.shape[1:]), float("-inf"))
        out[idx] = torch.maximum(out[idx], pooled)
    return out
