"""Benchmark: the whole default training job (``python tools/train.py``) in yardstick steps.

:class:`JobBenchmark` (the ``job`` task of ``configs/benchmark.yaml``) measures the yardstick
(:mod:`detector.utils.yardstick`), then runs the training job composed from
``configs/train.yaml`` with the given overrides, in this process, in two timed parts:

1. training: ``detector.engine.train.train(cfg)`` with ``eval.enabled=false`` (model and loader
   construction, every iteration, the final checkpoint);
2. the final evaluation the job runs after its last iteration: the final checkpoint loaded into
   a fresh model, ``detector.engine.validation.validate`` on the val split (the job's own
   ``eval.*`` settings).

Together that is the job's work, the checkpoint load aside. Writing the dataset on first use
(``dataset.prepare``, or building both splits) runs before the clock and is reported on its own
row. The table gives both wall times, their total in yardstick steps against the issue's target
(800), and the final AP / AP50 against theirs (35 / 65 on the synthetic val split).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import detector  # noqa: F401  (registers the config resolvers)
from detector.engine.build import build_dataset, build_model, prepare_dataset, resolve_device
from detector.engine.checkpoint import FINAL_NAME, load_checkpoint, load_model_weights
from detector.engine.train import train
from detector.engine.validation import validate
from detector.utils import cpu_memory
from detector.utils.tables import format_table
from detector.utils.yardstick import in_yardsticks, yardstick_line, yardstick_report

logger = logging.getLogger(__name__)

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")
#: the issue's targets for the default job: total yardstick steps (at most), AP and AP50 (at least)
DEFAULT_TARGETS: dict[str, float | None] = {"yardsticks": 800.0, "AP": 0.35, "AP50": 0.65}


def compose_job_config(config_name: str, overrides: Sequence[str]) -> DictConfig:
    """``configs/<config_name>.yaml`` composed with ``overrides``, inside a Hydra app (whose
    config path is ``configs/``, as ``tools/benchmark.py``'s) or outside one."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name, overrides=list(overrides))
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def _run_dir(output_dir: str | None) -> Path:
    """``<output_dir>/job``; without ``output_dir``, in the Hydra run directory."""
    if not output_dir:
        if not HydraConfig.initialized():
            raise ValueError("output_dir is null and no Hydra run directory exists; set it")
        output_dir = HydraConfig.get().runtime.output_dir
    return Path(output_dir) / "job"


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


class JobBenchmark:
    """The default training job's wall time in yardstick steps, and its final AP (see the
    module doc; a Hydra ``_target_`` of ``configs/benchmark.yaml``).

    Args:
        overrides: overrides of ``configs/<config_name>.yaml`` (e.g. ``["solver.max_iter=20"]``
            for a shorter job); ``output_dir`` is set to ``run_dir``.
        config_name: the training config (``train``).
        output_dir: the job writes its run in ``<output_dir>/job`` (``None``: the Hydra run
            directory's).
        yardstick: ``repeats`` and ``warmup`` of the yardstick, measured just before the job
            and again just after it (the total uses the one before).
        targets: ``yardsticks`` (at most), ``AP`` and ``AP50`` (at least, fractions); ``None``
            entries are reported only.
    """

    name = "job"

    def __init__(
        self,
        *,
        overrides: Sequence[str] = (),
        config_name: str = "train",
        output_dir: str | None = None,
        yardstick: Mapping[str, int] | None = None,
        targets: Mapping[str, float | None] | None = None,
    ) -> None:
        self.overrides = [str(o) for o in overrides]
        self.config_name = config_name
        self.output_dir = output_dir
        self.yardstick = dict(yardstick or {})
        self.targets = {**DEFAULT_TARGETS, **(targets or {})}

    def run(self) -> dict[str, Any]:
        """Yardstick, job (training, then final evaluation), yardstick again; with a table."""
        run_dir = _run_dir(self.output_dir)
        cfg = compose_job_config(self.config_name, [*self.overrides, f"output_dir={run_dir}"])
        logger.info("job: yardstick")
        before = yardstick_report(**self.yardstick)
        _, prepare_s = _timed(prepare_data, cfg)
        train_cfg = cfg.copy()
        OmegaConf.update(train_cfg, "eval.enabled", False)
        logger.info("job: training (%d iterations) in %s", int(cfg.solver.max_iter), run_dir)
        _, training_s = _timed(train, train_cfg)
        logger.info("job: final evaluation")
        metrics, evaluation_s = _timed(final_evaluation, cfg, run_dir)
        after = yardstick_report(**self.yardstick)
        result = {
            "name": self.name,
            "settings": {
                "config_name": self.config_name,
                "overrides": self.overrides,
                "run_dir": str(run_dir),
                "max_iter": int(cfg.solver.max_iter),
                "batch_size": int(cfg.dataloader.batch_size),
                "cpu_allocator": cpu_memory.current_mode(),
                "targets": self.targets,
            },
            "yardstick": before,
            "yardstick_after": after,
            "seconds": {
                "prepare_dataset": prepare_s,
                "training": training_s,
                "evaluation": evaluation_s,
                "total": training_s + evaluation_s,
            },
            "metrics": {k: metrics.get(k) for k in ("AP", "AP50", "AP75")},
        }
        result["yardsticks"] = {
            k: in_yardsticks(v, before["median_s"]) for k, v in result["seconds"].items()
        }
        result["yardsticks_after"] = {
            k: in_yardsticks(v, after["median_s"]) for k, v in result["seconds"].items()
        }
        result["table"] = format_result(result)
        return result


def prepare_data(cfg: DictConfig) -> None:
    """Write the dataset if it is not there yet (the synthetic one is generated on first use)."""
    prepare_dataset(cfg)
    for split in ("train", "val"):
        build_dataset(cfg, split)


def final_evaluation(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """The job's final evaluation: ``run_dir``'s final checkpoint on the val split."""
    device = resolve_device(str(cfg.device))
    model = build_model(cfg, device)
    path = run_dir / FINAL_NAME
    load_model_weights(model, load_checkpoint(path)["model"], source=str(path))
    return validate(cfg, model, device, run_dir)


def _target(value: float | None, op: str, scale: float = 1.0) -> str:
    return "" if value is None else f"{op} {value * scale:.0f}"


def _met(ok: bool | None) -> str:
    return "" if ok is None else ("yes" if ok else "NO")


def format_result(result: Mapping[str, Any]) -> str:
    """The readable table of :meth:`JobBenchmark.run`'s result."""
    s, sec, ys = result["settings"], result["seconds"], result["yardsticks"]
    ys_after = result["yardsticks_after"]
    t = s["targets"]
    iters = max(s["max_iter"], 1)
    total_ok = None if t.get("yardsticks") is None else ys["total"] <= t["yardsticks"]
    names = {
        "prepare_dataset": "data preparation (before the clock)",
        "training": f"training ({s['max_iter']} iterations of batch {s['batch_size']})",
        "evaluation": "final evaluation",
        "total": "total: training + final evaluation",
    }
    cells = [
        [name, f"{sec[k]:.1f}", f"{ys[k]:.1f}", f"{ys_after[k]:.1f}", "", ""]
        for k, name in names.items()
    ]
    per_iter = [sec["training"] / iters, ys["training"] / iters, ys_after["training"] / iters]
    cells.insert(2, ["  per iteration", *(f"{v:.1f}" for v in per_iter), "", ""])
    cells[-1][4:] = [_target(t.get("yardsticks"), "<="), _met(total_ok)]
    headers = ["part", "wall s", "yardsticks", "(after)", "target", "met"]
    table = format_table(headers, cells)
    m = result["metrics"]
    metric_rows = []
    for name in ("AP", "AP50", "AP75"):
        value, target = m.get(name), t.get(name)
        ok = None if value is None or target is None else value >= target
        shown = "n/a" if value is None else f"{100 * value:.1f}"
        metric_rows.append([name, shown, _target(target, ">=", 100), _met(ok)])
    after = result["yardstick_after"]["median_s"]
    lines = [
        yardstick_line(result["yardstick"]),
        f"(measured again after the job: {after:.3f} s, column '(after)'; the target is judged "
        "on the one before)",
        f"job: configs/{s['config_name']}.yaml " + " ".join(s["overrides"]),
        table,
        format_table(["final metric (val, %)", "value", "target", "met"], metric_rows),
    ]
    return "\n".join(lines)
