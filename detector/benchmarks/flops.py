"""How far from the hardware a timed path runs: its FLOPs, and the machine's convolution peak.

- :func:`count_flops` counts the FLOPs of one call once, with ``torch.utils.flop_counter``'s
  ``FlopCounterMode``. It counts FLOPs, not MACs (a multiply-add is 2 FLOPs), of the
  convolutions and matrix products (forward and, when the call runs backward, backward);
  elementwise ops, pooling, RoIAlign and NMS count 0, so the share of peak is of the arithmetic
  that convolution kernels could run at peak.
- :func:`measure_conv_peak` times 3x3 convolutions forward (256 -> 256 channels on
  4x256x64x64, 19.3 GFLOP; 512 -> 512 on 64x512x8x8, 9.7 GFLOP), each in NCHW and NHWC,
  interleaved, and takes the best median GFLOP/s as the machine's convolution peak. Timing noise
  (other processes) can put a model path above it.
- :func:`achieved` turns FLOPs and seconds into GFLOP/s and the share of that peak.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from detector.benchmarks.timing import time_interleaved


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of the convolutions and matrix products ``fn()`` runs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def conv_flops(*, batch: int, channels: int, size: int, kernel: int = 3) -> int:
    """FLOPs of a same-padded ``kernel`` x ``kernel`` convolution, ``channels`` in and out, on
    ``batch`` x ``channels`` x ``size`` x ``size`` (bias not counted)."""
    return 2 * batch * channels * channels * kernel * kernel * size * size


#: the convolutions the peak is the best of: (batch, channels, size) of a same-padded 3x3,
#: channels -> channels convolution: a 256-channel one as in the FPN and the RPN head, a 512-channel
#: one on many small maps as in a res5 head (1 x 256 x 64 x 64 alone leaves oneDNN under-used)
PEAK_SHAPES: tuple[tuple[int, int, int], ...] = ((4, 256, 64), (64, 512, 8))


def measure_conv_peak(
    *,
    device: torch.device | str = "cpu",
    shapes: Sequence[Sequence[int]] = PEAK_SHAPES,
    warmup: int = 3,
    repeats: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """The convolution peak: the best median GFLOP/s of same-padded 3x3 convolutions forward.

    Each of ``shapes`` (batch, channels, size) runs in NCHW and NHWC, all interleaved,
    ``warmup`` untimed and ``repeats`` timed times under ``torch.inference_mode``. Returns
    ``convolutions`` (per shape and layout: ``shape``, ``layout``, ``flops`` per call,
    ``seconds``, ``gflops_per_s`` of the median), ``peak_gflops_per_s`` (the best of them) and
    ``peak`` (its name).
    """
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    calls: dict[str, Callable[[], None]] = {}
    convolutions: dict[str, dict[str, Any]] = {}
    for batch, channels, size in shapes:
        x = torch.randn(batch, channels, size, size, generator=g).to(device)
        w = (torch.randn(channels, channels, 3, 3, generator=g) * 0.02).to(device)
        for layout in ("nchw", "nhwc"):
            if layout == "nhwc":
                x = x.contiguous(memory_format=torch.channels_last)
                w = w.contiguous(memory_format=torch.channels_last)
            name = f"{batch}x{channels}x{size}x{size} {layout.upper()}"
            calls[name] = _conv_call(x, w)
            convolutions[name] = {
                "shape": [batch, channels, size, size],
                "layout": layout,
                "flops": conv_flops(batch=batch, channels=channels, size=size),
            }
    seconds = time_interleaved(calls, warmup=warmup, repeats=repeats, device=device)
    for name, conv in convolutions.items():
        conv["seconds"] = seconds[name]
        conv["gflops_per_s"] = conv["flops"] / statistics.median(seconds[name]) / 1e9
    best = max(convolutions, key=lambda k: convolutions[k]["gflops_per_s"])
    return {
        "convolutions": convolutions,
        "peak": best,
        "peak_gflops_per_s": convolutions[best]["gflops_per_s"],
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }


def _conv_call(x: torch.Tensor, w: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            F.conv2d(x, w, padding=1)

    return run


def achieved(flops: int, seconds: float, peak_gflops_per_s: float | None) -> dict[str, Any]:
    """``gflops`` per call, ``gflops_per_s`` = FLOPs / seconds and ``share_of_peak`` (a fraction;
    ``None`` without a peak)."""
    rate = flops / seconds / 1e9
    share = rate / peak_gflops_per_s if peak_gflops_per_s else None
    return {"gflops": flops / 1e9, "gflops_per_s": rate, "share_of_peak": share}


def peak_line(peak: dict[str, Any]) -> str:
    """One line describing the measured peak, for the tables."""
    rates = ", ".join(f"{k} {v['gflops_per_s']:.0f}" for k, v in peak["convolutions"].items())
    return (
        f"convolution peak: {peak['peak_gflops_per_s']:.1f} GFLOP/s, the best median of "
        f"{peak['repeats']} calls of 3x3 convolutions forward (batch x channels x size^2 "
        f"layout: GFLOP/s: {rates}); FLOPs count a multiply-add as 2"
    )
