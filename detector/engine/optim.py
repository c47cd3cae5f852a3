"""Optimizer parameter groups (weight decay per parameter kind) and the LR scaling rule."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

#: Modules whose parameters are normalisation scales and offsets.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def build_param_groups(
    model: nn.Module,
    *,
    weight_decay: float,
    weight_decay_norm: float | None = None,
    weight_decay_bias: float | None = None,
) -> list[dict[str, Any]]:
    """The trainable parameters of ``model`` grouped by their weight decay.

    Parameters of normalisation layers (:data:`NORM_TYPES`) get ``weight_decay_norm``, other
    biases ``weight_decay_bias``, everything else ``weight_decay``; ``None`` means
    ``weight_decay``. Frozen parameters (``requires_grad=False``) are left out; a parameter
    shared by several modules appears once.

    Returns ``[{"params": [...], "weight_decay": wd}, ...]`` in order of first appearance.
    """
    norm_wd = weight_decay if weight_decay_norm is None else weight_decay_norm
    bias_wd = weight_decay if weight_decay_bias is None else weight_decay_bias
    groups: dict[float, list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, NORM_TYPES):
                wd = norm_wd
            elif name == "bias":
                wd = bias_wd
            else:
                wd = weight_decay
            groups.setdefault(float(wd), []).append(param)
    return [{"params": params, "weight_decay": wd} for wd, params in groups.items()]


def scale_solver(solver: DictConfig, batch_size: int) -> DictConfig:
    """Apply the linear scaling rule (Goyal et al., 2017) to a solver written for
    ``solver.reference_batch_size`` images per step, for a total batch of ``batch_size``.

    With ``k = batch_size / reference_batch_size``: ``optimizer.lr`` is multiplied by ``k``;
    ``max_iter``, ``steps`` and ``warmup_iters`` are divided by ``k`` (rounded), so the run
    sees the same number of epochs. ``reference_batch_size: null`` (or equal to
    ``batch_size``) returns the solver unchanged. The returned solver has
    ``reference_batch_size = batch_size``, so scaling it again is a no-op.
    """
    reference = solver.get("reference_batch_size")
    if reference is None or int(reference) == batch_size:
        return solver
    if int(reference) <= 0 or batch_size <= 0:
        raise ValueError(
            f"solver.reference_batch_size ({reference}) and dataloader.batch_size "
            f"({batch_size}) must be positive"
        )
    k = batch_size / int(reference)
    out = OmegaConf.create(OmegaConf.to_container(solver, resolve=True))
    out.optimizer.lr = float(solver.optimizer.lr) * k
    out.max_iter = max(1, round(int(solver.max_iter) / k))
    out.steps = [round(int(s) / k) for s in solver.get("steps", [])]
    out.warmup_iters = round(int(solver.get("warmup_iters", 0)) / k)
    out.reference_batch_size = batch_size
    return out
