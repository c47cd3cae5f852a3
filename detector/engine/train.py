"""``train(cfg)``: build everything from a composed config, train, checkpoint, evaluate."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from detector.data.loader import build_test_loader, build_train_loader
from detector.engine.checkpoint import load_checkpoint, load_model_weights
from detector.engine.hooks import FinalEvaluation, PeriodicCheckpointer, ProgressBar
from detector.engine.inference import evaluate_detector
from detector.engine.schedule import WarmupSchedule
from detector.engine.trainer import Trainer
from detector.inference.build import build_test_model
from detector.modeling.meta_arch import FasterRCNN

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_output_dir(cfg: DictConfig) -> Path:
    """``cfg.output_dir`` or, inside a Hydra app, the Hydra run directory."""
    if cfg.get("output_dir"):
        out = Path(str(cfg.output_dir))
    else:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            raise ValueError("output_dir is null and no Hydra run directory exists; set output_dir")
        out = Path(HydraConfig.get().runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use device=cpu")
    return device


def prepare_dataset(cfg: DictConfig) -> None:
    """Run the dataset's ``prepare`` step (e.g. writing the synthetic dataset) if it has one."""
    if cfg.dataset.get("prepare") is not None:
        instantiate(cfg.dataset.prepare)


def build_dataset(cfg: DictConfig, split: str) -> Any:
    if split not in cfg.dataset or cfg.dataset[split] is None:
        raise ValueError(f"dataset {cfg.dataset.get('name')!r} has no {split!r} split configured")
    dataset = instantiate(cfg.dataset[split], _convert_="all")
    expected = int(cfg.model.num_classes)
    if len(dataset.class_names) != expected:
        raise ValueError(
            f"dataset {cfg.dataset.get('name')!r} ({split}) has {len(dataset.class_names)} "
            f"classes {dataset.class_names} but model.num_classes is {expected}"
        )
    return dataset


def build_model(cfg: DictConfig, device: torch.device) -> FasterRCNN:
    model = instantiate(cfg.model.net)
    return model.to(device)


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if float(cfg.solver.optimizer.lr) <= 0:
        raise ValueError(f"solver.optimizer.lr must be positive, got {cfg.solver.optimizer.lr}")
    params = [p for p in model.parameters() if p.requires_grad]
    return instantiate(cfg.solver.optimizer)(params=params)


def build_scheduler(
    cfg: DictConfig, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LambdaLR:
    s = cfg.solver
    schedule = WarmupSchedule(
        max_iter=int(s.max_iter),
        name=str(s.get("schedule", "multistep")),
        steps=tuple(int(x) for x in s.get("steps", ())),
        gamma=float(s.get("gamma", 0.1)),
        warmup_iters=int(s.get("warmup_iters", 0)),
        warmup_factor=float(s.get("warmup_factor", 0.001)),
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def evaluate_on_val(
    cfg: DictConfig, model: torch.nn.Module, device: torch.device, output_dir: Path | None
) -> dict[str, Any]:
    dataset = build_dataset(cfg, "val")
    loader = build_test_loader(dataset, batch_size=1, num_workers=int(cfg.dataloader.num_workers))
    return evaluate_detector(
        build_test_model(cfg, model),
        dataset,
        loader,
        device=device,
        output_dir=output_dir,
        engine=str(cfg.eval.engine),
    )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train the configured detector and return the final COCO metrics (empty if disabled)."""
    device = resolve_device(str(cfg.device))
    output_dir = resolve_output_dir(cfg)
    seed_everything(int(cfg.seed))
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    prepare_dataset(cfg)
    train_set = build_dataset(cfg, "train")
    model = build_model(cfg, device)
    if cfg.model.get("init_checkpoint"):
        ckpt = load_checkpoint(cfg.model.init_checkpoint)
        load_model_weights(model, ckpt["model"], source=str(cfg.model.init_checkpoint))
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    loader = build_train_loader(
        train_set,
        batch_size=int(cfg.dataloader.batch_size),
        num_workers=int(cfg.dataloader.num_workers),
        seed=int(cfg.seed),
        aspect_ratio_grouping=bool(cfg.dataloader.aspect_ratio_grouping),
    )
    extra = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "class_names": list(train_set.class_names),
    }
    hooks = [
        ProgressBar(log_period=int(cfg.train.log_period)),
        PeriodicCheckpointer(
            output_dir=output_dir, period=int(cfg.train.checkpoint_period), extra=extra
        ),
    ]
    if cfg.eval.enabled:
        hooks.append(
            FinalEvaluation(evaluate=lambda: evaluate_on_val(cfg, model, device, output_dir))
        )
    trainer = Trainer(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        data=iter(loader),
        max_iter=int(cfg.solver.max_iter),
        device=device,
        hooks=hooks,
        clip_grad_norm=cfg.train.get("clip_grad_norm"),
    )
    logger.info(
        "training %s for %d iterations in %s", type(model).__name__, trainer.max_iter, output_dir
    )
    metrics = trainer.train()
    if metrics:
        summary = {k: metrics[k] for k in ("AP", "AP50", "AP75") if k in metrics}
        logger.info("final metrics: %s", json.dumps(summary))
    return metrics
