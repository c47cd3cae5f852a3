"""Shared helpers for tests: composing configs from the real config tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

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
