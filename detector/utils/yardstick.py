"""The yardstick: one training step of torchvision's ResNet-18 classifier, timed on this machine.

Benchmark times mean little on their own: the same job is 3x slower on one 2-core CPU than on
another. Every benchmark table therefore prints the yardstick measured in the same run and
gives each timed quantity also in yardstick units (seconds / yardstick seconds), which a reader
can multiply by the yardstick of their own machine. The training engine can log it at start
(:func:`measure_yardstick`) so that every run's time can be scaled the same way.

The step: ``torchvision.models.resnet18(num_classes=1000)`` (seeded random weights, train mode),
a batch of 4 random 3x224x224 images and labels, forward, cross-entropy, backward, SGD step
(lr 0.01, momentum 0.9), on the CPU with torch's current thread count.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.models import resnet18

#: one line for tables and logs
DESCRIPTION = "one resnet18 training step, batch 4 at 224 px, CPU"


def yardstick_seconds(
    *, repeats: int = 10, warmup: int = 2, seed: int = 0, batch_size: int = 4, image_size: int = 224
) -> list[float]:
    """Seconds of each of ``repeats`` timed yardstick steps (after ``warmup`` untimed ones).

    ``batch_size`` and ``image_size`` exist for tests; the yardstick is 4 and 224.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # do not disturb the caller's random stream
        torch.manual_seed(seed)
        model = resnet18(num_classes=1000).train()
    images = torch.rand(batch_size, 3, image_size, image_size, generator=g)
    labels = torch.randint(0, 1000, (batch_size,), generator=g)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    seconds = []
    with torch.enable_grad():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if i >= warmup:
                seconds.append(time.perf_counter() - start)
    return seconds


def measure_yardstick(*, repeats: int = 10, warmup: int = 2) -> float:
    """Median seconds of one yardstick step on this machine (see the module doc)."""
    return statistics.median(yardstick_seconds(repeats=repeats, warmup=warmup))


def yardstick_report(*, repeats: int = 10, warmup: int = 2) -> dict[str, Any]:
    """The yardstick as benchmark results record it: ``seconds`` (each step), ``median_s``,
    ``threads`` and a ``description``."""
    seconds = yardstick_seconds(repeats=repeats, warmup=warmup)
    return {
        "description": DESCRIPTION,
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "median_s": statistics.median(seconds),
    }


def in_yardsticks(seconds: float, yardstick_s: float) -> float:
    """``seconds`` in yardstick units: how many yardstick steps take as long."""
    if yardstick_s <= 0:
        raise ValueError(f"the yardstick must be positive, got {yardstick_s}")
    return seconds / yardstick_s


def yardstick_line(report: dict[str, Any]) -> str:
    """The line every benchmark table starts with."""
    s = report["seconds"]
    return (
        f"yardstick ({report['description']}, {report['threads']} threads): "
        f"{report['median_s']:.3f} s (median of {len(s)}, range {min(s):.3f}..{max(s):.3f}); "
        "'yardsticks' = seconds / this"
    )
