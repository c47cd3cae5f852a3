"""Shared helpers for tests: composing configs from the real config tree, the tiny-run
overrides, small VOC writers and a deterministic RoI sampler. Fixtures are in conftest.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image

import detector  # noqa: F401  (registers resolvers)
from detector.modeling.meta_arch import FasterRCNN

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO_ROOT / "configs")
SHARED = REPO_ROOT.parent / "shared"


def compose_config(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides or [])


def build_model_from_config(
    model: str, *, num_classes: int, overrides: dict[str, Any] | None = None
) -> FasterRCNN:
    """Instantiate ``configs/model/<model>.yaml`` with ``num_classes`` and dotted overrides.

    Composed through the root config so that the model's own groups (``model/roi_heads``,
    placed at ``model.net.roi_heads``) resolve."""
    model_cfg = compose_config("train", [f"model={model}"]).model
    cfg = OmegaConf.create({"model": model_cfg, "dataset": {"num_classes": num_classes}})
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, value, merge=False)
    return instantiate(cfg.model.net)


#: Overrides that make ``train(cfg)`` a few-second run on the built-in synthetic dataset.
TINY = [
    "dataset.generator.num_train=8",
    "dataset.generator.num_val=4",
    "dataset.generator.image_size=96",
    "dataset.input.min_sizes_train=[96]",
    "dataset.input.min_size_test=96",
    "dataset.input.max_size_train=128",
    "dataset.input.max_size_test=128",
    "dataloader.batch_size=2",
    "dataloader.num_workers=0",
    "solver.max_iter=3",
    "solver.warmup_iters=1",
    "solver.steps=[2]",
    "model.roi_batch_size_per_image=16",
    "train.yardstick=false",
]


def voc_object(name: str, box: tuple[int, int, int, int], difficult: int = 0) -> str:
    """One ``<object>`` element of a VOC XML file (1-based inclusive pixel box)."""
    xmin, ymin, xmax, ymax = box
    return (
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
        f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax>"
        "</bndbox></object>"
    )


def write_voc_image(root: Path, name: str, width: int, height: int, objects: list[str]) -> None:
    """A green JPEG ``JPEGImages/<name>.jpg`` and its ``Annotations/<name>.xml``."""
    Image.new("RGB", (width, height), (0, 255, 0)).save(root / "JPEGImages" / f"{name}.jpg")
    xml = (
        f"<annotation><filename>{name}.jpg</filename><size><width>{width}</width>"
        f"<height>{height}</height><depth>3</depth></size>{''.join(objects)}</annotation>"
    )
    (root / "Annotations" / f"{name}.xml").write_text(xml)


def first_k_sampler(self, matched_idxs):
    """Deterministic stand-in for ``BalancedPositiveNegativeSampler.__call__``: the first
    ``min(batch * fraction, #pos)`` positives and enough of the first negatives."""
    pos_masks, neg_masks = [], []
    for labels in matched_idxs:
        pos = torch.where(labels >= 1)[0]
        neg = torch.where(labels == 0)[0]
        num_pos = min(int(self.batch_size_per_image * self.positive_fraction), pos.numel())
        num_neg = min(self.batch_size_per_image - num_pos, neg.numel())
        pos_mask = torch.zeros_like(labels, dtype=torch.uint8)
        neg_mask = torch.zeros_like(labels, dtype=torch.uint8)
        pos_mask[pos[:num_pos]] = 1
        neg_mask[neg[:num_neg]] = 1
        pos_masks.append(pos_mask)
        neg_masks.append(neg_mask)
    return pos_masks, neg_masks
