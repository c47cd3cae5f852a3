"""Exact resume after SIGKILL: mid-run and in the middle of a checkpoint write.

A CPU run with ``num_workers=0`` is deterministic, so the resumed run must end with the same
weights and optimizer state, bit for bit, as an uninterrupted run with the same seed.

Every compared run is a fresh child process with the same environment (one thread): MKL may
pick alignment-dependent kernels, so a run inside the long-lived pytest process (different
heap layout) can differ from a child in the last bits of a few weights, resume or not.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from detector.engine.checkpoint import latest_checkpoint, load_checkpoint
from detector.engine.train import train
from tests.helpers import REPO_ROOT, TINY, compose_config

#: 4 iterations, a checkpoint after each, cheap proposals; no evaluation (not under test here).
RUN = [
    *TINY,
    "solver.max_iter=4",
    "solver.steps=[3]",
    "train.checkpoint_period=1",
    "train.keep_last=0",
    "train.log_period=1",
    "train.tensorboard=false",
    "eval.enabled=false",
    "model.rpn_pre_nms_top_n.training=256",
    "model.rpn_post_nms_top_n.training=64",
]


#: Child process: the same training, made to hang at a chosen point (then the test kills it):
#: ``write``: half-way through writing the ``when``-th checkpoint; ``step``: in iteration ``when``.
CHILD = """
import io, sys, time
from pathlib import Path
import torch
from detector.engine.trainer import Trainer
from detector.engine.train import train
from tests.helpers import compose_config

mode, when, marker, *overrides = sys.argv[1:]
real_save = torch.save
saves = []

def stalling_save(obj, f, *args, **kwargs):
    saves.append(1)
    if mode == "write" and len(saves) == int(when):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])  # half a checkpoint is on disk when the kill comes
        f.flush()
        Path(marker).write_text("in the middle of a checkpoint write")
        time.sleep(600)
    return real_save(obj, f, *args, **kwargs)

real_step = Trainer.run_step

def stalling_step(self):
    if mode == "step" and self.iter + 1 == int(when):
        Path(marker).write_text(f"in iteration {self.iter + 1}")
        time.sleep(600)
    real_step(self)

torch.save = stalling_save
Trainer.run_step = stalling_step
train(compose_config("train", overrides))
"""


def _overrides(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    return [*RUN, f"dataset.root={tmp_path / 'synthetic'}", f"output_dir={out}", *extra]


def _run_child(tmp_path: Path, out: Path, mode: str, when: int, extra: tuple[str, ...]) -> None:
    """Start the child; ``mode`` ``none``: let it finish; otherwise wait until it hangs at
    ``mode``/``when`` and SIGKILL it."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    marker = tmp_path / f"marker_{mode}"
    log = tmp_path / f"child_{mode}.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(script), mode, str(when), str(marker)]
    cmd += _overrides(tmp_path, out, *extra)
    with log.open("w") as stderr:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=stderr, stderr=stderr)
        try:
            if mode == "none":
                assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
                return
            deadline = time.monotonic() + 300
            while not marker.exists():
                assert proc.poll() is None, f"child exited early: {log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "child never reached the kill point"
                time.sleep(0.1)
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=60) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["iteration"] == b["iteration"]
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), f"weights differ: {key}"
    moments_a = a["optimizer"]["state"]
    moments_b = b["optimizer"]["state"]
    assert moments_a.keys() == moments_b.keys() and len(moments_a) > 0
    for key in moments_a:
        assert torch.equal(moments_a[key]["momentum_buffer"], moments_b[key]["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]


def _losses(run_dir: Path) -> dict[int, dict[str, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["iteration"]: {k: v for k, v in r.items() if "loss" in k} for r in records}


def test_sigkill_in_a_checkpoint_write_and_mid_run_then_exact_resume(tmp_path: Path):
    """Uninterrupted run vs. the same run killed twice: first in the middle of writing
    ``model_0000002.pth``, then (resumed with ``train.resume=true``) in iteration 3; the
    second resume names the checkpoint file."""
    reference = tmp_path / "reference"
    _run_child(tmp_path, reference, "none", when=0, extra=())

    out = tmp_path / "run"
    _run_child(tmp_path, out, "write", when=2, extra=())
    temporaries = list(out.glob(".model_0000002.pth.*.tmp"))
    assert len(temporaries) == 1 and temporaries[0].stat().st_size > 0
    assert not (out / "model_0000002.pth").exists()
    previous = out / "model_0000001.pth"
    assert latest_checkpoint(out) == previous
    # the previous checkpoint is complete and identical to the uninterrupted run's
    _assert_same_state(load_checkpoint(previous), load_checkpoint(reference / previous.name))
    digest = _sha256(previous)

    _run_child(tmp_path, out, "step", when=3, extra=("train.resume=true",))
    assert not list(out.glob("*.tmp"))  # the stale temporary was cleaned up on resume
    assert _sha256(previous) == digest  # never rewritten
    assert latest_checkpoint(out) == out / "model_0000002.pth"
    state = load_checkpoint(out / "model_0000002.pth")
    assert set(state) >= {"model", "optimizer", "scheduler", "grad_scaler", "iteration", "rng"}
    assert set(state["rng"][0]) == {"python", "numpy", "torch"} and "config" in state
    _assert_same_state(state, load_checkpoint(reference / "model_0000002.pth"))

    _run_child(tmp_path, out, "none", when=0, extra=(f"train.resume={out / 'model_0000002.pth'}",))

    _assert_same_state(
        load_checkpoint(out / "model_final.pth"), load_checkpoint(reference / "model_final.pth")
    )
    assert _losses(out) == _losses(reference)  # the log reads as one uninterrupted run


def test_resume_rejects_a_missing_checkpoint_path(tmp_path: Path):
    cfg = compose_config(
        "train", _overrides(tmp_path, tmp_path / "run", f"train.resume={tmp_path / 'nope.pth'}")
    )
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        train(cfg)
