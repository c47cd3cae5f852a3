"""Benchmark: images/s of the training data pipeline alone (read, decode, augment, collate).

Drives :func:`detector.data.loader.build_train_loader` exactly as training does, with the
configured dataset, transforms, batch size and number of workers, and consumes the batches
without a model, so the rate is the pipeline's capacity: what it can feed a training loop that
never waits for anything else.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from torch.utils.data import Dataset

from detector.data.loader import build_train_loader


def time_data_loading(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    batches: int,
    repeats: int = 3,
    warmup_batches: int = 2,
    seed: int = 0,
    aspect_ratio_grouping: bool = True,
) -> dict[str, Any]:
    """Images/s of ``repeats`` consecutive windows of ``batches`` training batches each.

    ``warmup_batches`` are drawn first, untimed (worker start-up, first file reads).

    Returns ``images_per_s`` (one per window), ``median_images_per_s``, the settings, and
    to show the sizes the transforms produced: ``mean_image_size`` ((H, W) averaged over the
    timed images) and ``short_side_range`` ([min, max] of their shorter sides).
    """
    if batches < 1 or repeats < 1 or warmup_batches < 0:
        raise ValueError(
            f"need batches >= 1, repeats >= 1, warmup_batches >= 0; got {batches}, {repeats}, "
            f"{warmup_batches}"
        )
    loader = build_train_loader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        seed=seed,
        aspect_ratio_grouping=aspect_ratio_grouping,
    )
    stream = iter(loader)
    try:
        for _ in range(warmup_batches):
            next(stream)
        rates, heights, widths = [], [], []
        for _ in range(repeats):
            images = 0
            start = time.perf_counter()
            for _ in range(batches):
                batch, _targets = next(stream)
                images += len(batch)
                heights += [int(img.shape[-2]) for img in batch]
                widths += [int(img.shape[-1]) for img in batch]
            rates.append(images / (time.perf_counter() - start))
    finally:
        stream.close()  # stops the DataLoader workers
    return {
        "images_per_s": rates,
        "median_images_per_s": statistics.median(rates),
        "batch_size": batch_size,
        "num_workers": num_workers,
        "batches_per_window": batches,
        "mean_image_size": [statistics.mean(heights), statistics.mean(widths)],
        "short_side_range": [min(map(min, heights, widths)), max(map(min, heights, widths))],
    }
