"""The GPU kit's Python parts (``tools/gpu_check.sh``, issue 14 item 5).

One subcommand per part, each a separate process under its own time limit in the script:

- ``env --out DIR``: the machine (GPUs, torch, CUDA, cuDNN, TF32 flags) to ``DIR/env.json``;
  prints the number of visible GPUs (the script decides on torchrun with it).
- ``data --work W``: writes the generated synthetic dataset the trainings read (before their
  clocks start, and once, not by several torchrun ranks at the same time).
- ``train --model r101_c4 --dtype bf16 --iters 40``: a short training through the real
  ``detector.engine.train.train(cfg)`` (config composed from ``configs/train.yaml``), eval off;
  images/s from ``metrics.jsonl``'s per-step ``train/time`` after ``--warmup`` steps, peak GPU
  memory (``torch.cuda.max_memory_allocated``), and the gradient scaler's final state from
  ``model_final.pth``. Under ``torchrun`` every rank trains; rank 0 writes the result, with its
  own peak memory. ``--batch`` is per process.
- ``infer --model r50_fpn --size 800``: inference images/s of our detector against torchvision's
  twin holding the same weights (:class:`~detector.benchmarks.speed.SpeedBenchmark`'s inference
  part), in float32 and under float16 autocast, after checking that both give the same
  detections (in float32).
- ``summary DIR``: reads the script's ``DIR/parts.tsv`` (part, exit status, start, end, limit,
  note), each part's ``DIR/<part>.json`` or ``.log``, and writes ``DIR/gpu_check.json`` and
  ``DIR/gpu_check.md`` (a markdown table: part, status, time, key numbers).

The models start from random weights (nothing is downloaded on the GPU machine) with the
speed benchmark's random frozen-BatchNorm statistics and affine parameters
(:func:`~detector.benchmarks.twin.randomize_weights`: scale 0.5-1, variance 0.5-1.5). As built,
random frozen BatchNorm is the identity, and a random ResNet-101 trunk then reaches activations
of about 9e4 at 128 px, beyond float16's 65504 (its RPN then proposes nothing): a float16 run
would stop at its first non-finite loss. With the randomised statistics the R101-C4 activations
stay below about 100 (measured at 600 px; ``tests/test_gpu_paths.py`` checks them).

``--dry-run`` runs each part as a tiny CPU version (2 iterations at 96 px, the model's RoI batch
16, float32 or CPU bfloat16 autocast; float16 autocast is CUDA-only and becomes float32) so that
the code paths run on a machine without a GPU (``tests/test_gpu_paths.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

import detector  # noqa: F401  (registers the config resolvers)
from detector.benchmarks.job import compose_job_config, prepare_data
from detector.benchmarks.speed import SpeedBenchmark
from detector.benchmarks.twin import randomize_weights
from detector.engine.build import build_model, resolve_device
from detector.engine.checkpoint import FINAL_NAME, load_checkpoint
from detector.engine.distributed import DistributedContext, launch_context
from detector.engine.train import train
from detector.utils.tables import format_table

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
#: ``--dtype`` -> ``train.amp_dtype`` (``None``: ``train.amp=false``, float32)
TRAIN_DTYPES: dict[str, str | None] = {"bf16": "bfloat16", "fp16": "float16", "fp32": None}
#: ``--dtypes`` of ``infer``: float32, or the speed task's autocast (float16 on CUDA)
INFER_DTYPES = ("fp32", "fp16")
GIB = 2**30
#: the 3x3 convolutions of the GPU's convolution peak (batch, channels, size), as in flops.py
GPU_PEAK_SHAPES = ((8, 256, 128), (256, 512, 14))
#: what ``--dry-run`` changes: a tiny CPU version of each part
DRY_TRAIN: dict[str, Any] = {
    "device": "cpu",
    "size": 96,
    "iters": 2,
    "warmup": 1,
    "batch": 2,
    "workers": 0,
    "num_train": 4,
    "roi_batch": 16,
}


def model_config(model: str) -> str:
    """``configs/model`` option of a kit model name: ``r101_c4`` -> ``faster_rcnn_r101_c4``."""
    name = model if model.startswith("faster_rcnn_") else f"faster_rcnn_{model}"
    if not (CONFIG_DIR / "model" / f"{name}.yaml").is_file():
        known = sorted(p.stem.removeprefix("faster_rcnn_") for p in CONFIG_DIR.glob("model/f*"))
        raise ValueError(f"unknown model {model!r}; known: {', '.join(known)}")
    return name


def max_size_for(size: int) -> int:
    """The longer-side cap that goes with shorter side ``size`` (800 -> 1333, COCO's pair)."""
    return round(size * 1333 / 800)


def quoted(path: Path | str) -> str:
    """A path as a quoted Hydra override value (characters such as ``=`` stay literal)."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


# --------------------------------------------------------------------------- weights
def initial_checkpoint(cfg: DictConfig, device: torch.device, path: Path) -> Path:
    """``path``: the weights the kit's trainings start from, written once (atomically, so that
    torchrun ranks writing the same file at once are safe): ``cfg.model.net`` seeded with
    ``cfg.seed``, its frozen BatchNorm given the speed benchmark's random statistics and affine
    parameters (:func:`~detector.benchmarks.twin.randomize_weights`; see the module doc)."""
    if path.is_file():
        return path
    torch.manual_seed(int(cfg.seed))
    model = build_model(cfg, device)
    randomize_weights(model, seed=int(cfg.seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save({"model": {k: v.cpu() for k, v in model.state_dict().items()}}, tmp)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- train
@dataclass(frozen=True)
class TrainSpec:
    """One kit training: ``model`` (``configs/model/faster_rcnn_<model>.yaml``), ``dtype``
    (:data:`TRAIN_DTYPES`), ``iters`` steps of ``batch`` images per process at shorter side
    ``size`` (synthetic images of that size, ``num_train`` of them), the first ``warmup`` steps
    left out of images/s; ``roi_batch``: RoIs per image of the head (``None``: the model's)."""

    model: str = "r101_c4"
    dtype: str = "bf16"
    iters: int = 40
    warmup: int = 10
    batch: int = 4
    size: int = 640
    workers: int = 8
    num_train: int = 64
    lr: float = 0.005
    roi_batch: int | None = None
    device: str = "cuda"

    def __post_init__(self) -> None:
        if self.dtype not in TRAIN_DTYPES:
            raise ValueError(f"dtype {self.dtype!r}; allowed: {', '.join(TRAIN_DTYPES)}")
        if not 0 <= self.warmup < self.iters:
            raise ValueError(f"need 0 <= warmup < iters, got {self.warmup} and {self.iters}")

    def dry(self) -> TrainSpec:
        """The tiny CPU version of this training (``--dry-run``)."""
        return dataclasses.replace(self, **DRY_TRAIN)

    @property
    def amp_dtype(self) -> str | None:
        """``train.amp_dtype`` this spec runs with (``None``: float32). float16 autocast is
        CUDA-only (``MixedPrecision`` refuses it on the CPU): a CPU run uses float32."""
        dtype = TRAIN_DTYPES[self.dtype]
        if dtype == "float16" and torch.device(self.device).type == "cpu":
            return None
        return dtype


def train_overrides(
    spec: TrainSpec, *, work_dir: Path, run_dir: Path, world_size: int = 1
) -> list[str]:
    """Overrides of ``configs/train.yaml`` for ``spec``: the synthetic dataset generated at
    ``spec.size`` under ``work_dir/datasets``, a flat learning rate warm-up over all steps (no
    decay), evaluation, TensorBoard, periodic checkpoints and the start-up yardstick off, one
    ``metrics.jsonl`` line per step, initial weights ``work_dir/init/<model>_<size>.pth``."""
    amp = spec.amp_dtype
    data_root = work_dir / "datasets" / f"synthetic_{spec.size}"
    init = work_dir / "init" / f"{spec.model}_{spec.size}.pth"
    overrides = [
        f"model={model_config(spec.model)}",
        "dataset=synthetic",
        f"dataset.root={quoted(data_root)}",
        f"dataset.generator.num_train={spec.num_train}",
        "dataset.generator.num_val=2",
        f"dataset.generator.image_size={spec.size}",
        f"dataset.input.min_sizes_train=[{spec.size}]",
        f"dataset.input.max_size_train={max_size_for(spec.size)}",
        f"dataset.input.min_size_test={spec.size}",
        f"dataset.input.max_size_test={max_size_for(spec.size)}",
        f"device={spec.device}",
        f"train.amp={'true' if amp else 'false'}",
        f"train.amp_dtype={amp or 'bfloat16'}",
        f"dataloader.batch_size={spec.batch * world_size}",
        f"dataloader.num_workers={spec.workers}",
        f"solver.max_iter={spec.iters}",
        f"solver.warmup_iters={spec.iters}",
        "solver.steps=[]",
        f"solver.optimizer.lr={spec.lr}",
        "eval.enabled=false",
        "train.log_period=1",
        "train.tensorboard=false",
        "train.checkpoint_period=0",
        "train.resume=false",
        "++train.yardstick=false",
        f"++model.init_checkpoint={quoted(init)}",
        f"output_dir={quoted(run_dir)}",
    ]
    if spec.roi_batch is not None:
        overrides.append(f"model.roi_batch_size_per_image={spec.roi_batch}")
    return overrides


def step_times(metrics_file: Path) -> list[float]:
    """``train/time`` of every step in ``metrics.jsonl`` (``train.log_period=1``), in order."""
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    return [float(r["train/time"]) for r in sorted(records, key=lambda r: r["iteration"])]


def throughput(times: Sequence[float], *, images_per_step: int, warmup: int) -> dict[str, Any]:
    """Images/s over the steps after ``warmup`` (total images / total seconds), the median
    step and the first step's time.

    A step's time is its wall time (``IterationTimer``); on CUDA the loss check at the end of
    the forward synchronises, so a step's time holds the previous step's queued backward: over
    the timed steps that shift cancels up to one step."""
    timed = list(times[warmup:])
    if not timed:
        raise ValueError(f"no step after {warmup} warm-up steps (have {len(times)})")
    return {
        "images_per_s": images_per_step * len(timed) / sum(timed),
        "median_step_s": statistics.median(timed),
        "first_step_s": times[0],
        "timed_steps": len(timed),
    }


def grad_scaler_state(checkpoint: Path) -> dict[str, Any]:
    """Whether the run's ``GradScaler`` was enabled (its state is empty when disabled) and its
    final loss scale."""
    state = load_checkpoint(checkpoint).get("grad_scaler") or {}
    scale = state.get("scale")
    return {"enabled": bool(state), "scale": None if scale is None else float(scale)}


def _cuda_device(device: torch.device) -> torch.device | None:
    return device if device.type == "cuda" else None


def run_train(
    spec: TrainSpec, *, out_dir: Path, work_dir: Path, name: str | None = None
) -> dict[str, Any]:
    """Train as ``spec`` says through ``train(cfg)`` and write ``out_dir/<name>.json`` (rank 0;
    other ranks return ``{}``). The run's folder ``work_dir/runs/<name>`` is emptied first; its
    checkpoints are deleted afterwards (a kit run has no use for them)."""
    ctx = launch_context()
    name = name or default_train_name(spec, ctx)
    run_dir = work_dir / "runs" / name
    if ctx.is_main and run_dir.exists():
        shutil.rmtree(run_dir)
    cfg = compose_job_config(
        "train",
        train_overrides(spec, work_dir=work_dir, run_dir=run_dir, world_size=ctx.world_size),
    )
    device = resolve_device(spec.device, ctx.local_rank if ctx.is_distributed else None)
    initial_checkpoint(cfg, device, Path(str(cfg.model.init_checkpoint)))
    cuda = _cuda_device(device)
    if cuda is not None:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(cuda)
    start = time.perf_counter()
    train(cfg)
    wall_s = time.perf_counter() - start
    peak = _peak_memory(cuda)
    if not ctx.is_main:
        return {}
    total_batch = spec.batch * ctx.world_size
    result = {
        "part": "train",
        "name": name,
        "spec": dataclasses.asdict(spec),
        "model_config": model_config(spec.model),
        "amp_dtype": spec.amp_dtype or "float32",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(cuda) if cuda is not None else platform.machine(),
        "world_size": ctx.world_size,
        "total_batch": total_batch,
        "wall_s": wall_s,
        **throughput(
            step_times(run_dir / "metrics.jsonl"), images_per_step=total_batch, warmup=spec.warmup
        ),
        **peak,
        "grad_scaler": grad_scaler_state(run_dir / FINAL_NAME),
        "overrides": train_overrides(
            spec, work_dir=work_dir, run_dir=run_dir, world_size=ctx.world_size
        ),
    }
    for checkpoint in run_dir.glob("*.pth"):
        checkpoint.unlink()
    write_json(out_dir / f"{name}.json", result)
    print(train_line(result), flush=True)
    return result


def default_train_name(spec: TrainSpec, ctx: DistributedContext) -> str:
    ddp = f"_ddp{ctx.world_size}" if ctx.is_distributed else ""
    return f"train_{spec.model}_{spec.dtype}{ddp}"


def _peak_memory(cuda: torch.device | None) -> dict[str, float | None]:
    if cuda is None:
        return {"peak_allocated_gib": None, "peak_reserved_gib": None}
    return {
        "peak_allocated_gib": torch.cuda.max_memory_allocated(cuda) / GIB,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(cuda) / GIB,
    }


def train_line(r: Mapping[str, Any]) -> str:
    """One line of key numbers of a ``train`` result."""
    s = r["spec"]
    peak = r.get("peak_allocated_gib")
    scaler = r["grad_scaler"]
    return (
        f"{r['model_config']} {r['amp_dtype']}, {r['world_size']} process(es) x batch "
        f"{s['batch']} at {s['size']} px: {r['images_per_s']:.1f} images/s, step "
        f"{1000 * r['median_step_s']:.0f} ms (median of {r['timed_steps']}), peak "
        + ("n/a (CPU)" if peak is None else f"{peak:.2f} GiB")
        + (f", loss scale {scaler['scale']:g}" if scaler["enabled"] else ", no loss scaling")
    )


# --------------------------------------------------------------------------- data
def run_data(spec: TrainSpec, *, work_dir: Path) -> Path:
    """Write the synthetic dataset ``spec``'s trainings read (a no-op when it is there)."""
    run_dir = work_dir / "runs" / "data"
    cfg = compose_job_config("train", train_overrides(spec, work_dir=work_dir, run_dir=run_dir))
    start = time.perf_counter()
    prepare_data(cfg)  # generated when its dataset is first built
    root = Path(str(cfg.dataset.root))
    print(f"dataset {root} ready in {time.perf_counter() - start:.1f} s", flush=True)
    return root


# --------------------------------------------------------------------------- infer
@dataclass(frozen=True)
class InferSpec:
    """Kit inference: ``model`` at shorter side ``size``, ``batch`` images per call, ``warmup``
    untimed and ``repeats`` timed interleaved calls per contender, in each of ``dtypes``
    (:data:`INFER_DTYPES`); ``proposals``: RPN proposals per image at test time (``None``: the
    model's, 300 for C4 as in the paper, 1000 for FPN)."""

    model: str = "r50_fpn"
    size: int = 800
    batch: int = 4
    warmup: int = 3
    repeats: int = 20
    dtypes: tuple[str, ...] = INFER_DTYPES
    conv_peak: bool = True
    proposals: int | None = None
    device: str = "cuda"

    def dry(self) -> InferSpec:
        """The tiny CPU version (``--dry-run``): 96 px, one image, 50 proposals."""
        return dataclasses.replace(
            self, size=96, batch=1, warmup=1, repeats=2, proposals=50, device="cpu"
        )


def speed_task(spec: InferSpec, *, amp: bool, conv_peak: bool) -> SpeedBenchmark:
    """The speed task's inference part for ``spec`` (training, data loading, COCO evaluation
    and the yardstick off; the CPU-only levers off on a GPU, where they do nothing)."""
    overrides = [
        f"model={model_config(spec.model)}",
        f"image_size={spec.size}",
        f"max_size={max_size_for(spec.size)}",
    ]
    if spec.proposals is not None:
        overrides.append(f"model.rpn_post_nms_top_n.testing={spec.proposals}")
    cfg = compose_job_config("benchmark", overrides)
    cpu = torch.device(spec.device).type == "cpu"
    shapes = ((1, 32, 16),) if cpu else GPU_PEAK_SHAPES
    return SpeedBenchmark(
        net=cfg.model.net,
        device=spec.device,
        amp=amp,
        inference={
            "image_size": spec.size,
            "max_size": max_size_for(spec.size),
            "batch_size": spec.batch,
            "warmup": spec.warmup,
            "repeats": spec.repeats,
            "fuse_relu": cpu,
            "parallel_pool": cpu,
            "gather_pool": cpu,
        },
        conv_peak={"shapes": shapes, "warmup": 3, "repeats": 20} if conv_peak else None,
    )


def infer_row(dtype: str, result: Mapping[str, Any]) -> dict[str, Any]:
    """Key numbers of one speed-task result: images/s of both, the paired ratio, whether the
    float32 detections agree, our share of the convolution peak (measured in float32, so only
    in the float32 row)."""
    inf = result["inference"]
    ours, ref = inf["throughput"]["ours"], inf["throughput"]["torchvision"]
    shares = [r for r in result.get("share_of_peak", []) if r["contender"] == "ours"]
    return {
        "dtype": dtype,
        "label": result["settings"]["label"],
        "image_shape": inf["image_shape"],
        "batch": inf["batch_size"],
        "ours_images_per_s": ours["per_s"],
        "torchvision_images_per_s": ref["per_s"],
        "ratio": result["ratios"][0]["ratio"],
        "identical": inf["identical"],
        "detections": inf["detections"],
        "ours_gflops_per_s": shares[0]["gflops_per_s"] if shares else None,
        "ours_share_of_peak": shares[0]["share_of_peak"] if shares else None,
    }


def run_infer(spec: InferSpec, *, out_dir: Path, name: str | None = None) -> dict[str, Any]:
    """Our detector against torchvision's in each of ``spec.dtypes``; writes
    ``out_dir/<name>.json`` with the rows and the speed task's full results."""
    name = name or f"infer_{spec.model}"
    rows, results = [], {}
    # the speed task's autocast: float16 on CUDA, bfloat16 on the CPU (a dry run)
    autocast = "fp16" if torch.device(spec.device).type == "cuda" else "bf16"
    for i, dtype in enumerate(spec.dtypes):
        if dtype not in INFER_DTYPES:
            raise ValueError(f"dtype {dtype!r}; allowed: {', '.join(INFER_DTYPES)}")
        task = speed_task(spec, amp=dtype != "fp32", conv_peak=spec.conv_peak and i == 0)
        result = task.run()
        ran = "fp32" if dtype == "fp32" else autocast
        print(f"\n== {name} {ran} ==\n{result['table']}", flush=True)
        results[ran] = result
        rows.append(infer_row(ran, result))
    out = {
        "part": "infer",
        "name": name,
        "spec": dataclasses.asdict(spec),
        "device_name": _device_name(spec.device),
        "rows": rows,
        "results": results,
    }
    write_json(out_dir / f"{name}.json", out)
    for row in rows:
        print(infer_line(row), flush=True)
    return out


def infer_line(row: Mapping[str, Any]) -> str:
    shape = "x".join(map(str, row["image_shape"][1:]))
    return (
        f"{row['label']} {row['dtype']} {shape} batch {row['batch']}: ours "
        f"{row['ours_images_per_s']:.1f} vs torchvision {row['torchvision_images_per_s']:.1f} "
        f"images/s ({row['ratio']:.2f}x), detections "
        + ("identical" if row["identical"] else "DIFFER")
    )


def _device_name(device: str) -> str:
    d = torch.device(device)
    return torch.cuda.get_device_name(d) if d.type == "cuda" else platform.machine()


# --------------------------------------------------------------------------- env
def environment() -> dict[str, Any]:
    """Where the kit ran: Python, torch, CUDA, cuDNN, the GPUs, TF32 and bfloat16 flags."""
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(
                {
                    "name": p.name,
                    "memory_gib": p.total_memory / GIB,
                    "capability": f"{p.major}.{p.minor}",
                    "multiprocessors": p.multi_processor_count,
                }
            )
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpus": gpus,
        "bf16_supported": torch.cuda.is_bf16_supported() if cuda else None,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }


# --------------------------------------------------------------------------- summary
@dataclass(frozen=True)
class PartRecord:
    """One line of the script's ``parts.tsv``: a part's name, exit status (``None``: not
    run), start and end (epoch seconds), time limit and a note."""

    name: str
    rc: int | None
    start: float | None
    end: float | None
    limit_s: float | None
    note: str = ""

    @property
    def seconds(self) -> float | None:
        return None if self.start is None or self.end is None else self.end - self.start

    @property
    def status(self) -> str:
        if self.rc is None:
            return "skipped"
        if self.rc == 0:
            return "ok"
        return "timeout" if self.rc in (124, 137) else "failed"


def _number(text: str) -> float | None:
    return float(text) if text not in ("", "-") else None


def read_parts(path: Path) -> list[PartRecord]:
    """The records of ``parts.tsv`` (tab-separated: name, rc or ``-``, start, end, limit,
    note)."""
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        name, rc, start, end, limit, *note = line.split("\t")
        records.append(
            PartRecord(
                name=name,
                rc=None if rc in ("", "-") else int(rc),
                start=_number(start),
                end=_number(end),
                limit_s=_number(limit),
                note="\t".join(note).strip(),
            )
        )
    return records


def last_line(log: Path, *, width: int = 160) -> str:
    """The last non-empty line of ``log`` (progress-bar carriage returns split lines)."""
    if not log.is_file():
        return ""
    lines = [ln.strip() for ln in log.read_text(errors="replace").replace("\r", "\n").splitlines()]
    lines = [ln for ln in lines if ln]
    return lines[-1][:width] if lines else ""


def pytest_counts(log: Path) -> str:
    """pytest's final counts line (``3 passed, 1 skipped in 9.1s``) from ``log``."""
    if not log.is_file():
        return ""
    words = ("passed", "failed", "skipped", "error", "deselected", "no tests ran")
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if any(w in line for w in words) and " in " in line:
            return line.strip("= ").strip()
    return ""


def key_numbers(record: PartRecord, out_dir: Path) -> str:
    """The part's key numbers: from ``<name>.json`` (train, infer), pytest's counts, the
    note, the environment (env), or the last line of its log (e.g. the error)."""
    result_file = out_dir / f"{record.name}.json"
    if record.status == "ok" and result_file.is_file():
        result = json.loads(result_file.read_text())
        if result.get("part") == "train":
            return train_line(result)
        if result.get("part") == "infer":
            return "; ".join(infer_line(r) for r in result["rows"])
    if record.name.startswith("cuda_tests"):
        counts = pytest_counts(out_dir / f"{record.name}.log")
        if counts:
            return counts
    if record.note:
        return record.note
    if record.name == "env" and record.status == "ok":
        return _environment_line(_read_json(out_dir / "env.json"))
    return last_line(out_dir / f"{record.name}.log")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def summarize(out_dir: Path) -> dict[str, Any]:
    """Collect the kit run in ``out_dir`` into ``gpu_check.json`` and ``gpu_check.md``."""
    records = read_parts(out_dir / "parts.tsv")
    parts = []
    for r in records:
        parts.append(
            {
                "part": r.name,
                "status": r.status,
                "rc": r.rc,
                "seconds": r.seconds,
                "limit_s": r.limit_s,
                "key_numbers": key_numbers(r, out_dir),
                "result": _read_json(out_dir / f"{r.name}.json"),
            }
        )
    starts = [r.start for r in records if r.start is not None]
    ends = [r.end for r in records if r.end is not None]
    summary = {
        "environment": _read_json(out_dir / "env.json"),
        "ok": all(p["status"] in ("ok", "skipped") for p in parts),
        "failed": [p["part"] for p in parts if p["status"] in ("failed", "timeout")],
        "total_s": max(ends) - min(starts) if starts and ends else None,
        "parts": parts,
    }
    write_json(out_dir / "gpu_check.json", summary)
    (out_dir / "gpu_check.md").write_text(format_summary(summary))
    return summary


def _environment_line(env: Mapping[str, Any] | None) -> str:
    if not env:
        return "environment: unknown (no env.json)"
    gpus = env.get("gpus") or []
    names = ", ".join(f"{g['name']} ({g['memory_gib']:.0f} GiB)" for g in gpus) or "no GPU"
    return (
        f"{len(gpus)} GPU(s): {names}; torch {env.get('torch')}, CUDA {env.get('cuda')}, "
        f"cuDNN {env.get('cudnn')}, {env.get('cpu_count')} CPUs; TF32: cuDNN "
        f"{env.get('cudnn_allow_tf32')}, matmul {env.get('matmul_allow_tf32')}"
    )


def format_summary(summary: Mapping[str, Any]) -> str:
    """The markdown report: the environment, then one row per part."""
    rows = []
    for p in summary["parts"]:
        time_s = "" if p["seconds"] is None else f"{p['seconds']:.0f}"
        limit = "" if p["limit_s"] is None else f" / {p['limit_s']:.0f}"
        rows.append([p["part"], p["status"], time_s + limit, p["key_numbers"].replace("|", "/")])
    total = summary["total_s"]
    verdict = "all parts ok" if summary["ok"] else f"FAILED: {', '.join(summary['failed'])}"
    return "\n".join(
        [
            "# GPU kit (tools/gpu_check.sh)",
            "",
            _environment_line(summary["environment"]),
            "",
            f"{verdict}; total {'n/a' if total is None else f'{total:.0f} s'}",
            "",
            format_table(["part", "status", "time s / limit", "key numbers"], rows, align="llrl"),
            "",
        ]
    )


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, Path | torch.device | torch.dtype):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m detector.benchmarks.gpu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    env = sub.add_parser("env", help="write OUT/env.json, print the number of GPUs")
    env.add_argument("--out", type=Path, required=True)

    d = TrainSpec()
    tr = sub.add_parser("train", help="a short training through train(cfg)")
    data = sub.add_parser("data", help="write the trainings' synthetic dataset")
    for p in (tr, data):
        p.add_argument("--size", type=int, default=d.size, help="image (shorter) side, px")
        p.add_argument("--num-train", type=int, default=d.num_train)
        p.add_argument("--work", type=Path, default=Path("outputs/gpu_check_work"))
        p.add_argument("--dry-run", action="store_true", help="tiny CPU version")
    tr.add_argument("--model", default=d.model, help="r101_c4, r50_fpn, ... (configs/model)")
    tr.add_argument("--dtype", default=d.dtype, choices=list(TRAIN_DTYPES))
    tr.add_argument("--iters", type=int, default=d.iters)
    tr.add_argument("--warmup", type=int, default=d.warmup, help="steps left out of images/s")
    tr.add_argument("--batch", type=int, default=d.batch, help="images per process")
    tr.add_argument("--workers", type=int, default=d.workers, help="loader workers per process")
    tr.add_argument("--lr", type=float, default=d.lr)
    tr.add_argument("--roi-batch", type=int, default=None, help="RoIs per image (model's)")
    tr.add_argument("--out", type=Path, required=True)
    tr.add_argument("--name", default=None, help="result name (train_<model>_<dtype>)")

    i = InferSpec()
    inf = sub.add_parser("infer", help="inference images/s against torchvision's twin")
    inf.add_argument("--model", default=i.model)
    inf.add_argument("--size", type=int, default=i.size)
    inf.add_argument("--batch", type=int, default=i.batch)
    inf.add_argument("--warmup", type=int, default=i.warmup)
    inf.add_argument("--repeats", type=int, default=i.repeats)
    inf.add_argument("--dtypes", default=",".join(i.dtypes), help="comma-separated: fp32,fp16")
    inf.add_argument("--proposals", type=int, default=None, help="per image (model's)")
    inf.add_argument("--no-conv-peak", action="store_true")
    inf.add_argument("--out", type=Path, required=True)
    inf.add_argument("--name", default=None)
    inf.add_argument("--dry-run", action="store_true", help="tiny CPU version")

    summ = sub.add_parser("summary", help="gpu_check.json and gpu_check.md of a kit run")
    summ.add_argument("out", type=Path)
    return parser


def _train_spec(args: argparse.Namespace) -> TrainSpec:
    fields = {"size": args.size, "num_train": args.num_train}
    if args.command == "train":
        fields.update(
            model=args.model,
            dtype=args.dtype,
            iters=args.iters,
            warmup=args.warmup,
            batch=args.batch,
            workers=args.workers,
            lr=args.lr,
            roi_batch=args.roi_batch,
        )
    spec = TrainSpec(**fields)
    return spec.dry() if args.dry_run else spec


def main(argv: Sequence[str] | None = None) -> int:
    """The kit's command line (see the module doc); returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s", force=True
    )
    if args.command == "env":
        env = environment()
        write_json(args.out / "env.json", env)
        print(json.dumps(env), file=sys.stderr)
        print(len(env["gpus"]))
    elif args.command == "data":
        run_data(_train_spec(args), work_dir=args.work)
    elif args.command == "train":
        run_train(_train_spec(args), out_dir=args.out, work_dir=args.work, name=args.name)
    elif args.command == "infer":
        spec = InferSpec(
            model=args.model,
            size=args.size,
            batch=args.batch,
            warmup=args.warmup,
            repeats=args.repeats,
            dtypes=tuple(d.strip() for d in args.dtypes.split(",") if d.strip()),
            conv_peak=not args.no_conv_peak,
            proposals=args.proposals,
        )
        run_infer(spec.dry() if args.dry_run else spec, out_dir=args.out, name=args.name)
    else:
        summary = summarize(args.out)
        print((args.out / "gpu_check.md").read_text(), flush=True)
        return 0 if summary["ok"] else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
