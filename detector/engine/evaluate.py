"""``evaluate(cfg, override_keys)``: rebuild a trained detector from its run and score it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from detector.config_checks import check_config
from detector.engine.checkpoint import load_checkpoint, load_model_weights, resolve_checkpoint_path
from detector.engine.train import (
    build_model,
    evaluate_on_val,
    prepare_dataset,
    resolve_device,
    resolve_output_dir,
)

logger = logging.getLogger(__name__)
#: Keys of eval.yaml itself; never copied into the trained run's config.
EVAL_KEYS = ("checkpoint", "results")


def override_key(override: str) -> str | None:
    """The config key an override string sets (``dataset=x`` -> ``dataset``); None for
    deletions and Hydra's own keys."""
    key = override.split("=", 1)[0].lstrip("+")
    if key.startswith("~") or key.startswith("hydra"):
        return None
    return key.split("@", 1)[0]


def merge_run_config(
    saved: DictConfig, composed: DictConfig, overrides: Sequence[str]
) -> DictConfig:
    """The saved run config with the user's overrides taken from the freshly composed config.

    A group override (``dataset=bccd``) replaces the whole node; a dotted override replaces one
    value. Everything else keeps the values the model was trained with.
    """
    merged = OmegaConf.create(OmegaConf.to_container(saved, resolve=False))
    for ov in overrides:
        key = override_key(ov)
        if key is None or key.split(".")[0] in EVAL_KEYS:
            continue
        value = OmegaConf.select(composed, key, throw_on_missing=False)
        OmegaConf.update(merged, key, value, merge=False, force_add=True)
    for key in ("eval", "device", "output_dir", "dataloader"):
        if key not in merged and key in composed:
            merged[key] = composed[key]
    return merged


def load_run_config(checkpoint: Path, ckpt: dict[str, Any]) -> DictConfig:
    """``config.yaml`` next to the checkpoint, else the config stored inside it."""
    beside = checkpoint.parent / "config.yaml"
    if beside.is_file():
        return OmegaConf.load(beside)
    if "config" in ckpt:
        return OmegaConf.create(ckpt["config"])
    raise ValueError(
        f"checkpoint {checkpoint} has no saved config (no config.yaml beside it and none inside); "
        "cannot rebuild the model"
    )


def evaluate(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint`` on the val split; ``overrides`` are the user's command-line
    overrides (their values are read from ``cfg``)."""
    if not cfg.get("checkpoint"):
        raise ValueError("give checkpoint=<run dir or .pth file>")
    path = resolve_checkpoint_path(str(cfg.checkpoint))
    ckpt = load_checkpoint(path)
    run_cfg = merge_run_config(load_run_config(path, ckpt), cfg, overrides)
    if cfg.get("output_dir") is None:
        try:
            out = resolve_output_dir(cfg)
        except ValueError:
            out = path.parent / "eval"
        run_cfg.output_dir = str(out)
    check_config(run_cfg)
    device = resolve_device(str(run_cfg.device))
    prepare_dataset(run_cfg)
    model = build_model(run_cfg, device)
    load_model_weights(model, ckpt["model"], source=str(path))
    out_dir = Path(str(run_cfg.output_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval_config.yaml").write_text(OmegaConf.to_yaml(run_cfg, resolve=True))
    logger.info("evaluating %s on %s", path, run_cfg.dataset.get("name"))
    return evaluate_on_val(run_cfg, model, device, out_dir)
