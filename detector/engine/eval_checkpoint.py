"""``evaluate(cfg, overrides)``: rebuild a trained detector from its run and score it
(``python tools/eval.py checkpoint=...``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from detector.config_checks import check_config
from detector.engine.build import (
    build_trained_model,
    open_run,
    prepare_dataset,
    resolve_device,
    resolve_output_dir,
)
from detector.engine.validation import validate

logger = logging.getLogger(__name__)


def evaluate(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint`` on the val split; ``overrides`` are the user's command-line
    overrides (their values are read from ``cfg`` and applied to the run's saved config)."""
    if not cfg.get("checkpoint"):
        raise ValueError("give checkpoint=<run dir or .pth file>")
    run = open_run(str(cfg.checkpoint), composed=cfg, overrides=overrides)
    run_cfg = run.config
    if cfg.get("output_dir") is None:
        try:
            out = resolve_output_dir(cfg)
        except ValueError:
            out = run.path.parent / "eval"
        run_cfg.output_dir = str(out)
    check_config(run_cfg)
    device = resolve_device(str(run_cfg.device))
    prepare_dataset(run_cfg)
    model = build_trained_model(run, device)
    out_dir = Path(str(run_cfg.output_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval_config.yaml").write_text(OmegaConf.to_yaml(run_cfg, resolve=True))
    logger.info("evaluating %s on %s", run.path, run_cfg.dataset.get("name"))
    return validate(run_cfg, model, device, out_dir)
