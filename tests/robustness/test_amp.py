"""bf16 autocast on a CPU without bfloat16 instructions: a warning at construction."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from detector.engine import amp
from detector.engine.amp import MixedPrecision, cpu_flags

CPU = torch.device("cpu")
WARNING = "on a CPU without bfloat16 instructions"


def _build(monkeypatch, caplog, native: bool | None, **kwargs) -> list[str]:
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: native)
    options = {"enabled": True, "dtype": "bfloat16", "device": CPU} | kwargs
    with caplog.at_level(logging.WARNING, logger="detector.engine.amp"):
        MixedPrecision(**options)
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_cpu_bf16_without_native_support_warns(monkeypatch, caplog) -> None:
    messages = _build(monkeypatch, caplog, native=False)
    assert len(messages) == 1
    assert WARNING in messages[0] and "use train.amp=false" in messages[0]
    assert torch.backends.cpu.get_cpu_capability() in messages[0]


@pytest.mark.parametrize("native", [True, None])
def test_cpu_bf16_with_native_or_unknown_support_is_silent(monkeypatch, caplog, native) -> None:
    assert _build(monkeypatch, caplog, native=native) == []


def test_no_warning_when_amp_is_off(monkeypatch, caplog) -> None:
    assert _build(monkeypatch, caplog, native=False, enabled=False) == []


def test_cpu_flags_reads_x86_and_arm_cpuinfo(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n\nprocessor\t: 1\nflags : x\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert cpu_flags(x86) == {"fpu", "sse", "avx2", "fma"}
    assert cpu_flags(arm) == {"fp", "asimd", "bf16", "i8mm"}
    assert cpu_flags(tmp_path / "missing") is None


def test_avx2_only_cpuinfo_means_no_native_bf16(monkeypatch, tmp_path: Path) -> None:
    avx2 = tmp_path / "cpuinfo"
    avx2.write_text("flags\t\t: fpu sse sse2 avx avx2 fma\n")
    monkeypatch.setattr(amp, "cpu_flags", lambda: cpu_flags(avx2))
    assert amp.cpu_has_native_bf16() is False
    avx2.write_text("flags\t\t: avx2 avx512f avx512_bf16\n")
    assert amp.cpu_has_native_bf16() is True
    monkeypatch.setattr(amp, "cpu_flags", lambda: None)  # no /proc/cpuinfo: the capability
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert amp.cpu_has_native_bf16() is False
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert amp.cpu_has_native_bf16() is None
