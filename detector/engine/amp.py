"""Mixed precision for the training step: autocast and, for float16, a gradient scaler.

Supported combinations (``train.amp=true``, ``train.amp_dtype``):

- CUDA, ``bfloat16``: autocast only (bf16 has float32's exponent range, no loss scaling needed).
- CUDA, ``float16``: autocast and ``torch.amp.GradScaler`` (dynamic loss scaling; steps with
  inf/NaN gradients are skipped by the scaler).
- CPU, ``bfloat16``: autocast only. Fast only on CPUs with bfloat16 instructions (x86
  ``avx512_bf16`` / ``amx_bf16``, ARM ``bf16``); elsewhere it is emulated (measured 33x slower
  than float32 on an AVX2-only CPU), so :class:`MixedPrecision` logs a warning
  (:func:`cpu_has_native_bf16`).
- CPU, ``float16``: refused (CPU autocast has no float16 gradient scaling).

Evaluation always runs in float32.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}

#: ``/proc/cpuinfo`` flags of bfloat16 instructions: x86 AVX512-BF16 and AMX-BF16, ARMv8.6 BF16.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
#: PyTorch CPU capabilities (``torch.backends.cpu.get_cpu_capability()``) that imply no
#: bfloat16 instructions (x86 without AVX-512); used where ``/proc/cpuinfo`` is not available.
NO_BF16_CAPABILITIES = frozenset({"NO AVX", "AVX2"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """ISA flags of the first processor in ``cpuinfo`` (its ``flags`` line on x86,
    ``Features`` on ARM); ``None`` when the file cannot be read or has no such line."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU has bfloat16 instructions (:data:`BF16_CPU_FLAGS` in ``/proc/cpuinfo``);
    without ``/proc/cpuinfo``, ``False`` for an x86 capability below AVX-512
    (:data:`NO_BF16_CAPABILITIES`) and ``None`` (unknown) otherwise."""
    flags = cpu_flags()
    if flags is not None:
        return bool(flags & BF16_CPU_FLAGS)
    if torch.backends.cpu.get_cpu_capability() in NO_BF16_CAPABILITIES:
        return False
    return None


def warn_if_cpu_bf16_is_emulated() -> bool:
    """Log a warning when this CPU lacks bfloat16 instructions; returns whether it warned."""
    if cpu_has_native_bf16() is not False:
        return False
    logger.warning(
        "train.amp=true with train.amp_dtype=bfloat16 on a CPU without bfloat16 instructions "
        "(no avx512_bf16/amx_bf16; PyTorch CPU capability %s): autocast emulates bfloat16 and "
        "can be many times slower than float32 (33x measured on an AVX2-only CPU); on this "
        "machine use train.amp=false",
        torch.backends.cpu.get_cpu_capability(),
    )
    return True


class MixedPrecision:
    """Autocast context and gradient scaler for the configured device; disabled: both are
    pass-throughs, so the training step has a single code path.

    Raises ``ValueError`` for unsupported combinations (module doc); logs a warning for CPU
    bfloat16 autocast on a CPU without bfloat16 instructions (:func:`cpu_has_native_bf16`).
    """

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
        if enabled and device.type == "cpu" and dtype == "bfloat16":
            warn_if_cpu_bf16_is_emulated()
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
