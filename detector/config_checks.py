"""Cheap checks of a composed config, run before any heavy work (model build, data load).

:func:`check_config` looks at plain values only (no dataset is read, no model is built) and
raises one :class:`ConfigError` listing every problem, each naming the key, its value and what
is allowed. Unknown config *group options* (``model=faster_rcnn_r99_c4``) never get here: Hydra
rejects them while composing, listing the available options. A checkpoint whose architecture
or class count differs from the config is rejected when it is loaded
(:func:`detector.engine.checkpoint.load_model_weights`), which names the mismatching tensors.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from detector.modeling.backbone.channels import resnet_out_channels

_UNSET = object()


class ConfigError(ValueError):
    """The config has values that cannot work; the message lists each ``key=value: problem``."""


def check_config(cfg: DictConfig) -> None:
    """Check the values a run depends on, before anything heavy happens.

    Checked when present: ``model.depth`` (a ResNet depth), ``solver.optimizer.lr`` (> 0),
    ``solver.max_iter`` (> 0), ``dataloader.batch_size`` (> 0), ``dataloader.num_workers``
    (>= 0), ``dataset.root`` and the dataset's other ``root*`` paths (existing folders, except
    for datasets generated on first use, whose class sets ``generates_data = True``), and the
    class count: ``model.num_classes`` = ``dataset.num_classes`` = ``len(dataset.class_names)``.

    Raises:
        ConfigError: one line per problem.
    """
    problems: list[str] = []
    for check in (_check_model, _check_solver, _check_dataloader, _check_dataset):
        problems.extend(check(cfg))
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"invalid configuration ({len(problems)} problem(s)):\n{lines}")


def _get(cfg: DictConfig, key: str, problems: list[str]) -> Any:
    """The resolved value at dotted ``key``; ``_UNSET`` when absent; unset ``???`` or a failing
    interpolation is recorded in ``problems``."""
    try:
        value = OmegaConf.select(cfg, key, default=_UNSET, throw_on_missing=True)
    except MissingMandatoryValue:
        problems.append(f"{key} is not set (???): give it on the command line, e.g. {key}=...")
        return _UNSET
    except InterpolationResolutionError as err:
        if not isinstance(err.__cause__, MissingMandatoryValue):  # that key is reported itself
            problems.append(f"{key}: cannot be resolved: {str(err).splitlines()[0]}")
        return _UNSET
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _number_check(cfg: DictConfig, key: str, ok: Callable[[Any], bool], allowed: str) -> list[str]:
    problems: list[str] = []
    value = _get(cfg, key, problems)
    if value is not _UNSET and not ok(value):
        problems.append(f"{key}={value!r}: must be {allowed}")
    return problems


def _check_model(cfg: DictConfig) -> list[str]:
    problems: list[str] = []
    depth = _get(cfg, "model.depth", problems)
    if depth is not _UNSET:
        try:
            resnet_out_channels(depth)
        except (ValueError, TypeError) as err:
            problems.append(f"model.depth={depth!r}: {err}")
    return problems


def _check_solver(cfg: DictConfig) -> list[str]:
    def positive_number(v: Any) -> bool:
        return (
            isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        )

    return _number_check(
        cfg, "solver.optimizer.lr", positive_number, "a finite number > 0"
    ) + _number_check(cfg, "solver.max_iter", lambda v: _is_int(v) and v > 0, "an integer > 0")


def _check_dataloader(cfg: DictConfig) -> list[str]:
    return _number_check(
        cfg, "dataloader.batch_size", lambda v: _is_int(v) and v > 0, "an integer > 0"
    ) + _number_check(
        cfg, "dataloader.num_workers", lambda v: _is_int(v) and v >= 0, "an integer >= 0"
    )


def _check_dataset(cfg: DictConfig) -> list[str]:
    dataset = cfg.get("dataset")
    if not isinstance(dataset, DictConfig):
        return []
    problems = [] if _generates_data(dataset) else _check_roots(cfg, dataset)
    return problems + _check_num_classes(cfg)


def _generates_data(dataset: DictConfig) -> bool:
    """Whether the dataset's ``train``/``val`` class writes its files on first use."""
    for split in ("train", "val"):
        target = OmegaConf.select(dataset, f"{split}._target_", default=None)
        if isinstance(target, str):
            try:
                if getattr(get_class(target), "generates_data", False):
                    return True
            except (ImportError, ValueError):
                pass  # an unknown _target_ fails with its own message when instantiated
    return False


def _check_roots(cfg: DictConfig, dataset: DictConfig) -> list[str]:
    problems: list[str] = []
    for name in dataset:
        if not str(name).startswith("root"):
            continue
        key = f"dataset.{name}"
        value = _get(cfg, key, problems)
        if value is _UNSET or value is None:
            continue
        if not Path(str(value)).is_dir():
            problems.append(
                f"{key}={str(value)!r}: no such folder; point it at the dataset "
                "(see datasets/README.md) or set $DETECTOR_DATA_ROOT"
            )
    return problems


def _check_num_classes(cfg: DictConfig) -> list[str]:
    problems: list[str] = []
    counts: dict[str, Any] = {}
    for key in ("model.num_classes", "dataset.num_classes"):
        value = _get(cfg, key, problems)
        if value is _UNSET or value is None:
            continue
        if not _is_int(value) or value <= 0:
            problems.append(f"{key}={value!r}: must be an integer > 0")
            continue
        counts[key] = value
    names = _get(cfg, "dataset.class_names", problems)
    if names is not _UNSET and names is not None:
        counts["len(dataset.class_names)"] = len(names)
    if len(set(counts.values())) > 1:
        stated = ", ".join(f"{k}={v}" for k, v in counts.items())
        problems.append(
            f"class count mismatch: {stated}; they must be equal (model.num_classes defaults to "
            "${dataset.num_classes}, which must be the length of dataset.class_names)"
        )
    return problems
