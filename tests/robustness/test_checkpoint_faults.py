"""Disk full / I/O errors while writing a checkpoint leave the previous file intact."""

from __future__ import annotations

import errno
import hashlib

import pytest
import torch
from torch import nn

from detector.engine import checkpoint as ckpt_mod
from detector.engine.checkpoint import load_checkpoint, save_checkpoint


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("fail_at", ["write", "fsync", "rename"])
def test_failed_checkpoint_write_keeps_previous_file(tmp_path, monkeypatch, fail_at):
    model = nn.Linear(3, 2)
    path = tmp_path / "model_final.pth"
    save_checkpoint(path, model=model, iteration=1)
    before = _digest(path)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if fail_at == "write":

        def partial_write(obj, f, *args, **kwargs):
            f.write(b"half a checkpoint")  # some bytes reach the temp file first
            disk_full()

        monkeypatch.setattr(ckpt_mod.torch, "save", partial_write)
    elif fail_at == "fsync":
        monkeypatch.setattr(ckpt_mod.os, "fsync", disk_full)
    else:
        monkeypatch.setattr(ckpt_mod.os, "replace", disk_full)

    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, model=model, iteration=2)
    monkeypatch.undo()
    assert _digest(path) == before
    assert load_checkpoint(path)["iteration"] == 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "model_final.pth"]
    assert leftovers == [], f"temporary files left behind: {leftovers}"
    # and the next successful write replaces it
    save_checkpoint(path, model=model, iteration=3)
    assert load_checkpoint(path)["iteration"] == 3
