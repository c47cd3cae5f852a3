"""Benchmark: our Faster R-CNN against torchvision's, side by side in one process.

:class:`SpeedBenchmark` (the ``speed`` task of ``configs/benchmark.yaml``) measures on the
current device, interleaving the contenders so that load from other processes hits both alike:

- inference images/s of our detector (as :func:`~detector.modeling.fuse.optimize_for_inference`
  returns it, under ``torch.inference_mode``) and of torchvision's ``FasterRCNN`` holding the
  same weights, settings and input size, after checking that both return the same detections;
- training iterations/s (forward + backward + SGD step) of the same pair, and the share of a
  step spent in the per-region head (``box_head`` forward + backward; res5 for C4 models);
- data-loading images/s of our training pipeline (:mod:`detector.benchmarks.data_speed`);
- COCO evaluation time of both engines (:class:`~detector.benchmarks.coco_eval.CocoEvalBenchmark`);

and reports medians and the ratio of each pair. To make the times readable on other machines it
first measures the yardstick (:mod:`detector.utils.yardstick`) and the convolution peak
(:mod:`detector.benchmarks.flops`): every time is also given in yardstick units, and every
timed model path (inference, training) its achieved GFLOP/s and share of that peak, from FLOPs
counted once per path on our model. The torchvision twin and the checks live in
:mod:`detector.benchmarks.twin`, the timing helpers in :mod:`detector.benchmarks.timing`.
"""

from __future__ import annotations

import copy
import logging
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from torch import Tensor, nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN

from detector.benchmarks.data_speed import time_data_loading
from detector.benchmarks.flops import achieved, count_flops, measure_conv_peak, peak_line
from detector.benchmarks.timing import Throughput, Timing, autocast, num_threads, time_interleaved
from detector.benchmarks.twin import (
    Targets,
    benchmark_images,
    benchmark_targets,
    calibrate_classifier,
    compare_detections,
    detections_match,
    randomize_weights,
    torchvision_twin,
)
from detector.modeling.fuse import optimize_for_inference
from detector.modeling.meta_arch import FasterRCNN
from detector.modeling.poolers import use_gather_pooling
from detector.utils import cpu_memory
from detector.utils.tables import format_table
from detector.utils.yardstick import in_yardsticks, yardstick_line, yardstick_report

logger = logging.getLogger(__name__)

OURS, TORCHVISION = "ours", "torchvision"


# --------------------------------------------------------------------------- comparisons
_ALL_OFF = dict.fromkeys(
    ("fold_bn", "channels_last", "fuse_relu", "parallel_pool", "gather_pool"), False
)
_FUSED = {**_ALL_OFF, "fold_bn": True, "channels_last": True, "fuse_relu": True}
#: extra inference contenders (``levers=true``): the optimisations added one at a time
LEVERS: dict[str, dict[str, bool]] = {
    "ours, unoptimised": _ALL_OFF,
    "ours, + BN folded": {**_ALL_OFF, "fold_bn": True},
    "ours, + channels-last": {**_ALL_OFF, "fold_bn": True, "channels_last": True},
    "ours, + ReLU fused": _FUSED,
    "ours, + RoIAlign on all threads": {**_FUSED, "parallel_pool": True},
}


def _inference_call(model: nn.Module, images: list[Tensor], timing: Timing) -> Callable[[], None]:
    def call() -> None:
        with torch.inference_mode(), autocast(timing.device, timing.amp):
            model(images)

    return call


def compare_inference(
    ours: FasterRCNN,
    twin: nn.Module,
    images: list[Tensor],
    timing: Timing,
    *,
    fold_bn: bool = True,
    channels_last: bool = True,
    fuse_relu: bool = True,
    parallel_pool: bool = True,
    gather_pool: bool = True,
    levers: bool = False,
) -> dict[str, Any]:
    """Detections (float32) and images/s of ``optimize_for_inference(ours)`` vs ``twin``.

    Returns ``detections`` (:func:`compare_detections` of ours against the twin) and
    ``throughput`` per contender (``ours``, ``torchvision`` and, with ``levers``, the
    :data:`LEVERS` variants), each a :meth:`Throughput.as_dict`.
    """
    twin.eval()
    models = {
        OURS: optimize_for_inference(
            ours,
            fold_bn=fold_bn,
            channels_last=channels_last,
            fuse_relu=fuse_relu,
            parallel_pool=parallel_pool,
            gather_pool=gather_pool,
        )
    }
    models[TORCHVISION] = twin
    if levers:
        models.update({name: optimize_for_inference(ours, **kw) for name, kw in LEVERS.items()})
    with torch.inference_mode():
        report = compare_detections(models[OURS](images), twin(images))
    fns = {name: _inference_call(m, images, timing) for name, m in models.items()}
    seconds = time_interleaved(
        fns, warmup=timing.warmup, repeats=timing.repeats, device=timing.device, desc="inference"
    )
    return {
        "detections": report,
        "throughput": {k: Throughput(s, len(images)).as_dict() for k, s in seconds.items()},
    }


def training_step(
    model: nn.Module, images: list[Tensor], targets: Targets, *, timing: Timing, lr: float
) -> Callable[[], dict[str, float]]:
    """One SGD step (momentum 0.9, weight decay 1e-4) on a fixed batch; returns the losses.

    The same function drives both detectors: loss dict -> sum -> backward -> step.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(
        timing.device.type, enabled=timing.amp and timing.device.type == "cuda"
    )

    def step() -> dict[str, float]:
        with autocast(timing.device, timing.amp):
            losses = model(images, targets)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        return {k: float(v.detach()) for k, v in losses.items()}

    return step


def _first_step_losses(
    steps: Mapping[str, Callable[[], dict[str, float]]], twin: nn.Module
) -> dict[str, float]:
    """Total loss of each contender's first step, each from the same RNG state.

    torchvision's training transform draws a random number per image to pick one of its
    ``min_size`` values; with a single value the pick is fixed, so that draw is skipped here
    (and only here) to keep both RNG streams, hence both RoI samples, aligned.
    """
    choose = twin.transform.min_size
    if len(choose) != 1:
        raise ValueError(f"expected one torchvision min_size, got {choose}")
    twin.transform.torch_choice = lambda sizes: sizes[0]
    try:
        losses = {}
        for name, step in steps.items():
            torch.manual_seed(0)
            losses[name] = sum(step().values())
    finally:
        del twin.transform.torch_choice
    return losses


def _head_input(model: FasterRCNN, images: list[Tensor], targets: Targets) -> Tensor:
    """A random tensor shaped like what ``box_head`` receives in a training step."""
    shapes: list[torch.Size] = []
    hook = model.roi_heads.box_head.register_forward_hook(
        lambda _m, args, _out: shapes.append(args[0].shape)
    )
    try:
        with torch.no_grad():
            model(images, targets)
    finally:
        hook.remove()
    needs_grad = any(p.requires_grad for p in model.backbone.parameters())
    return torch.randn(shapes[0], device=images[0].device, requires_grad=needs_grad)


def _head_call(head: nn.Module, x: Tensor, timing: Timing) -> Callable[[], None]:
    def call() -> None:
        with autocast(timing.device, timing.amp):
            y = head(x)
        y.float().sum().backward()

    return call


def compare_training(
    ours: FasterRCNN,
    twin: nn.Module,
    images: list[Tensor],
    targets: Targets,
    timing: Timing,
    *,
    lr: float = 1e-4,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Iterations/s of copies of ``ours`` and ``twin`` in training mode, and the share of our
    step spent in the per-region head. ``channels_last`` trains our copy with NHWC weights and
    gathering RoIAlign poolers (``train.channels_last`` of ``tools/train.py``); torchvision's
    runs as shipped.

    Returns ``losses`` (first step of each from the same RNG state: same weights and the same
    sampling draws give the same total loss when the two implement the same training),
    ``throughput`` per contender (iterations), and ``box_head`` (its forward + backward on a
    tensor of the shape it gets in the step, timed in the same interleaved rounds) with
    ``share`` = median head time / median step time and the ``input_shape``.
    """
    source = ours
    ours, twin = copy.deepcopy(ours).train(), copy.deepcopy(twin).train()
    steps = {
        OURS: training_step(ours, images, targets, timing=timing, lr=lr),
        TORCHVISION: training_step(twin, images, targets, timing=timing, lr=lr),
    }
    losses = _first_step_losses(steps, twin)  # the parity check: same layout, same numbers
    losses["abs_diff"] = abs(losses[OURS] - losses[TORCHVISION])
    if channels_last:
        # NHWC rounds differently; a near-tie in proposal NMS or top-k can then change the
        # sampled RoIs, so its first-step loss is reported, not required to match
        ours = copy.deepcopy(source).train().to(memory_format=torch.channels_last)
        use_gather_pooling(ours)  # as train.channels_last=true does
        steps[OURS] = training_step(ours, images, targets, timing=timing, lr=lr)
        nhwc = _first_step_losses({OURS: steps[OURS]}, twin)[OURS]
        losses["channels_last"] = nhwc
        losses["channels_last_abs_diff"] = abs(nhwc - losses[TORCHVISION])
    head_x = _head_input(ours, images, targets)
    fns: dict[str, Callable[[], object]] = dict(steps)
    fns["box_head"] = _head_call(ours.roi_heads.box_head, head_x, timing)
    seconds = time_interleaved(
        fns, warmup=timing.warmup, repeats=timing.repeats, device=timing.device, desc="training"
    )
    head = seconds.pop("box_head")
    return {
        "losses": losses,
        "throughput": {k: Throughput(s, 1).as_dict() for k, s in seconds.items()},
        "box_head": {
            "module": type(ours.roi_heads.box_head).__name__,
            "input_shape": list(head_x.shape),
            **Throughput(head, 1).as_dict(),
            "share": statistics.median(head) / statistics.median(seconds[OURS]),
        },
    }


def inference_flops(model: FasterRCNN, images: list[Tensor]) -> int:
    """FLOPs of one inference call of (a copy of) our plain model on ``images``.

    The optimised model does the same convolutions and products (BN folded into them, ReLU
    fused), but through oneDNN ops the counter does not see; the twin does the same arithmetic
    (same detections).
    """
    plain = copy.deepcopy(model).eval()
    with torch.inference_mode():
        return count_flops(lambda: plain(images))


def training_flops(model: FasterRCNN, images: list[Tensor], targets: Targets) -> int:
    """FLOPs of the forward and backward of one training step of (a copy of) our model."""
    copied = copy.deepcopy(model).train()

    def step() -> None:
        sum(copied(images, targets).values()).backward()

    with torch.random.fork_rng(devices=[]):
        return count_flops(step)


_RESNET_DEPTHS = {(2, False): 18, (6, False): 34, (6, True): 50, (23, True): 101, (36, True): 152}


def model_label(model: FasterRCNN) -> str:
    """``R50-FPN``, ``R18-C4``, ...: the trunk's depth (from res4's blocks) and the layout."""
    fpn = isinstance(model.backbone, BackboneWithFPN)
    trunk = model.backbone.body if fpn else model.backbone
    key = (len(trunk.layer3), hasattr(trunk.layer1[0], "conv3"))
    depth = _RESNET_DEPTHS.get(key, "?")
    return f"R{depth}-{'FPN' if fpn else 'C4'}"


def benchmark_model(
    net: Any, images: list[Tensor], *, seed: int, device: torch.device, weights: str | None = None
) -> FasterRCNN:
    """``net`` (a Hydra node) instantiated on ``device``: with the state dict in ``weights``, or
    seeded random weights (:func:`randomize_weights`) and a classifier calibrated on ``images``
    (:func:`calibrate_classifier`)."""
    torch.manual_seed(seed)
    model = instantiate(net).to(device)
    if weights:
        state = torch.load(weights, map_location=device, weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        model.load_state_dict(state, strict=True)
    else:
        randomize_weights(model, seed=seed)
        calibrate_classifier(model, images, seed=seed)
    return model


# --------------------------------------------------------------------------- the task
@dataclass(frozen=True)
class InferenceSettings:
    """Inference part: images of shorter side ``image_size`` (4:3, longer side capped at
    ``max_size``), ``batch_size`` per call; our model optimised with ``fold_bn``,
    ``channels_last``, ``fuse_relu``, ``parallel_pool`` and ``gather_pool``
    (:func:`~detector.modeling.fuse.optimize_for_inference`);
    ``levers`` also times the optimisations added one at a time (:data:`LEVERS`); detections
    count as identical within ``box_atol`` pixels and ``score_atol``."""

    image_size: int = 800
    max_size: int = 1333
    batch_size: int = 1
    warmup: int = 1
    repeats: int = 5
    fold_bn: bool = True
    channels_last: bool = True
    fuse_relu: bool = True
    parallel_pool: bool = True
    gather_pool: bool = True
    levers: bool = False
    box_atol: float = 0.01
    score_atol: float = 1e-4


@dataclass(frozen=True)
class TrainingSettings:
    """Training part: a fixed batch of ``batch_size`` images (as for inference) with
    ``boxes_per_image`` random ground-truth boxes; SGD with learning rate ``lr``; our model
    with NHWC weights when ``channels_last`` (``train.channels_last``)."""

    image_size: int = 800
    max_size: int = 1333
    batch_size: int = 2
    boxes_per_image: int = 7
    warmup: int = 1
    repeats: int = 3
    lr: float = 1e-4
    channels_last: bool = True


@dataclass(frozen=True)
class DataLoadingSettings:
    """Data part: ``dataset`` (a Hydra node of a training dataset with its transforms) loaded
    by ``num_workers`` workers in batches of ``batch_size``; ``repeats`` windows of ``batches``."""

    dataset: Any
    batch_size: int = 2
    num_workers: int = 2
    batches: int = 10
    repeats: int = 3
    warmup_batches: int = 2


#: the issue's targets for R50-FPN on a 2-core CPU (ours / reference, as rates)
DEFAULT_TARGETS: dict[str, float | None] = {"inference": 1.3, "training": 1.0, "data_loading": 3.0}


class SpeedBenchmark:
    """Our detector vs torchvision's (inference, training), data loading and COCO evaluation,
    in one run (a Hydra ``_target_`` of ``configs/benchmark.yaml``; see the module doc).

    Args:
        net: the model's Hydra node (``${model.net}``), instantiated here.
        weights: ``None``: seeded random weights (:func:`randomize_weights`,
            :func:`calibrate_classifier`); or a state dict file in our (= torchvision's, for
            FPN) layout, e.g. torchvision's ``fasterrcnn_resnet50_fpn`` COCO checkpoint with
            ``model.num_classes=90``.
        device: ``cpu`` or ``cuda[:N]``; ``amp``: time under autocast (float16 on CUDA,
            bfloat16 on CPU; detections are still checked in float32); ``threads``: torch CPU
            threads (``None``: torch's default).
        inference, training, data_loading: settings of each part (see :class:`InferenceSettings`,
            :class:`TrainingSettings`, :class:`DataLoadingSettings`); ``None`` skips the part.
        coco_eval: a Hydra node of :class:`~detector.benchmarks.coco_eval.CocoEvalBenchmark`,
            or ``None`` to skip it.
        yardstick: ``repeats`` and ``warmup`` of the yardstick measured first
            (:func:`~detector.utils.yardstick.yardstick_report`); ``None`` skips it.
        conv_peak: arguments of :func:`~detector.benchmarks.flops.measure_conv_peak` (on
            ``device``), measured after the yardstick; ``None`` skips it and the share of peak.
        label: the model's name in the tables; ``None``: :func:`model_label` (e.g. ``R50-FPN``).
        targets: the ratio each pair should reach (``inference``, ``training``,
            ``data_loading``; ``None``: reported only).
    """

    name = "speed"

    def __init__(
        self,
        *,
        net: Any,
        weights: str | None = None,
        device: str = "cpu",
        amp: bool = False,
        threads: int | None = None,
        seed: int = 0,
        inference: Mapping[str, Any] | None = None,
        training: Mapping[str, Any] | None = None,
        data_loading: Mapping[str, Any] | None = None,
        coco_eval: Any = None,
        yardstick: Mapping[str, int] | None = None,
        conv_peak: Mapping[str, Any] | None = None,
        label: str | None = None,
        targets: Mapping[str, float | None] | None = None,
    ) -> None:
        self.net = net
        self.weights = weights
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available here; use device=cpu")
        self.amp = amp
        self.threads = threads
        self.seed = seed
        self.inference = InferenceSettings(**inference) if inference is not None else None
        self.training = TrainingSettings(**training) if training is not None else None
        self.data_loading = DataLoadingSettings(**data_loading) if data_loading else None
        self.coco_eval = coco_eval
        self.yardstick = dict(yardstick) if yardstick is not None else None
        self.conv_peak = dict(conv_peak) if conv_peak is not None else None
        self.label = label
        self.targets = {**DEFAULT_TARGETS, **(targets or {})}

    def build_model(self, images: list[Tensor]) -> FasterRCNN:
        """Our detector with the configured or seeded random weights, on the device."""
        return benchmark_model(
            self.net, images, seed=self.seed, device=self.device, weights=self.weights
        )

    def run(self) -> dict[str, Any]:
        """Run the configured parts; results with a ``"table"`` (see :func:`format_result`)."""
        result: dict[str, Any] = {"name": self.name, "settings": self.settings()}
        with num_threads(self.threads):
            result["settings"]["threads"] = torch.get_num_threads()
            if self.yardstick is not None:
                logger.info("speed: yardstick")
                result["yardstick"] = yardstick_report(**self.yardstick)
            if self.conv_peak is not None:
                logger.info("speed: convolution peak")
                result["conv_peak"] = measure_conv_peak(device=self.device, **self.conv_peak)
            model = None
            if self.inference is not None:
                model, result["inference"] = self._run_inference(self.inference)
            if self.training is not None:
                result["training"] = self._run_training(self.training, model)
            if self.data_loading is not None:
                result["data_loading"] = self._run_data_loading(self.data_loading)
            parts = [result[k]["model"] for k in ("inference", "training") if k in result]
            result["settings"]["label"] = self.label or (parts[0] if parts else None)
            if self.coco_eval is not None:
                coco_eval = instantiate(self.coco_eval, yardstick=None)  # ours is measured
                result["coco_eval"] = _without_table(coco_eval.run())
        result["table"] = format_result(result)
        return result

    def settings(self) -> dict[str, Any]:
        parts = {"inference": self.inference, "training": self.training}
        return {
            "device": str(self.device),
            "cpu_allocator": cpu_memory.current_mode(),
            "amp": self.amp,
            "label": self.label,
            "targets": self.targets,
            "weights": self.weights or f"random (seed {self.seed})",
            **{k: (vars(v) if v is not None else None) for k, v in parts.items()},
            "data_loading": (
                None
                if self.data_loading is None
                else {k: v for k, v in vars(self.data_loading).items() if k != "dataset"}
            ),
        }

    def _images(self, image_size: int, max_size: int, batch_size: int) -> list[Tensor]:
        return benchmark_images(
            batch_size=batch_size,
            image_size=image_size,
            max_size=max_size,
            device=self.device,
            seed=self.seed,
        )

    def _run_inference(self, s: InferenceSettings) -> tuple[FasterRCNN, dict[str, Any]]:
        logger.info("speed: inference, ours vs torchvision (%s)", s)
        images = self._images(s.image_size, s.max_size, s.batch_size)
        model = self.build_model(images)
        twin = torchvision_twin(model, min_size=s.image_size, max_size=s.max_size)
        timing = Timing(self.device, warmup=s.warmup, repeats=s.repeats, amp=self.amp)
        out = compare_inference(
            model,
            twin,
            images,
            timing,
            fold_bn=s.fold_bn,
            channels_last=s.channels_last,
            fuse_relu=s.fuse_relu,
            parallel_pool=s.parallel_pool,
            gather_pool=s.gather_pool,
            levers=s.levers,
        )
        out["image_shape"] = list(images[0].shape)
        out["batch_size"] = s.batch_size
        out["identical"] = detections_match(
            out["detections"], box_atol=s.box_atol, score_atol=s.score_atol
        )
        out["twin_pooler"] = type(twin.roi_heads.box_roi_pool).__name__
        out["flops"] = inference_flops(model, images)
        out["model"] = model_label(model)
        return model, out

    def _run_training(self, s: TrainingSettings, model: FasterRCNN | None) -> dict[str, Any]:
        logger.info("speed: training, ours vs torchvision (%s)", s)
        images = self._images(s.image_size, s.max_size, s.batch_size)
        model = model if model is not None else self.build_model(images)
        twin = torchvision_twin(model, min_size=s.image_size, max_size=s.max_size)
        targets = benchmark_targets(
            images, num_classes=model.num_classes, boxes_per_image=s.boxes_per_image, seed=self.seed
        )
        timing = Timing(self.device, warmup=s.warmup, repeats=s.repeats, amp=self.amp)
        out = compare_training(
            model, twin, images, targets, timing, lr=s.lr, channels_last=s.channels_last
        )
        out["image_shape"] = list(images[0].shape)
        out["batch_size"] = s.batch_size
        out["flops"] = training_flops(model, images, targets)
        out["model"] = model_label(model)
        return out

    def _run_data_loading(self, s: DataLoadingSettings) -> dict[str, Any]:
        logger.info("speed: data loading (%d workers, batch %d)", s.num_workers, s.batch_size)
        dataset = instantiate(s.dataset, _convert_="all")
        return time_data_loading(
            dataset,
            batch_size=s.batch_size,
            num_workers=s.num_workers,
            batches=s.batches,
            repeats=s.repeats,
            warmup_batches=s.warmup_batches,
            seed=self.seed,
        )


def _without_table(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "table"}


# --------------------------------------------------------------------------- the table
def paired_ratio(ours_s: Sequence[float], reference_s: Sequence[float]) -> float:
    """Median over rounds of ``reference / ours`` seconds (>1: we are faster).

    :func:`~detector.benchmarks.timing.time_interleaved` times every contender once per round,
    so a round's two calls share that moment's machine load; the per-round ratio cancels load
    that drifts over the run, which a ratio of medians does not.
    """
    return statistics.median(r / o for o, r in zip(ours_s, reference_s, strict=True))


def _pair_row(what: str, part: Mapping[str, Any], target: float | None) -> dict[str, Any]:
    ours, ref = part["throughput"][OURS], part["throughput"][TORCHVISION]
    return {
        "what": what,
        "ours": ours["per_s"],
        "reference": ref["per_s"],
        "ratio": paired_ratio(ours["seconds"], ref["seconds"]),
        "target": target,
    }


def _shape(part: Mapping[str, Any]) -> str:
    return "x".join(map(str, part["image_shape"][1:]))


def ratio_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per pair: ``what``, ``ours`` and ``reference`` rates (medians), ``ratio`` (ours
    vs reference, >1: ours is faster; :func:`paired_ratio` for the timed pairs, the ratio of the
    medians otherwise), ``ratio_of_medians``, ``target`` (``settings.targets``, or ``None``) and,
    when the result has a yardstick, ``ours_yardsticks`` / ``reference_yardsticks``: seconds per
    item (image, iteration, evaluation) in yardstick units."""
    targets = {**DEFAULT_TARGETS, **result["settings"].get("targets", {})}
    label = result["settings"].get("label") or "ours"
    rows = []
    if "inference" in result:
        what = f"{label} inference images/s ({_shape(result['inference'])}), ours vs torchvision"
        rows.append(_pair_row(what, result["inference"], targets["inference"]))
    if "training" in result:
        tr = result["training"]
        what = (
            f"{label} training iterations/s (batch {tr['batch_size']}, {_shape(tr)}), "
            "ours vs torchvision"
        )
        rows.append(_pair_row(what, tr, targets["training"]))
    if "data_loading" in result and "training" in result:
        train_images = result["training"]["throughput"][OURS]["per_s"] * tr["batch_size"]
        what = "data-loading images/s vs our training images/s"
        data = result["data_loading"]["median_images_per_s"]
        rows.append(
            {
                "what": what,
                "ours": data,
                "reference": train_images,
                "target": targets["data_loading"],
            }
        )
    if "coco_eval" in result:
        med = result["coco_eval"]["median_seconds"]
        if {"faster_coco_eval", "pycocotools"} <= set(med):
            what = "COCO evaluations/s, faster_coco_eval vs pycocotools"
            ours, ref = 1 / med["faster_coco_eval"], 1 / med["pycocotools"]
            rows.append({"what": what, "ours": ours, "reference": ref, "target": None})
    yardstick_s = result.get("yardstick", {}).get("median_s")
    for row in rows:
        row["ratio_of_medians"] = row["ours"] / row["reference"]
        row.setdefault("ratio", row["ratio_of_medians"])
        if yardstick_s:
            row["ours_yardsticks"] = in_yardsticks(1 / row["ours"], yardstick_s)
            row["reference_yardsticks"] = in_yardsticks(1 / row["reference"], yardstick_s)
    return rows


def peak_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per timed model path and contender: ``path``, ``contender``, ``gflops`` per call,
    ``median_s``, ``yardsticks`` (``None`` without a yardstick), ``gflops_per_s`` and
    ``share_of_peak`` (a fraction; ``None`` without a measured peak)."""
    peak = result.get("conv_peak", {}).get("peak_gflops_per_s")
    yardstick_s = result.get("yardstick", {}).get("median_s")
    label = result["settings"].get("label") or "ours"
    rows = []
    for part in ("inference", "training"):
        if part not in result or "flops" not in result[part]:
            continue
        p = result[part]
        path = f"{label} {part}, batch {p['batch_size']} of {_shape(p)}"
        for contender in (OURS, TORCHVISION):
            median_s = p["throughput"][contender]["median_s"]
            rows.append(
                {
                    "path": path,
                    "contender": contender,
                    "median_s": median_s,
                    "yardsticks": in_yardsticks(median_s, yardstick_s) if yardstick_s else None,
                    **achieved(p["flops"], median_s, peak),
                }
            )
    return rows


def _opt(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def format_result(result: dict[str, Any]) -> str:
    """The readable summary of :meth:`SpeedBenchmark.run`'s result: the yardstick and the
    convolution peak, the ratio table, the share-of-peak table, then the checks and details of
    each part."""
    rows = ratio_rows(result)
    result["ratios"] = rows
    result["share_of_peak"] = peak_rows(result)
    table = format_table(
        ["pair", "ours", "reference", "ratio", "ours ys", "reference ys", "target"],
        [
            [
                r["what"],
                f"{r['ours']:.3g}",
                f"{r['reference']:.3g}",
                f"{r['ratio']:.2f}x",
                _opt(r.get("ours_yardsticks"), ".3g"),
                _opt(r.get("reference_yardsticks"), ".3g"),
                "" if r["target"] is None else f">= {r['target']:.1f}x",
            ]
            for r in rows
        ],
    )
    s = result["settings"]
    lines = [
        f"device {s['device']}, {s['threads']} CPU threads, "
        f"cpu_allocator {s.get('cpu_allocator', 'system')}, amp {s['amp']}, "
        f"weights {s['weights']}; rates are medians of interleaved repeats, ratios of timed "
        "pairs are medians of per-round ratios",
    ]
    if "yardstick" in result:
        lines.append(yardstick_line(result["yardstick"]))
    if "conv_peak" in result:
        lines.append(peak_line(result["conv_peak"]))
    lines.append(table)
    if "yardstick" in result:
        lines.append(
            "ys: seconds per image / iteration / evaluation (1 / rate) in yardsticks; data "
            "loading: per image of the loader vs of training"
        )
    if result["share_of_peak"]:
        lines.append(_format_peak_table(result["share_of_peak"]))
    yardstick_s = result.get("yardstick", {}).get("median_s")
    lines += _inference_details(result.get("inference"), yardstick_s)
    lines += _training_details(result.get("training"), yardstick_s)
    if "data_loading" in result:
        d = result["data_loading"]
        (h, w), (lo, hi) = d["mean_image_size"], d["short_side_range"]
        sides = f"{lo}" if lo == hi else f"{lo}..{hi}"
        lines.append(
            f"data loading: {d['num_workers']} workers, batch {d['batch_size']}, shorter side "
            f"{sides}, mean image {h:.0f}x{w:.0f}; images/s per window "
            + ", ".join(f"{r:.1f}" for r in d["images_per_s"])
        )
    return "\n".join(lines)


def _format_peak_table(rows: Sequence[Mapping[str, Any]]) -> str:
    body = [
        [
            r["path"],
            r["contender"],
            f"{r['gflops']:.1f}",
            f"{r['median_s']:.3f}",
            _opt(r["yardsticks"], ".3g"),
            f"{r['gflops_per_s']:.1f}",
            "" if r["share_of_peak"] is None else f"{100 * r['share_of_peak']:.0f}%",
        ]
        for r in rows
    ]
    headers = ["timed path (per call)", "contender", "GFLOP", "median s", "ys", "GFLOP/s"]
    return format_table([*headers, "% of conv peak"], body)


def _ys(seconds: float, yardstick_s: float | None) -> str:
    return "" if not yardstick_s else f"{in_yardsticks(seconds, yardstick_s):.3g}"


def _inference_details(inf: Mapping[str, Any] | None, yardstick_s: float | None) -> list[str]:
    if inf is None:
        return []
    d = inf["detections"]
    verdict = "identical" if inf["identical"] else "MISMATCH"
    pooler = f" (twin pools with {inf['twin_pooler']})" if "twin_pooler" in inf else ""
    lines = [
        f"detections (float32), optimised ours vs torchvision{pooler}: {verdict}: "
        f"{d['num_detections']} detections, same counts {d['same_counts']}, same labels "
        f"{d['same_labels']}, max |box diff| {d['box_diff']:.1e} px, max |score diff| "
        f"{d['score_diff']:.1e}"
    ]
    tp = inf["throughput"]
    if len(tp) > 2:
        rows = [
            [
                name,
                f"{v['median_s']:.3f}",
                _ys(v["median_s"], yardstick_s),
                f"{v['per_s']:.3g}",
                f"{paired_ratio(v['seconds'], tp[TORCHVISION]['seconds']):.2f}x",
            ]
            for name, v in tp.items()
        ]
        headers = ["inference", "median s", "ys", "images/s", "vs torchvision"]
        lines.append(format_table(headers, rows))
    return lines


def _ys_note(seconds: float, yardstick_s: float | None) -> str:
    return f" ({_ys(seconds, yardstick_s)} ys)" if yardstick_s else ""


def _training_details(tr: Mapping[str, Any] | None, yardstick_s: float | None) -> list[str]:
    if tr is None:
        return []
    losses, head = tr["losses"], tr["box_head"]
    lines = [
        f"training: first-step total loss ours {losses[OURS]:.6f}, torchvision "
        f"{losses[TORCHVISION]:.6f} (|diff| {losses['abs_diff']:.1e})",
    ]
    if "channels_last" in losses:
        lines.append(
            f"timed: ours with channels-last weights, first-step total loss "
            f"{losses['channels_last']:.6f} (|diff| {losses['channels_last_abs_diff']:.1e})"
        )
    return [
        *lines,
        f"per-region head ({head['module']}) forward+backward on {tuple(head['input_shape'])}: "
        f"{head['median_s']:.3f} s{_ys_note(head['median_s'], yardstick_s)} = "
        f"{100 * head['share']:.1f}% of our training step",
    ]
