"""``train(cfg)``: build everything from a composed config, train, checkpoint, evaluate.

Runs as one process (``python tools/train.py``) or as one rank of a torchrun job (see
:mod:`detector.engine.distributed` and ``docs/training.md``). ``dataloader.batch_size`` is the
total batch over all ranks.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from detector.config_checks import check_config
from detector.data.base import require_boxes
from detector.data.loader import build_train_loader
from detector.engine import rng
from detector.engine.amp import MixedPrecision
from detector.engine.build import (
    build_dataset,
    build_model,
    prepare_dataset,
    resolve_device,
    resolve_output_dir,
)
from detector.engine.checkpoint import (
    FINAL_NAME,
    Checkpointer,
    last_good_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_model_weights,
    remove_stale_temporaries,
)
from detector.engine.cli import UserError
from detector.engine.distributed import (
    DistributedContext,
    barrier,
    broadcast_from_main,
    cleanup_distributed,
    init_distributed,
    launch_context,
    unwrap,
    wrap_ddp,
)
from detector.engine.hooks import (
    BestCheckpointer,
    HookBase,
    IterationTimer,
    PeriodicCheckpointer,
    PeriodicEvaluation,
)
from detector.engine.optim import build_param_groups, scale_solver
from detector.engine.schedule import WarmupSchedule
from detector.engine.trainer import Trainer
from detector.engine.validation import validate
from detector.engine.writers import PeriodicLogger, ProgressBar, TensorBoardWriter
from detector.modeling.meta_arch import FasterRCNN
from detector.modeling.poolers import use_gather_pooling
from detector.utils.yardstick import DESCRIPTION as YARDSTICK
from detector.utils.yardstick import in_yardsticks, measure_yardstick

logger = logging.getLogger(__name__)


class FinalEvaluationError(UserError):
    """Training finished and ``model_final.pth`` was written, but the final evaluation failed."""


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """``cfg.solver.optimizer`` (a ``_partial_``) over the trainable parameters, grouped by
    weight decay (``solver.weight_decay_norm`` / ``solver.weight_decay_bias``; null: the
    optimizer's ``weight_decay``)."""
    s = cfg.solver
    if float(s.optimizer.lr) <= 0:
        raise ValueError(f"solver.optimizer.lr must be positive, got {s.optimizer.lr}")
    groups = build_param_groups(
        model,
        weight_decay=float(s.optimizer.get("weight_decay", 0.0)),
        weight_decay_norm=s.get("weight_decay_norm"),
        weight_decay_bias=s.get("weight_decay_bias"),
    )
    return instantiate(s.optimizer)(params=groups)


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


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train the configured detector and return the final metrics (empty if evaluation is
    disabled). In a torchrun job every rank calls this; rank 0 logs and writes files."""
    check_config(cfg)
    ctx = launch_context()
    device = resolve_device(str(cfg.device), ctx.local_rank if ctx.is_distributed else None)
    created = init_distributed(ctx, device)
    try:
        result = _train(cfg, ctx, device)
        if created:
            # every rank leaves the group together: a rank that tears gloo down while another
            # is still in the final evaluation could abort at exit ("terminate called without
            # an active exception", SIGABRT) after a successful run
            barrier()
        return result
    finally:
        if created:
            cleanup_distributed()


def _train(cfg: DictConfig, ctx: DistributedContext, device: torch.device) -> dict[str, Any]:
    if not ctx.is_main:
        logging.getLogger("detector").setLevel(logging.WARNING)
    cfg = with_scaled_solver(cfg)
    output_dir = Path(broadcast_from_main(str(resolve_output_dir(cfg)) if ctx.is_main else None))
    resume = find_resume_checkpoint(cfg.train.get("resume", False), output_dir)
    rng.seed_everything(int(cfg.seed) + ctx.rank)
    if ctx.is_main:
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        remove_stale_temporaries(output_dir)
        prepare_dataset(cfg)  # first on rank 0 alone: no two processes write the dataset
    barrier()
    if not ctx.is_main:
        prepare_dataset(cfg)
    state = load_checkpoint(resume) if resume is not None else None
    splits = build_splits(cfg)
    trainer = build_trainer(cfg, ctx, device, output_dir, state, splits)
    if state is not None:
        restore_training_state(trainer, state, cfg, ctx, source=resume)
    yardstick = measure_yardstick(repeats=5) if cfg.train.get("yardstick", True) else None
    if yardstick is not None:
        logger.info(
            "yardstick: %.3f s (%s); this run's times divided by it compare across machines",
            yardstick,
            YARDSTICK,
        )
    start = time.perf_counter()
    logger.info(
        "training %s for %d iterations (from %d) on %d process(es) in %s",
        type(unwrap(trainer.model)).__name__,
        trainer.max_iter,
        trainer.iter,
        ctx.world_size,
        output_dir,
    )
    try:
        metrics = trainer.train()
    except FloatingPointError as err:
        last = last_good_checkpoint(output_dir)
        raise FloatingPointError(
            f"{err} The last good checkpoint is {last or 'none (none was written yet)'} "
            "(every tensor finite); it was not overwritten."
        ) from err
    except Exception as err:
        final = output_dir / FINAL_NAME
        if trainer.iter < trainer.max_iter or not final.is_file():
            raise
        raise FinalEvaluationError(
            f"training finished and the model is saved in {final}, but the final evaluation "
            f"failed: {type(err).__name__}: {err}. Fix the cause, then evaluate the saved "
            f"model with: python tools/eval.py checkpoint={output_dir}"
        ) from err
    seconds = time.perf_counter() - start
    if yardstick is not None:
        logger.info(
            "training and final evaluation took %.0f s = %.0f yardstick steps",
            seconds,
            in_yardsticks(seconds, yardstick),
        )
    if metrics and "AP" in metrics:
        summary = {k: metrics[k] for k in ("AP", "AP50", "AP75") if k in metrics}
        logger.info("final metrics: %s", json.dumps(summary))
    return metrics


def build_splits(cfg: DictConfig) -> dict[str, Any]:
    """Every split the run will use, built (and so checked: split file, annotations, image
    headers, class names) before the first iteration: ``train``, which must keep at least one
    box, and ``val`` when an evaluation will run."""
    splits = {"train": build_dataset(cfg, "train")}
    require_boxes(splits["train"], "dataset.train")
    if cfg.eval.enabled:
        splits["val"] = build_dataset(cfg, "val")
    logger.info("splits checked: %s", ", ".join(f"{k} {len(v)} images" for k, v in splits.items()))
    return splits


def build_trainer(
    cfg: DictConfig,
    ctx: DistributedContext,
    device: torch.device,
    output_dir: Path,
    state: dict[str, Any] | None,
    splits: dict[str, Any],
) -> Trainer:
    """Model (DDP-wrapped when distributed), optimizer, schedule, this rank's data stream
    from the resumed iteration (``state``; not loaded here), hooks and precision."""
    train_set = splits["train"]
    model = build_model(cfg, device)
    if state is None and cfg.model.get("init_checkpoint"):
        ckpt = load_checkpoint(cfg.model.init_checkpoint)
        load_model_weights(model, ckpt["model"], source=str(cfg.model.init_checkpoint))
    if cfg.train.get("channels_last", False):
        # NHWC weights (and so activations): about 1.27x faster R50-FPN steps on CPU; RoIAlign
        # on channels-last maps as one weighted gather, forward and backward
        model = model.to(memory_format=torch.channels_last)
        logger.info("channels-last training: %d RoIAlign poolers gather", use_gather_pooling(model))
    start_iter = int(state["iteration"]) if state is not None else 0
    extra = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "class_names": list(train_set.class_names),
        "data": data_identity(cfg),
    }
    optimizer = build_optimizer(cfg, model)
    return Trainer(
        model=wrap_ddp(model, device),
        optimizer=optimizer,
        scheduler=build_scheduler(cfg, optimizer),
        data=iter(build_rank_loader(cfg, train_set, ctx, start_iter)),
        max_iter=int(cfg.solver.max_iter),
        device=device,
        hooks=build_hooks(cfg, ctx, model, device, output_dir, extra, splits.get("val")),
        start_iter=start_iter,
        clip_grad_norm=cfg.train.get("clip_grad_norm"),
        precision=MixedPrecision(
            enabled=bool(cfg.train.get("amp", False)),
            dtype=str(cfg.train.get("amp_dtype", "bfloat16")),
            device=device,
        ),
    )


def with_scaled_solver(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the linear LR scaling rule applied to ``cfg.solver`` for the total batch
    ``dataloader.batch_size`` (see :func:`~detector.engine.optim.scale_solver`)."""
    batch_size = int(cfg.dataloader.batch_size)
    solver = scale_solver(cfg.solver, batch_size)
    if solver is cfg.solver:
        return cfg
    logger.info(
        "linear scaling rule: solver.reference_batch_size %s -> batch %d: lr %g, max_iter %d, "
        "steps %s",
        cfg.solver.reference_batch_size,
        batch_size,
        solver.optimizer.lr,
        solver.max_iter,
        list(solver.steps),
    )
    cfg = cfg.copy()
    cfg.solver = solver
    return cfg


def data_identity(cfg: DictConfig) -> dict[str, Any]:
    """What determines the training stream; a resumed run must match it to be exact."""
    return {
        "seed": int(cfg.seed),
        "batch_size": int(cfg.dataloader.batch_size),
        "aspect_ratio_grouping": bool(cfg.dataloader.aspect_ratio_grouping),
    }


def build_rank_loader(cfg: DictConfig, dataset: Any, ctx: DistributedContext, start: int) -> Any:
    """This rank's share of the training stream from global batch ``start`` on."""
    total = int(cfg.dataloader.batch_size)
    if total % ctx.world_size != 0:
        raise ValueError(
            f"dataloader.batch_size={total} (the total batch) is not divisible by the "
            f"{ctx.world_size} processes"
        )
    return build_train_loader(
        dataset,
        batch_size=total // ctx.world_size,
        num_workers=int(cfg.dataloader.num_workers),
        seed=int(cfg.seed),
        aspect_ratio_grouping=bool(cfg.dataloader.aspect_ratio_grouping),
        num_shards=ctx.world_size,
        shard=ctx.rank,
        start=start,
    )


def build_hooks(
    cfg: DictConfig,
    ctx: DistributedContext,
    model: FasterRCNN,
    device: torch.device,
    output_dir: Path,
    extra: dict[str, Any],
    val_set: Any = None,
) -> list[HookBase]:
    """Timer, checkpointing, evaluation (all ranks), then the writers (rank 0).

    The checkpointer comes before the evaluation, so ``model_final.pth`` is on disk before the
    final evaluation runs (and whatever happens to it)."""
    t = cfg.train
    max_iter = int(cfg.solver.max_iter)
    checkpointer = Checkpointer(
        output_dir=output_dir, extra=extra, device=device, is_main=ctx.is_main
    )

    def evaluate(iteration: int) -> dict[str, Any]:
        out = output_dir if iteration >= max_iter else output_dir / "eval" / f"{iteration:07d}"
        return validate(cfg, model, device, out, dataset=val_set)

    hooks: list[HookBase] = [
        IterationTimer(images_per_step=int(cfg.dataloader.batch_size)),
        PeriodicCheckpointer(
            checkpointer=checkpointer,
            period=int(t.checkpoint_period),
            keep_last=int(t.get("keep_last", 0)),
        ),
    ]
    if cfg.eval.enabled:
        hooks.append(PeriodicEvaluation(evaluate=evaluate, period=int(t.get("eval_period", 0))))
    if cfg.eval.enabled and int(t.get("eval_period", 0)) > 0 and t.get("best_metric"):
        hooks.append(BestCheckpointer(checkpointer=checkpointer, metric=f"val/{t.best_metric}"))
    if ctx.is_main:
        hooks += build_writers(cfg, output_dir)
    return hooks


def build_writers(cfg: DictConfig, output_dir: Path) -> list[HookBase]:
    """Log lines (console + ``metrics.jsonl``), TensorBoard (if enabled and installed), bar."""
    period = int(cfg.train.log_period)
    writers: list[HookBase] = [PeriodicLogger(period=period, path=output_dir / "metrics.jsonl")]
    if cfg.train.get("tensorboard", False):
        try:
            writers.append(TensorBoardWriter(log_dir=output_dir / "tensorboard", period=period))
        except ImportError as err:
            logger.warning("%s; continuing without TensorBoard", err)
    writers.append(ProgressBar())
    return writers


def find_resume_checkpoint(resume: Any, output_dir: Path) -> Path | None:
    """``train.resume``: false/null -> None; true -> the latest checkpoint of ``output_dir``
    (None, with a log line, when there is none yet: a fresh start); a path -> that file."""
    if resume is None or resume is False or str(resume).lower() == "false":
        return None
    if resume is True or str(resume).lower() == "true":
        found = latest_checkpoint(output_dir)
        if found is None:
            logger.info(
                "train.resume=true: no checkpoint in %s yet, starting from scratch", output_dir
            )
        return found
    path = Path(str(resume)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"train.resume={str(resume)!r}: no such checkpoint file")
    return path


def restore_training_state(
    trainer: Trainer,
    state: dict[str, Any],
    cfg: DictConfig,
    ctx: DistributedContext,
    *,
    source: Path | None,
) -> None:
    """Load model, optimizer, scheduler, scaler, iteration, hook states and this rank's RNG
    states; warn where the resumed run cannot be an exact continuation."""
    if state.get("data") not in (None, data_identity(cfg)):
        logger.warning(
            "resuming from %s with another data stream (%s, was %s): not an exact continuation",
            source,
            data_identity(cfg),
            state["data"],
        )
    changes = trainer.load_state_dict(state)
    if changes:
        logger.info(
            "resuming with the configured solver settings, not the checkpoint's: %s",
            "; ".join(changes),
        )
    saved_rng = state.get("rng") or []
    if len(saved_rng) == ctx.world_size:
        rng.restore_rng_state(saved_rng[ctx.rank], trainer.device)
    else:
        logger.warning(
            "checkpoint %s holds RNG states of %d process(es), this job has %d: RNG not restored",
            source,
            len(saved_rng),
            ctx.world_size,
        )
    logger.info("resumed from %s at iteration %d", source, trainer.iter)
