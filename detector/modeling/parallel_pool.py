"""RoIAlign split over CPU threads: the same numbers as ``torchvision.ops.roi_align``, faster.

torchvision's CPU ``roi_align`` kernel runs on one thread, so while it pools the RoIs of a
detector (about 15% of R50-FPN inference at 800 px on 2 cores) the other cores are idle.
Every RoI is pooled independently, so splitting the RoIs into chunks and pooling the chunks on
a thread pool gives bit-identical results (``torch.equal``); the kernel releases the GIL.

:func:`parallel_roi_align` is the op; :class:`ParallelMultiScaleRoIAlign` is torchvision's
``MultiScaleRoIAlign`` (same level assignment, same state) that uses it, and the C4 pooler
(:class:`~detector.modeling.poolers.SingleLevelRoIPooler`) takes ``workers``.
:func:`~detector.modeling.fuse.optimize_for_inference` switches both on.

Outside its fast path (non-CPU tensors, autocast, fewer than ``min_rois_per_worker`` RoIs per
thread, one worker) it calls ``roi_align`` once, as usual.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Self

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_align

#: below this many RoIs per thread, the split costs more than it saves
MIN_ROIS_PER_WORKER = 32

_pool: ThreadPoolExecutor | None = None
_pool_workers = 0
_pool_lock = threading.Lock()


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_workers
    with _pool_lock:
        if _pool is None or _pool_workers < workers:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="roi_align")
            _pool_workers = workers
        return _pool


def boxes_to_rois(boxes: list[Tensor]) -> Tensor:
    """``[(R_i, 4)]`` per image -> ``(sum R_i, 5)`` rows ``(image index, x1, y1, x2, y2)``."""
    if not boxes:
        raise ValueError("boxes_to_rois needs one (R, 4) tensor per image, got an empty list")
    index = [torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)]
    return torch.cat([torch.cat(index), torch.cat(boxes)], dim=1)


def parallel_roi_align(
    input: Tensor,
    rois: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    workers: int | None = None,
    min_rois_per_worker: int = MIN_ROIS_PER_WORKER,
) -> Tensor:
    """``torchvision.ops.roi_align`` with the RoIs split over ``workers`` threads (default: torch's
    intra-op thread count). Same arguments and the same result, bit for bit."""
    if isinstance(rois, list):
        rois = boxes_to_rois([b.to(input.dtype) for b in rois])
    workers = torch.get_num_threads() if workers is None else workers
    chunks = min(workers, rois.shape[0] // max(min_rois_per_worker, 1))
    if chunks < 2 or input.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        return roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
    # the kernel makes its input contiguous: do it once here, not once per thread
    input = input.contiguous()
    # grad and inference mode are thread-local: carry the caller's into the workers
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def pool(part: Tensor) -> Tensor:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return roi_align(input, part, output_size, spatial_scale, sampling_ratio, aligned)

    futures = [_executor(workers).submit(pool, part) for part in rois.chunk(chunks)]
    return torch.cat([f.result() for f in futures])


class ParallelMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (FPN level assignment ``k0 + log2(sqrt(wh)/224)``,
    same ``featmap_names``, ``output_size``, ``sampling_ratio``) whose per-level pooling is
    :func:`parallel_roi_align`. :meth:`from_module` converts an existing pooler."""

    workers: int | None = None

    @classmethod
    def from_module(cls, pooler: MultiScaleRoIAlign, workers: int | None = None) -> Self:
        new = cls(
            featmap_names=list(pooler.featmap_names),
            output_size=pooler.output_size,
            sampling_ratio=pooler.sampling_ratio,
            canonical_scale=pooler.canonical_scale,
            canonical_level=pooler.canonical_level,
        )
        new.scales, new.map_levels, new.workers = pooler.scales, pooler.map_levels, workers
        return new

    #: the per-level op, ``roi_align``'s arguments plus ``workers`` (subclasses swap it)
    align_op = staticmethod(parallel_roi_align)

    def _align(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        """Pool ``rois`` (K, 5) from one level with :attr:`align_op`."""
        return self.align_op(
            feature,
            rois,
            self.output_size,
            scale,
            sampling_ratio=self.sampling_ratio,
            workers=self.workers,
        )

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        if torch.jit.is_scripting() or torch.jit.is_tracing():
            return super().forward(x, boxes, image_shapes)
        levels = [x[name] for name in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            # torchvision infers the scales from all the image sizes; pools no RoI here
            super().forward(x, [b[:0] for b in boxes], image_shapes)
        assert self.scales is not None and self.map_levels is not None
        rois = boxes_to_rois(boxes)
        if len(levels) == 1:
            return self._align(levels[0], rois, self.scales[0])
        level_of_roi = self.map_levels(boxes)
        first = levels[0]
        result: Tensor | None = None
        for level, (feature, scale) in enumerate(zip(levels, self.scales)):
            index = torch.where(level_of_roi == level)[0]
            if index.numel():
                pooled = self._align(feature, rois[index], scale)
                if result is None:  # in the layout the op returns (channels-last or NCHW)
                    result = _zeros_rows_like(pooled, rois.shape[0], first.dtype)
                result.index_copy_(0, index, pooled.to(result.dtype))
        if result is None:  # no RoI at all
            return first.new_zeros((0, first.shape[1], *self.output_size))
        return result


def _zeros_rows_like(pooled: Tensor, rows: int, dtype: torch.dtype) -> Tensor:
    """Zeros of ``rows`` x ``pooled.shape[1:]`` in ``pooled``'s memory format."""
    channels_last = not pooled.is_contiguous() and pooled.is_contiguous(
        memory_format=torch.channels_last
    )
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    shape = (rows, *pooled.shape[1:])
    return torch.empty(shape, dtype=dtype, device=pooled.device, memory_format=fmt).zero_()
