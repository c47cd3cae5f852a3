"""cpu_allocator (detector.utils.cpu_memory), the allocator benchmark's bookkeeping and how the
tools apply the setting."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest
from omegaconf import OmegaConf

from detector.benchmarks import allocator
from detector.engine import cli
from detector.utils import cpu_memory
from tests.helpers import compose_config

needs_glibc = pytest.mark.skipif(not cpu_memory.glibc_available(), reason="needs glibc")

# Allocates and frees a 64 MiB buffer ten times, writing every page, and prints the page faults
# of the last three rounds: glibc mmaps blocks that large and unmaps them on free, so every round
# faults every page in again, unless the allocator retains freed memory. Retained, the heap
# settles after a few rounds (a freed block is not always big enough for posix_memalign's padded
# request at once), and then no round faults.
_FAULTS = textwrap.dedent(
    """
    import sys
    import torch
    from detector.utils import cpu_memory
    if sys.argv[1] == "retain":
        assert cpu_memory.retain_freed_memory()
    faults = []
    for i in range(10):
        before = cpu_memory.minor_page_faults()
        t = torch.ones(16 << 20)  # 64 MiB, every page written
        del t
        faults.append(cpu_memory.minor_page_faults() - before)
    print(*faults[-3:])
    """
)


def _last_rounds_faults(mode: str) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True
    )
    return [int(v) for v in out.stdout.strip().splitlines()[-1].split()]


@needs_glibc
def test_retained_memory_is_not_faulted_in_again() -> None:
    pages = (64 << 20) // 4096
    assert all(f > pages // 2 for f in _last_rounds_faults("system"))
    assert sum(_last_rounds_faults("retain")) < pages // 20


def test_unknown_mode_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"cpu_allocator must be one of \('retain', 'system'\)"):
        cpu_memory.configure_cpu_allocator("jemalloc")


def test_system_mode_changes_nothing_unless_retain_came_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(cpu_memory, "retain_freed_memory", lambda: calls.append("retain"))
    monkeypatch.setattr(cpu_memory, "glibc_default_malloc", lambda: calls.append("system"))
    monkeypatch.setitem(cpu_memory._state, "mode", "system")
    assert cpu_memory.configure_cpu_allocator("system") is False
    assert calls == []
    # an earlier job of the same process (a Hydra sweep) retained: undo it
    monkeypatch.setitem(cpu_memory._state, "mode", "retain")
    cpu_memory.configure_cpu_allocator("system")
    assert calls == ["system"]


def test_without_glibc_it_says_so_and_does_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cpu_memory, "_glibc", lambda: None)
    with caplog.at_level(logging.INFO, logger="detector.utils.cpu_memory"):
        assert cpu_memory.retain_freed_memory() is False
    assert "not glibc" in caplog.text
    assert cpu_memory.glibc_default_malloc() is False
    assert not cpu_memory.glibc_available()


def test_tools_apply_the_configured_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    monkeypatch.setattr(cli, "configure_cpu_allocator", lambda mode: seen.append(mode) or False)
    cli.configure_process(OmegaConf.create({"cpu_allocator": "system"}))
    cli.configure_process(OmegaConf.create({}))  # configs without the key: the default
    assert seen == ["system", "retain"]
    for name in ("train", "eval", "infer", "ablate", "benchmark", "check_data"):
        assert compose_config(name, []).cpu_allocator == "retain", name


def test_time_modes_alternates_and_warms_up_after_each_switch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    switches: list[str] = []
    monkeypatch.setattr(allocator, "_set_mode", switches.append)
    calls: list[str] = []
    clock = iter(range(1000))
    monkeypatch.setattr(allocator.time, "perf_counter", lambda: float(next(clock)))
    monkeypatch.setattr(cpu_memory, "minor_page_faults", lambda: 7)
    out = allocator.time_modes(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3
    )
    assert switches == ["system", "retain", "retain", "system", "system", "retain"]
    assert calls == ["a", "a", "b", "b"] * 6  # one untimed, one timed call each
    assert out["retain"]["a"]["seconds"] == [1.0, 1.0, 1.0]
    assert out["system"]["b"]["faults"] == [0, 0, 0]
    with pytest.raises(ValueError, match="rounds >= 1"):
        allocator.time_modes({"a": lambda: None}, rounds=0)


def test_summary_rows_give_the_median_per_round_speedup() -> None:
    result = {
        "yardstick": {"median_s": 0.5},
        "times": {
            "system": {"ours": {"seconds": [2.0, 3.0, 4.0], "faults": [100, 90, 110]}},
            "retain": {"ours": {"seconds": [1.0, 2.0, 2.0], "faults": [0, 2, 1]}},
        },
    }
    system, retain = allocator.summary_rows(result)
    # per-round ratios 2.0, 1.5, 2.0 -> median 2.0 (the ratio of medians would be 1.5)
    assert retain["speedup"] == 2.0 and system["speedup"] is None
    assert system["median_s"] == 3.0 and system["yardsticks"] == 6.0
    assert system["faults_per_call"] == 100 and retain["faults_per_call"] == 1


def test_the_log_names_what_was_applied(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cli, "configure_cpu_allocator", lambda mode: True)
    with caplog.at_level(logging.INFO, logger="detector.engine.cli"):
        cli.configure_process(OmegaConf.create({"cpu_allocator": "system"}))
    assert "cpu_allocator=system: glibc's thresholds set back" in caplog.text
    assert "cpu_allocator=retain" not in caplog.text
