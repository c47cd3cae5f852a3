"""RoIAlign as one weighted gather over channels-last features: ``torchvision``'s numbers, ~15x faster.

RoIAlign (Mask R-CNN; torchvision's ``roi_align``) averages, in each of the ``Ph x Pw`` bins
of a RoI, ``gh x gw`` bilinear samples of the feature map; each sample is a weighted sum of 4
neighbouring pixels. So every output bin is a weighted sum of ``4 gh gw`` feature vectors of
``C`` channels. With the features channels-last, the map is a table of ``H W`` rows of ``C``
floats, and the whole pooling is one ``torch.nn.functional.embedding_bag(mode="sum")`` with
per-sample weights: a vectorised, multi-threaded kernel, reading whole channel vectors.
torchvision's CPU kernel instead loops over channels one plane at a time on one thread, after
copying channels-last features to NCHW (docs/benchmarks.md: 1000 RoIs on a 256 x 200 x 272 map,
0.40 s on one thread, 0.22 s split over two with :mod:`detector.modeling.parallel_pool`,
0.013 s here).

:func:`roi_align_gather` computes the sample positions, bilinear weights and validity exactly as
torchvision's kernel (``aligned`` offset, the minimum RoI size of 1 when not aligned, a fixed
``sampling_ratio`` or the adaptive ``ceil(roi size / bins)`` grid, samples beyond one pixel
outside the map counting zero, clamping at the border). The sums run in another order, so
results agree to float rounding (about 1e-7 relative), not bit for bit. The pooled features
come out channels-last, the layout the next convolutions of a channels-last model want.
:class:`GatherMultiScaleRoIAlign` is torchvision's ``MultiScaleRoIAlign`` (same level
assignment) pooling each level this way; the C4 pooler
(:class:`~detector.modeling.poolers.SingleLevelRoIPooler`) takes ``gather=True``.
:func:`~detector.modeling.fuse.optimize_for_inference` switches both on (``gather_pool``).

It applies to channels-last float maps on the CPU outside autocast. Elsewhere it calls
:func:`~detector.modeling.parallel_pool.parallel_roi_align` (torchvision's kernel, split over the
CPU threads where that applies; bit for bit torchvision's numbers). NCHW maps are among these: for
them the gather would need a transposed copy of the map and of the result, which cost more than
it saves (the R18-C4 quick model at 192 px, whose optimised copy keeps NCHW, ran 0.96x the
plain model with it and 1.04x without; R50-C4 at 192 px 0.98x and 1.10x).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detector.modeling.parallel_pool import (
    ParallelMultiScaleRoIAlign,
    boxes_to_rois,
    parallel_roi_align,
)

#: at most this many (sample, neighbour) entries are indexed at once: RoIs of one sampling grid
#: are pooled in chunks below it (4M entries: about 300 MiB of index, weight and temporaries). An
#: adaptive grid of a RoI far larger than its bins (2000 px at stride 1 into 7 bins: 286 x 286
#: samples per bin, 16M entries) is then pooled in pieces of one RoI.
MAX_ENTRIES = 1 << 22


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def _axis(pos: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """torchvision's bilinear rule along one axis: ``valid`` (within one pixel of the map), the
    low and high neighbour indices and their weights ``1 - frac`` and ``frac``."""
    valid = (pos >= -1.0) & (pos <= size)
    # beyond the map (or not a number) the weight is 0; keep the index in range all the same
    pos = torch.nan_to_num(pos, nan=0.0).clamp(0, size)
    low = pos.floor().long()
    top = low >= size - 1
    low = low.clamp(max=size - 1)
    high = torch.where(top, low, low + 1)
    pos = torch.where(top, low.to(pos.dtype), pos)
    frac = pos - low.to(pos.dtype)
    return valid, low, high, 1.0 - frac, frac


def _sample_positions(start: Tensor, bin_size: Tensor, bins: int, grid: int) -> Tensor:
    """(R, bins * grid) sample coordinates: ``start + p * bin + (i + .5) * bin / grid``, in
    torchvision's order of operations."""
    dtype = start.dtype
    p = torch.arange(bins, dtype=dtype, device=start.device).repeat_interleave(grid)
    i = torch.arange(grid, dtype=dtype, device=start.device).repeat(bins)
    return start[:, None] + p[None] * bin_size[:, None] + (i[None] + 0.5) * bin_size[:, None] / grid


def _pool_fixed_grid(
    table: Tensor,
    height: int,
    width: int,
    batch_index: Tensor,
    start_y: Tensor,
    start_x: Tensor,
    bin_h: Tensor,
    bin_w: Tensor,
    bins: tuple[int, int],
    grid: tuple[int, int],
) -> Tensor:
    """(R * Ph * Pw, C) pooled rows of RoIs that share one sampling grid ``(gh, gw)``."""
    (ph, pw), (gh, gw) = bins, grid
    r = start_y.shape[0]
    vy, y_lo, y_hi, wy_lo, wy_hi = _axis(_sample_positions(start_y, bin_h, ph, gh), height)
    vx, x_lo, x_hi, wx_lo, wx_hi = _axis(_sample_positions(start_x, bin_w, pw, gw), width)
    base = (batch_index * (height * width))[:, None, None]
    rows_y = (y_lo[:, :, None] * width, y_hi[:, :, None] * width)
    cols_x = (x_lo[:, None, :], x_hi[:, None, :])
    w_y = (wy_lo[:, :, None], wy_hi[:, :, None])
    w_x = (wx_lo[:, None, :], wx_hi[:, None, :])
    valid = (vy[:, :, None] & vx[:, None, :]).to(table.dtype) / (gh * gw)
    # (R, Ph*gh, Pw*gw, 4): the 4 neighbours of every sample and their weights
    index = torch.stack([base + y + x for y in rows_y for x in cols_x], dim=-1)
    weight = torch.stack([a * b for a in w_y for b in w_x], dim=-1) * valid[..., None]
    # group each bin's gh * gw samples x 4 neighbours into one bag
    shape = (r, ph, gh, pw, gw, 4)
    index = index.view(shape).permute(0, 1, 3, 2, 4, 5).reshape(r * ph * pw, gh * gw * 4)
    weight = weight.view(shape).permute(0, 1, 3, 2, 4, 5).reshape(r * ph * pw, gh * gw * 4)
    return F.embedding_bag(index, table, per_sample_weights=weight, mode="sum")


def gather_applies(input: Tensor) -> bool:
    """Whether :func:`roi_align_gather` computes ``input`` itself (else it calls torchvision)."""
    return (
        input.device.type == "cpu"
        and not torch.jit.is_tracing()
        and input.dim() == 4
        and input.dtype in (torch.float32, torch.float64)
        and input.is_contiguous(memory_format=torch.channels_last)
        and not torch.is_autocast_enabled("cpu")
    )


def roi_align_gather(
    input: Tensor,
    rois: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    workers: int | None = None,
) -> Tensor:
    """``torchvision.ops.roi_align`` with the same arguments, as one weighted gather (see the
    module doc); the result is (K, C, Ph, Pw), channels-last when the gather applies
    (:func:`gather_applies`), else :func:`~detector.modeling.parallel_pool.parallel_roi_align`'s
    on ``workers`` threads."""
    if isinstance(rois, list):
        rois = boxes_to_rois([b.to(input.dtype) for b in rois])
    if not gather_applies(input) or rois.shape[0] == 0:
        return parallel_roi_align(
            input, rois, output_size, spatial_scale, sampling_ratio, aligned, workers=workers
        )
    n, c, height, width = input.shape
    ph, pw = _pair(output_size)
    k = rois.shape[0]
    rois = rois.detach().to(input.dtype)  # as torchvision's: no gradient into the boxes
    # the map as a table of N*H*W rows of C channels (a view when the map is channels-last)
    table = input.permute(0, 2, 3, 1).reshape(n * height * width, c)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale - offset for i in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # torchvision forces malformed RoIs to be 1x1
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / ph, roi_w / pw
    batch_index = rois[:, 0].long()
    if sampling_ratio > 0:
        grid_h = grid_w = torch.full((k,), sampling_ratio, dtype=torch.long)
    else:  # adaptive: ceil(roi size / bins) samples per bin and axis, per RoI
        grid_h, grid_w = torch.ceil(roi_h / ph).long(), torch.ceil(roi_w / pw).long()
    out: Tensor | None = None  # allocated only when the RoIs come in several parts
    groups = torch.stack([grid_h, grid_w], dim=1).unique(dim=0)
    for gh, gw in groups.tolist():
        if gh <= 0 or gw <= 0:  # an empty RoI: no samples, zeros (as torchvision)
            continue
        group = torch.where((grid_h == gh) & (grid_w == gw))[0]
        # bound the index and weight tensors (about 80 bytes per entry with temporaries)
        per_roi = ph * pw * gh * gw * 4
        for members in group.split(max(1, MAX_ENTRIES // per_roi)):
            part = _pool_fixed_grid(
                table,
                height,
                width,
                batch_index[members],
                y1[members],
                x1[members],
                bin_h[members],
                bin_w[members],
                (ph, pw),
                (gh, gw),
            )
            if members.numel() == k:
                out = part.view(k, ph * pw * c)
                continue
            if out is None:
                out = table.new_zeros((k, ph * pw * c))
            out.index_copy_(0, members, part.view(-1, ph * pw * c))
    if out is None:  # every RoI empty
        out = table.new_zeros((k, ph * pw * c))
    return out.view(k, ph, pw, c).permute(0, 3, 1, 2)


class GatherMultiScaleRoIAlign(ParallelMultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (FPN level assignment ``k0 + log2(sqrt(wh)/224)``,
    same ``featmap_names``, ``output_size``, ``sampling_ratio``) whose per-level pooling is
    :func:`roi_align_gather`: gathered on channels-last maps (the result is then channels-last),
    :class:`~detector.modeling.parallel_pool.ParallelMultiScaleRoIAlign`'s threaded kernel on
    others. :meth:`from_module` converts an existing pooler."""

    align_op = staticmethod(roi_align_gather)
