"""Hooks on real (tiny) runs: NaN guard, TensorBoard scalars, log file, periodic evaluation,
keep-last-K and best checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from detector.engine.checkpoint import load_checkpoint
from detector.engine.schedule import WarmupSchedule
from detector.engine.train import train
from detector.modeling.meta_arch import FasterRCNN
from tests.helpers import TINY, compose_config

pytestmark = pytest.mark.usefixtures("single_thread")

CHEAP = [
    *TINY,
    "model.rpn_pre_nms_top_n.training=256",
    "model.rpn_post_nms_top_n.training=64",
]
LOSSES = ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box")


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch
):
    real_forward = FasterRCNN.forward
    calls = []

    def forward(self, images, targets=None):
        out = real_forward(self, images, targets)
        calls.append(1)
        if self.training and len(calls) == 3:  # iteration 3
            out["loss_cls"] = out["loss_cls"] * float("nan")
        return out

    monkeypatch.setattr(FasterRCNN, "forward", forward)
    out = tmp_path / "run"
    cfg = compose_config(
        "train",
        [
            *CHEAP,
            "solver.max_iter=4",
            "train.checkpoint_period=2",
            "eval.enabled=false",
            "train.tensorboard=false",
            f"dataset.root={tmp_path / 'synthetic'}",
            f"output_dir={out}",
        ],
    )
    with pytest.raises(FloatingPointError) as info:
        train(cfg)
    message = str(info.value)
    assert "non-finite loss in iteration 3" in message and "'loss_cls': nan" in message
    assert f"last good checkpoint is {out / 'model_0000002.pth'}" in message
    files = sorted(p.name for p in out.glob("*.pth"))
    assert files == ["model_0000002.pth"]  # nothing written after the NaN
    state = load_checkpoint(out / "model_0000002.pth")
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def _scalars(event_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(event_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_log_file_periodic_eval_and_checkpoints(tmp_path: Path):
    out = tmp_path / "run"
    cfg = compose_config(
        "train",
        [
            *CHEAP,
            "solver.max_iter=4",
            "train.log_period=2",
            "train.checkpoint_period=1",
            "train.keep_last=2",
            "train.eval_period=2",
            "train.best_metric=AR100",
            f"dataset.root={tmp_path / 'synthetic'}",
            f"output_dir={out}",
        ],
    )
    metrics = train(cfg)

    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    scalars = _scalars(out / "tensorboard")
    for name in (*LOSSES, "total_loss", "lr", "images_per_sec"):
        assert [step for step, _ in scalars[f"train/{name}"]] == [1, 2, 3, 4], name
    for name in ("AP", "AP50", "AR100"):
        assert [step for step, _ in scalars[f"val/{name}"]] == [2, 4], name
    assert scalars["val/AP"][-1][1] == pytest.approx(metrics["AP"], abs=1e-6)
    schedule = WarmupSchedule(max_iter=4, steps=(2,), warmup_iters=1, warmup_factor=0.001)
    lrs = [value for _, value in scalars["train/lr"]]
    assert lrs == pytest.approx([0.02 * schedule(k) for k in range(4)], rel=1e-6)
    assert all(v > 0 for _, v in scalars["train/images_per_sec"])

    # metrics.jsonl: one line per log period with the period's mean losses; the final
    # evaluation's metrics join the last line (one line per iteration, issue 13)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [2, 4]
    for name in LOSSES:
        tb = [v for _, v in scalars[f"train/{name}"]]
        assert records[0][f"train/{name}"] == pytest.approx((tb[0] + tb[1]) / 2, rel=1e-6)
    assert records[0]["val/AP"] == pytest.approx(scalars["val/AP"][0][1], abs=1e-6)
    assert records[0]["eta_seconds"] > 0 and records[1]["val/AP"] == pytest.approx(metrics["AP"])
    assert "train/loss_cls" in records[1]
    assert (out / "eval" / "0000002" / "metrics.json").is_file()  # the periodic evaluation

    # keep the last 2 periodic checkpoints; the final and the best one are never pruned
    assert sorted(p.name for p in out.glob("model_*.pth")) == [
        "model_0000002.pth",
        "model_0000003.pth",
        "model_best.pth",
        "model_final.pth",
    ]
    ar100 = [value for _, value in scalars["val/AR100"]]
    best = load_checkpoint(out / "model_best.pth")
    best_state = best["hooks"]["BestCheckpointer"]
    assert best_state["best"] == pytest.approx(max(ar100), abs=1e-6)
    assert best["iteration"] == best_state["iteration"] == [2, 4][ar100.index(max(ar100))]
    assert math.isfinite(best_state["best"])
