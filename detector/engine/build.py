"""Config or trained run -> objects: the one module that builds them.

Every tool, the trainer's final evaluation, ensembles and the ablation get their device, output
folder, datasets, model, trained model and test-time model (with its tricks) from here:

* :func:`resolve_device`, :func:`resolve_output_dir`;
* :func:`prepare_dataset` (e.g. write the synthetic dataset), :func:`build_dataset`;
* :func:`build_model` (the untrained detector of ``cfg.model.net``);
* :class:`Run` / :func:`open_run`: a checkpoint with the config saved beside or inside it,
  optionally with a user's command-line overrides merged on top; :func:`build_trained_model`
  and :func:`load_trained` rebuild its detector with the trained weights;
* :func:`build_test_model`: the ``test`` and ``ensemble`` config groups composed around a model.

The modules under :mod:`detector.inference` are config-free; this module reads the config and
calls them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from detector.data.base import DetectionDataset
from detector.engine.checkpoint import load_checkpoint, load_model_weights, resolve_checkpoint_path
from detector.modeling.fuse import optimize_for_inference
from detector.modeling.meta_arch import FasterRCNN

logger = logging.getLogger(__name__)

#: Keys of eval.yaml itself; never copied into the trained run's config.
EVAL_KEYS = ("checkpoint", "results")
FUSE_MODES = ("proposals", "detections")
_DEFAULT_COMBINER = {"_target_": "detector.inference.ensemble.ProposalEnsemble"}


# ----------------------------------------------------------------- where and on what
def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``torch.device(name)``, checked; in a torchrun job a bare ``cuda`` becomes the GPU of
    the process's ``local_rank``."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use device=cpu")
    if device.type == "cuda" and local_rank is not None:
        if device.index is not None:
            raise ValueError(
                f"device={name!r} names one GPU but several processes were started; use "
                "device=cuda (each process takes the GPU of its LOCAL_RANK)"
            )
        device = torch.device("cuda", local_rank)
    return device


def resolve_output_dir(cfg: DictConfig) -> Path:
    """``cfg.output_dir`` or, inside a Hydra app, the Hydra run directory (created)."""
    if cfg.get("output_dir"):
        out = Path(str(cfg.output_dir))
    else:
        if not HydraConfig.initialized():
            raise ValueError("output_dir is null and no Hydra run directory exists; set output_dir")
        out = Path(HydraConfig.get().runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


# ----------------------------------------------------------------- data
def prepare_dataset(cfg: DictConfig) -> None:
    """Run the dataset's ``prepare`` step (e.g. writing the synthetic dataset) if it has one."""
    if cfg.dataset.get("prepare") is not None:
        instantiate(cfg.dataset.prepare)


def build_dataset(cfg: DictConfig, split: str) -> DetectionDataset:
    """The dataset of ``cfg.dataset[split]`` (``train`` or ``val``), checked against
    ``model.num_classes``."""
    if split not in cfg.dataset or cfg.dataset[split] is None:
        raise ValueError(f"dataset {cfg.dataset.get('name')!r} has no {split!r} split configured")
    try:
        dataset = instantiate(cfg.dataset[split], _convert_="all")
    except InstantiationException as err:
        # the dataset's own error (a missing split file, dirty data) is the message to show
        if isinstance(err.__cause__, ValueError | OSError):
            err.__cause__.add_note(f"while building dataset.{split}")
            raise err.__cause__ from err
        raise
    expected = int(cfg.model.num_classes)
    if len(dataset.class_names) != expected:
        raise ValueError(
            f"dataset {cfg.dataset.get('name')!r} ({split}) has {len(dataset.class_names)} "
            f"classes {dataset.class_names} but model.num_classes is {expected}"
        )
    return dataset


# ----------------------------------------------------------------- models
def build_model(cfg: DictConfig, device: torch.device) -> FasterRCNN:
    """The detector of ``cfg.model.net`` (random or backbone-pretrained weights) on ``device``."""
    return instantiate(cfg.model.net).to(device)


@dataclass
class Run:
    """A trained run: its checkpoint file, the checkpoint's contents and the run config (the
    saved one, with any overrides merged on top)."""

    path: Path
    checkpoint: dict[str, Any]
    config: DictConfig

    @property
    def class_names(self) -> list[str]:
        """Saved with the weights, else in the run's dataset config, else ``class_k``."""
        num = int(self.config.model.num_classes)
        names = self.checkpoint.get("class_names") or self.config.dataset.get("class_names")
        if names is not None and len(names) == num:
            return [str(n) for n in names]
        return [f"class_{k}" for k in range(1, num + 1)]


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
    value; saved values derived from an overridden key follow it (:func:`derived_values`).
    Everything else keeps the values the model was trained with.
    """
    merged = OmegaConf.create(OmegaConf.to_container(saved, resolve=False))
    keys = []
    for ov in overrides:
        key = override_key(ov)
        if key is None or key.split(".")[0] in EVAL_KEYS:
            continue
        value = OmegaConf.select(composed, key, throw_on_missing=False)
        OmegaConf.update(merged, key, value, merge=False, force_add=True)
        keys.append(key)
    for path, raw in derived_values(saved, composed, keys):
        logger.info("%s follows the override: %s", path, raw)
        OmegaConf.update(merged, path, raw, merge=False)
    for key in ("eval", "device", "output_dir", "dataloader"):
        if key not in merged and key in composed:
            merged[key] = composed[key]
    return merged


_MISSING = object()
_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")


def _interpolated_leaves(node: Any, path: str = "") -> list[tuple[str, Any, set[str]]]:
    """``(dict key path, raw value, referenced keys)`` of every value of a raw (unresolved)
    config container that interpolates other keys; a list is reported whole, under its key."""
    found: list[tuple[str, Any, set[str]]] = []
    for k, v in node.items():
        sub = f"{path}.{k}" if path else str(k)
        if isinstance(v, dict):
            found += _interpolated_leaves(v, sub)
            continue
        items = v if isinstance(v, list) else [v]
        refs = {m for x in items if isinstance(x, str) for m in _REFERENCE.findall(x)}
        if refs:
            found.append((sub, v, refs))
    return found


def _depends(refs: set[str], keys: set[str]) -> bool:
    return any(r == k or r.startswith(k + ".") or k.startswith(r + ".") for r in refs for k in keys)


def derived_values(
    saved: DictConfig, composed: DictConfig, keys: Sequence[str]
) -> list[tuple[str, Any]]:
    """Saved values that were derived from an overridden key and must follow it.

    A run's saved config is resolved: ``dataset.val.transforms.min_sizes`` holds ``[320]``, not
    ``${dataset.input.min_size_test}``, so overriding the input size (or ``dataset.root``) at
    evaluation would otherwise change nothing. Every value that the composed config writes as an
    interpolation of an overridden key (directly or through another derived value) gets its
    interpolation back, provided that the saved value is what that interpolation gave in the
    saved run (a value the user had set by hand stays). Returns ``(path, raw value)`` pairs.
    """
    if not keys:
        return []
    leaves = _interpolated_leaves(OmegaConf.to_container(composed, resolve=False))
    # the saved run with the interpolations tried so far put back: each must resolve to the
    # value the run saved, so the copy keeps resolving like the saved run
    trial = OmegaConf.create(OmegaConf.to_container(saved, resolve=False))
    overridden, changed, chosen = set(keys), set(keys), {}
    while True:
        new = [
            (p, v)
            for p, v, refs in leaves
            if p not in chosen and not _depends({p}, overridden) and _depends(refs, changed)
        ]
        new = [(p, v) for p, v in new if _was_derived(trial, saved, p, v)]
        if not new:
            break
        for p, v in new:
            chosen[p] = v
            changed.add(p)
    return list(chosen.items())


def _was_derived(trial: DictConfig, saved: DictConfig, path: str, raw: Any) -> bool:
    """Whether ``raw``, put at ``path`` of ``trial`` (a copy of the saved config), resolves to
    the saved value; if not, the saved value is put back."""
    before = OmegaConf.select(saved, path, throw_on_missing=False, default=_MISSING)
    if before is _MISSING:
        return False
    try:
        OmegaConf.update(trial, path, raw, merge=False)
        if _plain(trial, path) == _plain(saved, path):
            return True
    except Exception:  # an interpolation that does not resolve in the saved run: not derived
        pass
    OmegaConf.update(trial, path, before, merge=False)
    return False


def _plain(cfg: DictConfig, path: str) -> Any:
    value = OmegaConf.select(cfg, path)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


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


def open_run(
    checkpoint: str | Path,
    *,
    composed: DictConfig | None = None,
    overrides: Sequence[str] = (),
) -> Run:
    """The run of ``checkpoint`` (a ``.pth`` file or a run directory); with ``overrides``
    (command-line strings) their values are taken from ``composed`` onto the saved config."""
    path = resolve_checkpoint_path(str(checkpoint))
    ckpt = load_checkpoint(path)
    config = load_run_config(path, ckpt)
    if composed is not None:
        config = merge_run_config(config, composed, overrides)
    return Run(path=path, checkpoint=ckpt, config=config)


def build_trained_model(run: Run, device: torch.device) -> FasterRCNN:
    """The run's detector with its trained weights, in eval mode on ``device``."""
    model = build_model(run.config, device)
    load_model_weights(model, run.checkpoint["model"], source=str(run.path))
    return model.eval()


def load_trained(checkpoint: str | Path, *, device: torch.device) -> tuple[FasterRCNN, Run]:
    """``(trained model in eval mode, its run)`` of a run directory or ``.pth`` file."""
    run = open_run(checkpoint)
    return build_trained_model(run, device), run


# ----------------------------------------------------------------- test-time model
#: ``test.per_model.target_size`` value that ties multi-scale testing's target to the training
#: objects (:func:`train_object_size`).
TRAIN_OBJECTS = "train_objects"


def train_object_sides(cfg: DictConfig) -> np.ndarray:
    """The side ``sqrt(w * h)`` of every training box of ``cfg``'s train split, in pixels of
    the training scale (``dataset.input.min_sizes_train`` / ``max_size_train``; one value per
    box and training size): the object sizes the per-region head saw."""
    inputs = cfg.dataset.get("input") or {}
    min_sizes = [float(m) for m in inputs.get("min_sizes_train") or []]
    if not min_sizes:
        raise ValueError(
            f"{TRAIN_OBJECTS} (multi-scale testing) needs dataset.input.min_sizes_train"
        )
    max_size = inputs.get("max_size_train")
    sides: list[np.ndarray] = []
    for record in build_dataset(cfg, "train").records:
        boxes = record.gt_boxes.astype(np.float64)
        side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        for size in min_sizes:
            scale = size / min(record.height, record.width)
            if max_size is not None:
                scale = min(scale, float(max_size) / max(record.height, record.width))
            sides.append(side * scale)
    values = np.concatenate(sides) if sides else np.zeros(0)
    values = values[values > 0]
    if values.size == 0:
        raise ValueError("the train split has no boxes to derive the training object sizes from")
    return values


def train_object_size(cfg: DictConfig) -> float:
    """The geometric mean of :func:`train_object_sides`: the object size the head saw most."""
    size = float(np.exp(np.log(train_object_sides(cfg)).mean()))
    logger.info("training object size (geometric mean side at the training scale): %.1f px", size)
    return size


#: Percentiles of the training object sides that bound multi-scale testing's target and levels
#: (``test.per_model.target_range=train_objects``).
TARGET_PERCENTILES = (10.0, 90.0)


def train_object_range(cfg: DictConfig) -> list[float]:
    """``[low, high]``: the 10th and 90th percentiles of :func:`train_object_sides`."""
    low, high = (float(v) for v in np.percentile(train_object_sides(cfg), TARGET_PERCENTILES))
    logger.info(
        "training object sides, %gth-%gth percentile at the training scale: %.1f-%.1f px",
        *TARGET_PERCENTILES,
        low,
        high,
    )
    return [low, high]


def _target_range_or_none(cfg: DictConfig) -> list[float] | None:
    """:func:`train_object_range`, or None (no bound, with a warning) when the train split's
    files are not there, e.g. evaluating on a machine that only has the val images. Any other
    problem with the train split (a bad annotation in strict mode, a class mismatch) is raised."""
    try:
        return train_object_range(cfg)
    except FileNotFoundError as err:
        logger.warning(
            "multi-scale testing: target_range=%s needs the train split's boxes (%s); the "
            "target is not bounded (nor the levels kept in range)",
            TRAIN_OBJECTS,
            err,
        )
        return None


def resolve_train_objects(node: Any, cfg: DictConfig | None) -> Any:
    """``node`` (a ``test.per_model`` config) with ``train_objects`` resolved to pixels.

    ``target_range=train_objects``: the training objects' 10th-90th percentile sides.
    ``target_size=train_objects``: their geometric mean side; being a size in the pixels the
    head trained on, it is not scaled with the test image, so the range is pinned to it."""
    if node is None or not isinstance(node, DictConfig):
        return node
    wants_size = node.get("target_size") == TRAIN_OBJECTS
    wants_range = node.get("target_range") == TRAIN_OBJECTS
    if not (wants_size or wants_range):
        return node
    if cfg is None:
        raise ValueError(f"{TRAIN_OBJECTS} needs the run config to find the train split")
    if wants_size:
        size = train_object_size(cfg)
        # the pinned range only fixes the target; it is no range of sizes to keep levels in
        pinned: dict[str, Any] = {"target_size": size, "target_range": [size, size]}
        if "levels_in_range" in node:
            if node.levels_in_range:
                logger.info(
                    "multi-scale testing: target_size=%s pins the target, so levels_in_range "
                    "is off",
                    TRAIN_OBJECTS,
                )
            pinned["levels_in_range"] = False
        return OmegaConf.merge(node, pinned)
    return OmegaConf.merge(node, {"target_range": _target_range_or_none(cfg)})


def _wrap(node: Any, model: nn.Module) -> nn.Module:
    if node is None:
        return model
    return instantiate(node, model=model, _convert_="all")


def ensemble_members(cfg: DictConfig, model: FasterRCNN) -> list[nn.Module]:
    """The models of ``cfg.ensemble.checkpoints`` (besides ``model``), on ``model``'s device;
    each must predict ``model``'s classes. A listed checkpoint that is the evaluated
    ``cfg.checkpoint`` itself is skipped with a warning."""
    ens = cfg.get("ensemble") or {}
    paths = list(ens.get("checkpoints") or [])
    own = Path(str(cfg.checkpoint)).resolve() if cfg.get("checkpoint") else None
    device = next(model.parameters(), torch.zeros(0)).device
    members: list[nn.Module] = []
    for p in paths:
        if own is not None and Path(str(p)).resolve() == own:
            logger.warning("ensemble.checkpoints lists the evaluated checkpoint %s; skipped", p)
            continue
        member, run = load_trained(p, device=device)
        if member.num_classes != model.num_classes:
            raise ValueError(
                f"ensemble member {run.path} predicts {member.num_classes} classes, the "
                f"evaluated model {model.num_classes}"
            )
        logger.info("ensemble member %s (%s)", run.path, run.config.model.net.roi_heads._target_)
        members.append(member)
    return members


def build_test_model(cfg: DictConfig, model: FasterRCNN) -> nn.Module:
    """``model`` itself, or the test-time tricks of ``cfg.test`` / ``cfg.ensemble`` around it.

    Order of composition (each step optional)::

        members = [model] + ensemble.checkpoints      (rebuilt from their saved run configs)
        members = optimize_for_inference(m) for each   (eval.optimize_model; copies)
        staged  = test.per_model(model=m) for each     (e.g. multiscale_paper)
        ensemble.fuse == proposals:  test.wrapper(model=ensemble.combiner(members=staged))
        ensemble.fuse == detections: ensemble.combiner(members=[test.wrapper(model=m) ...])

    With one member there is no combiner: ``test.wrapper(model=test.per_model(model=model))``.
    """
    test_cfg = cfg.get("test") or {}
    members: list[nn.Module] = [model, *ensemble_members(cfg, model)]
    if (cfg.get("eval") or {}).get("optimize_model", False):
        # an eval-mode copy per member; the trained model itself is left as it is; the levers
        # that pay depend on the image size (channels-last only from 400 px on, CPU)
        size = OmegaConf.select(cfg, "dataset.input.min_size_test", default=None)
        members = [optimize_for_inference(m, channels_last=None, image_size=size) for m in members]
    per_model = resolve_train_objects(test_cfg.get("per_model"), cfg)  # once for all members
    staged = [_wrap(per_model, m) for m in members]
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
