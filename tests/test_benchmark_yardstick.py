"""The yardstick and the FLOP / peak arithmetic of the benchmark tables, at tiny sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detector.benchmarks.flops import (
    achieved,
    conv_flops,
    count_flops,
    measure_conv_peak,
    peak_line,
)
from detector.utils.yardstick import (
    in_yardsticks,
    measure_yardstick,
    yardstick_line,
    yardstick_report,
    yardstick_seconds,
)


def test_yardstick_times_each_repeat_and_leaves_the_callers_rng_alone() -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    seconds = yardstick_seconds(repeats=3, warmup=1, batch_size=2, image_size=32)
    assert len(seconds) == 3 and min(seconds) > 0
    assert torch.equal(torch.rand(3), expected)
    with pytest.raises(ValueError, match="repeats >= 1"):
        yardstick_seconds(repeats=0)


def test_measure_yardstick_is_the_median_of_the_steps_at_the_real_size() -> None:
    # the real yardstick (resnet18, batch 4 at 224 px), once: the engine logs this number
    seconds = measure_yardstick(repeats=1, warmup=0)
    assert 0 < seconds < 120


def test_yardstick_units_and_line() -> None:
    assert in_yardsticks(3.0, 0.5) == 6.0
    with pytest.raises(ValueError, match="positive"):
        in_yardsticks(1.0, 0.0)
    report = {
        "description": "d",
        "threads": 2,
        "seconds": [0.7, 0.5, 0.6],
        "median_s": 0.6,
    }
    line = yardstick_line(report)
    assert "0.600 s (median of 3, range 0.500..0.700)" in line and "2 threads" in line
    real = yardstick_report(repeats=1, warmup=0)
    assert real["median_s"] == real["seconds"][0] and real["threads"] == torch.get_num_threads()


def test_count_flops_counts_multiply_adds_twice_forward_and_backward() -> None:
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    forward = 2 * 2 * 6 * 4 * 3 * 3 * 5 * 5  # 2 FLOPs per multiply-add, by hand
    assert conv_flops(batch=1, channels=4, size=5) == 2 * 4 * 4 * 9 * 25
    with torch.no_grad():
        assert count_flops(lambda: conv(x)) == forward
    # backward: the gradients of the input and of the weight cost one forward each
    assert count_flops(lambda: conv(x).sum().backward()) == 3 * forward
    linear = nn.Linear(10, 3)
    assert count_flops(lambda: linear(torch.randn(5, 10))) == 2 * 5 * 10 * 3
    assert count_flops(lambda: torch.relu(torch.randn(4))) == 0  # elementwise: not counted


def test_conv_peak_reports_both_layouts_and_the_faster_one() -> None:
    peak = measure_conv_peak(shapes=[(1, 8, 8), (2, 4, 6)], warmup=0, repeats=2)
    convs = peak["convolutions"]
    assert set(convs) == {"1x8x8x8 NCHW", "1x8x8x8 NHWC", "2x4x6x6 NCHW", "2x4x6x6 NHWC"}
    assert convs["2x4x6x6 NHWC"]["flops"] == conv_flops(batch=2, channels=4, size=6)
    assert all(len(c["seconds"]) == 2 for c in convs.values())
    best = max(c["gflops_per_s"] for c in convs.values())
    assert peak["peak_gflops_per_s"] == best == convs[peak["peak"]]["gflops_per_s"] > 0
    assert "1x8x8x8 NHWC" in peak_line(peak)


def test_achieved_rate_and_share_of_peak() -> None:
    assert achieved(2_000_000_000, 0.5, 8.0) == {
        "gflops": 2.0,
        "gflops_per_s": 4.0,
        "share_of_peak": 0.5,
    }
    assert achieved(1_000_000_000, 1.0, None)["share_of_peak"] is None
