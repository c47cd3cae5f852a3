"""Checkpoint files of a run directory, written atomically.

Atomic: write to a temporary file in the same folder, fsync, rename. A crash, a SIGKILL or a
full disk during a save leaves any previous file at ``path`` intact (and at worst a stale
``.<name>.*.tmp`` file, removed by :func:`remove_stale_temporaries`).

Names in a run directory: ``model_{iteration:07d}.pth`` (periodic, the last K kept),
``model_final.pth`` (end of training), ``model_best.pth`` (best validation metric).

Good: a training checkpoint is written only when every floating-point tensor in its model and
optimizer states is finite (:func:`non_finite_tensors`), and :func:`last_good_checkpoint` names
the newest file that passes the same check, so a run stopped by a NaN or an overflowed
BatchNorm statistic never points at a poisoned file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detector.engine.distributed import gather_to_main
from detector.engine.rng import capture_rng_state

logger = logging.getLogger(__name__)

FINAL_NAME = "model_final.pth"
BEST_NAME = "model_best.pth"
_PERIODIC = re.compile(r"^model_(\d{7,})\.pth$")
_TEMPORARY = re.compile(r"^\.model_.*\.pth\..*\.tmp$")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically (same-directory temp file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def save_checkpoint(path: str | Path, *, model: nn.Module, **extra: Any) -> Path:
    """Save ``{"model": state_dict, **extra}`` atomically."""
    return atomic_torch_save({"model": model.state_dict(), **extra}, path)


def periodic_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of the ``model_{iteration:07d}.pth`` files, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _PERIODIC.match(p.name))]
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: ``model_final.pth``, else the newest periodic one."""
    final = Path(run_dir) / FINAL_NAME
    if final.is_file():
        return final
    periodic = periodic_checkpoints(run_dir)
    return periodic[-1][1] if periodic else None


def non_finite_tensors(state: Any, prefix: str = "") -> list[str]:
    """Names (dotted paths) of the floating-point tensors in a nested state (dicts, lists)
    that hold a NaN or an infinity."""
    if isinstance(state, torch.Tensor):
        bad = state.is_floating_point() and not bool(torch.isfinite(state).all())
        return [prefix or "<tensor>"] if bad else []
    items: list[tuple[Any, Any]] = []
    if isinstance(state, Mapping):
        items = list(state.items())
    elif isinstance(state, Sequence) and not isinstance(state, str | bytes):
        items = list(enumerate(state))
    found: list[str] = []
    for key, value in items:
        found += non_finite_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    return found


def is_good_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` loads and its model and optimizer states are finite everywhere."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - unreadable means not good
        return False
    if not isinstance(data, dict):
        return False
    state = data.get("model", data)
    return not non_finite_tensors({"model": state, "optimizer": data.get("optimizer")})


def last_good_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest of ``model_final.pth`` and the periodic checkpoints that
    :func:`is_good_checkpoint` accepts (None if none does)."""
    final = Path(run_dir) / FINAL_NAME
    candidates = ([final] if final.is_file() else []) + [
        p for _, p in reversed(periodic_checkpoints(run_dir))
    ]
    return next((p for p in candidates if is_good_checkpoint(p)), None)


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` periodic checkpoints (``keep_last <= 0``: keep
    all); ``model_final.pth`` and ``model_best.pth`` are never touched. Returns the deleted."""
    periodic = periodic_checkpoints(run_dir)
    doomed = [p for _, p in periodic[:-keep_last]] if keep_last > 0 else []
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete temporary files left by a save that was killed mid-write."""
    run_dir = Path(run_dir)
    stale = [p for p in run_dir.iterdir() if _TEMPORARY.match(p.name)] if run_dir.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a run directory: its ``model_final.pth``, else the newest
    periodic checkpoint, else ``model_best.pth``."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None and (path / BEST_NAME).is_file():
            found = path / BEST_NAME
        if found is None and (path / "last_checkpoint.pth").is_file():
            found = path / "last_checkpoint.pth"
        if found is not None:
            return found
        raise FileNotFoundError(f"no checkpoint (model_final.pth or model_*.pth) in {path}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict on CPU; a bare state dict is wrapped as ``{"model": ...}``."""
    path = resolve_checkpoint_path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise RuntimeError(f"could not read checkpoint {path}: {err}") from err
    if not isinstance(data, dict):
        raise RuntimeError(f"checkpoint {path} does not hold a dict")
    if "model" not in data:
        data = {"model": data}
    return data


def load_model_weights(model: nn.Module, state: dict[str, Any], *, source: str) -> None:
    """Load a state dict strictly, turning shape/key mismatches into one clear error."""
    own = model.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    if mismatched or missing or unexpected:
        lines = [f"checkpoint {source} does not match the configured model:"]
        if mismatched:
            lines.append(
                f"  {len(mismatched)} shape mismatches (e.g. class count), first: "
                + "; ".join(mismatched[:3])
            )
        if missing:
            lines.append(f"  {len(missing)} missing keys, first: {missing[:3]}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected keys, first: {unexpected[:3]}")
        lines.append("  check model=... and dataset=... match the run that wrote it")
        raise RuntimeError("\n".join(lines))
    model.load_state_dict(state, strict=False)


class Checkpointer:
    """Saves training states into a run directory; call :meth:`save` on every rank (the RNG
    states of all ranks are gathered), rank 0 writes.

    A checkpoint holds the trainer's ``state`` (model, optimizer, scheduler, grad scaler,
    iteration, hook states), ``"rng"``: a list of every rank's generator states
    (:func:`~detector.engine.rng.capture_rng_state`), and ``extra`` (resolved config, class
    names, the data stream's identity).
    """

    def __init__(
        self, *, output_dir: str | Path, extra: dict[str, Any], device: torch.device, is_main: bool
    ) -> None:
        self.output_dir = Path(output_dir)
        self.extra = extra
        self.device = device
        self.is_main = is_main

    def save(self, name: str, state: dict[str, Any]) -> Path | None:
        """Write ``{**state, "rng": [...], **extra}`` to ``output_dir / name`` atomically;
        the path on rank 0, ``None`` elsewhere.

        Raises:
            FloatingPointError: a tensor of the model or optimizer state is not finite (the
                file is not written; an earlier file of that name stays as it was).
        """
        bad = non_finite_tensors({"model": state["model"], "optimizer": state.get("optimizer")})
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise FloatingPointError(
                f"non-finite values after iteration {state.get('iteration')} in "
                f"{', '.join(bad[:3])}{more}; {name} was not written (a checkpoint is saved "
                "only when every tensor in it is finite)."
            )
        rng = gather_to_main(capture_rng_state(self.device))
        if not self.is_main:
            return None
        path = atomic_torch_save({**state, "rng": rng, **self.extra}, self.output_dir / name)
        logger.info("saved checkpoint %s", path)
        return path
