"""Build the module used at test time from the ``test`` and ``ensemble`` config groups.

Order of composition (each step optional)::

    members   = [model] + ensemble.checkpoints           (loaded with their saved run configs)
    staged    = test.per_model(model=m) for each member  (e.g. multiscale_paper)
    ensemble.fuse == proposals:  test.wrapper(model=ensemble.combiner(members=staged))
    ensemble.fuse == detections: ensemble.combiner(members=[test.wrapper(model=m) for m in staged])

With one member there is no combiner: ``test.wrapper(model=test.per_model(model=model))``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from detector.inference.ensemble import load_member
from detector.modeling.fuse import optimize_for_inference

logger = logging.getLogger(__name__)
FUSE_MODES = ("proposals", "detections")
_DEFAULT_COMBINER = {"_target_": "detector.inference.ensemble.ProposalEnsemble"}


def _wrap(node: Any, model: nn.Module) -> nn.Module:
    return model if node is None else instantiate(node, model=model, _convert_="all")


def ensemble_members(cfg: DictConfig, model: nn.Module) -> list[nn.Module]:
    """The models of ``cfg.ensemble.checkpoints`` (besides ``model``), on ``model``'s device.

    A listed checkpoint that is the evaluated ``cfg.checkpoint`` itself is skipped."""
    ens = cfg.get("ensemble") or {}
    paths = list(ens.get("checkpoints") or [])
    if not paths:
        return []
    own = cfg.get("checkpoint")
    own = Path(str(own)).resolve() if own else None
    device = next(model.parameters(), torch.zeros(0)).device
    members = []
    for p in paths:
        if own is not None and Path(str(p)).resolve() == own:
            logger.warning("ensemble.checkpoints lists the evaluated checkpoint %s; skipped", p)
            continue
        members.append(load_member(p, device=device, num_classes=model.num_classes))
    return members


def build_test_model(cfg: DictConfig, model: nn.Module) -> nn.Module:
    """``model`` itself, or the test-time tricks of ``cfg.test`` / ``cfg.ensemble`` around it;
    with ``eval.optimize_model`` each member is first replaced by its
    :func:`~detector.modeling.fuse.optimize_for_inference` copy."""
    test_cfg = cfg.get("test") or {}
    members = [model, *ensemble_members(cfg, model)]
    if (cfg.get("eval") or {}).get("optimize_model", False):
        # an eval-mode copy per member; the trained model itself is left as it is
        members = [optimize_for_inference(m) for m in members]
    staged = [_wrap(test_cfg.get("per_model"), m) for m in members]
    if len(staged) == 1:
        return _wrap(test_cfg.get("wrapper"), staged[0])
    ens = cfg.ensemble
    fuse = str(ens.get("fuse", "proposals"))
    combiner = ens.get("combiner") or _DEFAULT_COMBINER
    logger.info("ensemble of %d models, fused at the %s", len(staged), fuse)
    if fuse == "proposals":
        return _wrap(
            test_cfg.get("wrapper"), instantiate(combiner, members=staged, _convert_="all")
        )
    if fuse == "detections":
        wrapped = [_wrap(test_cfg.get("wrapper"), m) for m in staged]
        return instantiate(combiner, members=wrapped, _convert_="all")
    raise ValueError(f"unknown ensemble.fuse {fuse!r}; allowed: {', '.join(FUSE_MODES)}")
