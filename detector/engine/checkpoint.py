"""Atomic checkpoint files: write to a temporary file in the same folder, fsync, rename.

A crash or a full disk during ``save_checkpoint`` leaves any previous file at ``path`` intact.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)


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


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a run directory holding ``model_final.pth`` / ``last_checkpoint``."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in ("model_final.pth", "last_checkpoint.pth"):
            if (path / name).is_file():
                return path / name
        found = sorted(path.glob("model_*.pth"))
        if found:
            return found[-1]
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
