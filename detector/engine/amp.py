"""Mixed precision for the training step: autocast and, for float16, a gradient scaler.

Supported combinations (``train.amp=true``, ``train.amp_dtype``):

- CUDA, ``bfloat16``: autocast only (bf16 has float32's exponent range, no loss scaling needed).
- CUDA, ``float16``: autocast and ``torch.amp.GradScaler`` (dynamic loss scaling; steps with
  inf/NaN gradients are skipped by the scaler).
- CPU, ``bfloat16``: autocast only. Supported for completeness and testing; on most CPUs it is
  not faster than float32.
- CPU, ``float16``: refused (CPU autocast has no float16 gradient scaling).

Evaluation always runs in float32.
"""

from __future__ import annotations

import contextlib

import torch

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class MixedPrecision:
    """Autocast context and gradient scaler for the configured device; disabled: both are
    pass-throughs, so the training step has a single code path."""

    def __init__(self, *, enabled: bool, dtype: str, device: torch.device) -> None:
        if dtype not in AMP_DTYPES:
            raise ValueError(
                f"train.amp_dtype={dtype!r} is not supported; allowed: {', '.join(AMP_DTYPES)}"
            )
        if enabled and device.type == "cpu" and dtype == "float16":
            raise ValueError(
                "train.amp=true with train.amp_dtype=float16 is not supported on the CPU; use "
                "train.amp_dtype=bfloat16, device=cuda, or train.amp=false"
            )
        if enabled and device.type not in ("cpu", "cuda"):
            raise ValueError(f"train.amp=true is supported on cpu and cuda, not {device.type!r}")
        cuda_bf16 = enabled and device.type == "cuda" and dtype == "bfloat16"
        if cuda_bf16 and not torch.cuda.is_bf16_supported():
            raise ValueError(
                f"{torch.cuda.get_device_name(device)} has no bfloat16 support; use "
                "train.amp_dtype=float16"
            )
        self.enabled = enabled
        self.dtype = AMP_DTYPES[dtype]
        self.device = device
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=enabled and self.dtype == torch.float16
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` for the forward pass (a no-op context when disabled)."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)
