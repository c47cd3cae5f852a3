"""Build the module used at test time from the ``test`` config group."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn


def build_test_model(cfg: DictConfig, model: nn.Module) -> nn.Module:
    """``model`` itself, or ``cfg.test.wrapper`` instantiated around it (``model=model``)."""
    test_cfg = cfg.get("test")
    if test_cfg is None or test_cfg.get("wrapper") is None:
        return model
    return instantiate(test_cfg.wrapper, model=model, _convert_="all")
