"""Unit tests of the engine's parts: schedules, parameter groups, LR scaling, clipping, mixed
precision, the NaN guard, the scalar storage and checkpoint-directory helpers."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from detector.engine.amp import MixedPrecision
from detector.engine.checkpoint import (
    atomic_torch_save,
    latest_checkpoint,
    prune_checkpoints,
    remove_stale_temporaries,
    resolve_checkpoint_path,
)
from detector.engine.hooks import check_finite, flatten_metrics
from detector.engine.optim import build_param_groups, scale_solver
from detector.engine.schedule import WarmupSchedule
from detector.engine.storage import ScalarStorage
from detector.engine.train import (
    build_optimizer,
    build_scheduler,
    find_resume_checkpoint,
    with_scaled_solver,
)
from detector.engine.trainer import Trainer
from detector.engine.writers import PeriodicLogger
from tests.helpers import compose_config


def test_multistep_schedule_with_warmup_hand_computed():
    s = WarmupSchedule(max_iter=10, steps=(4, 8), gamma=0.1, warmup_iters=2, warmup_factor=0.5)
    assert [s(i) for i in range(10)] == pytest.approx(
        [0.5, 0.75, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01]
    )


def test_cosine_schedule_hand_computed():
    s = WarmupSchedule(max_iter=4, name="cosine")
    assert [s(i) for i in range(5)] == pytest.approx(
        [1, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2, 0]
    )
    with pytest.raises(ValueError, match="unknown schedule 'linear'; allowed: multistep, cosine"):
        WarmupSchedule(max_iter=4, name="linear")


def test_paper_solver_is_lr_0001_then_00001():
    cfg = compose_config("train", ["solver=paper"])
    optimizer = build_optimizer(cfg, nn.Linear(2, 2))
    scheduler = build_scheduler(cfg, optimizer)
    factor = scheduler.lr_lambdas[0]
    assert cfg.solver.optimizer.lr * factor(239_999) == pytest.approx(0.001)
    assert cfg.solver.optimizer.lr * factor(240_000) == pytest.approx(0.0001)
    assert cfg.solver.max_iter == 320_000


def test_cosine_solver_config_composes():
    cfg = compose_config("train", ["solver=cosine_1x"])
    scheduler = build_scheduler(cfg, build_optimizer(cfg, nn.Linear(2, 2)))
    assert scheduler.lr_lambdas[0](45_000 + 500) == pytest.approx(0.5, abs=0.01)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 2, bias=False)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_param_groups_no_decay_on_norm_and_bias():
    model = Tiny()
    groups = build_param_groups(
        model, weight_decay=1e-4, weight_decay_norm=0.0, weight_decay_bias=0.0
    )
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in groups}
    assert by_decay == {
        1e-4: {id(model.conv.weight), id(model.fc.weight)},
        0.0: {id(p) for p in (model.conv.bias, *model.bn.parameters(), *model.gn.parameters())},
    }
    same = build_param_groups(model, weight_decay=1e-4)
    assert len(same) == 1 and len(same[0]["params"]) == 7  # the frozen layer is left out


def test_standard_solver_puts_norm_layers_in_a_no_decay_group():
    cfg = compose_config("train", ["solver=standard_1x"])
    model = Tiny()
    optimizer = build_optimizer(cfg, model)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decay[id(model.bn.weight)] == 0.0 and decay[id(model.conv.bias)] == 1e-4


def test_linear_scaling_rule():
    solver = OmegaConf.create(
        {
            "optimizer": {"lr": 0.02},
            "max_iter": 90000,
            "steps": [60000, 80000],
            "warmup_iters": 1000,
            "reference_batch_size": 16,
        }
    )
    scaled = scale_solver(solver, 8)
    assert scaled.optimizer.lr == pytest.approx(0.01)
    assert (scaled.max_iter, list(scaled.steps), scaled.warmup_iters) == (
        180000,
        [120000, 160000],
        2000,
    )
    assert scale_solver(scaled, 8) is scaled  # idempotent
    solver.reference_batch_size = None
    assert scale_solver(solver, 8) is solver
    solver.reference_batch_size = 0
    with pytest.raises(ValueError, match="reference_batch_size"):
        scale_solver(solver, 8)


def test_train_applies_the_scaling_rule_to_the_config():
    cfg = compose_config(
        "train", ["solver=paper", "solver.reference_batch_size=8", "dataloader.batch_size=16"]
    )
    scaled = with_scaled_solver(cfg)
    assert scaled.solver.optimizer.lr == pytest.approx(0.002)
    assert (scaled.solver.max_iter, list(scaled.solver.steps)) == (160000, [120000])
    assert cfg.solver.optimizer.lr == 0.001  # the composed config is left alone
    assert with_scaled_solver(compose_config("train", ["solver=paper"])).solver.max_iter == 320000


class LossModel(nn.Module):
    """``forward(images, targets)`` -> ``{"loss_a": sum(w * x)}``: gradient = the input."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))

    def forward(self, images, targets):
        return {"loss_a": (self.w * images[0]).sum()}


def _trainer(model: nn.Module, data: list, **kwargs) -> Trainer:
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    return Trainer(
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0),
        data=iter(data),
        max_iter=len(data),
        device=torch.device("cpu"),
        **kwargs,
    )


def test_resume_restores_the_position_and_keeps_the_configured_schedule():
    def trainer(max_iter: int) -> Trainer:
        model = LossModel()
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
        schedule = WarmupSchedule(max_iter=max_iter, name="cosine")
        return Trainer(
            model=model,
            optimizer=optimizer,
            scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
            data=iter([([torch.ones(3)], [{}])] * 2),
            max_iter=2,
            device=torch.device("cpu"),
        )

    first = trainer(4)
    first.train()
    extended = trainer(8)  # resumed with a longer schedule
    extended.load_state_dict(first.state_dict())
    assert extended.iter == 2 and extended.scheduler.last_epoch == 2
    assert extended.scheduler.lr_lambdas[0].max_iter == 8
    assert torch.equal(extended.model.w, first.model.w)
    momentum = extended.optimizer.state[extended.model.w]["momentum_buffer"]
    assert torch.equal(momentum, first.optimizer.state[first.model.w]["momentum_buffer"])


def test_gradient_clipping_bounds_the_update():
    model = LossModel()
    trainer = _trainer(model, [([torch.tensor([30.0, 40.0, 0.0])], [{}])], clip_grad_norm=5.0)
    trainer.train()
    assert model.w.detach().tolist() == pytest.approx([-3.0, -4.0, 0.0])  # norm 50 -> 5
    unclipped = LossModel()
    _trainer(unclipped, [([torch.tensor([30.0, 40.0, 0.0])], [{}])]).train()
    assert unclipped.w.detach().tolist() == pytest.approx([-30.0, -40.0, 0.0])


def test_nan_guard_stops_before_the_update():
    model = LossModel()
    batch = ([torch.tensor([1.0, float("inf"), 0.0])], [{}])
    trainer = _trainer(model, [([torch.ones(3)], [{}]), batch])
    with pytest.raises(FloatingPointError, match=r"non-finite loss in iteration 2: \{'loss_a'"):
        trainer.train()
    assert model.w.detach().tolist() == [-1.0, -1.0, -1.0] and trainer.iter == 1
    with pytest.raises(FloatingPointError, match="iteration 7"):
        check_finite({"loss_ok": 1.0, "loss_bad": float("-inf")}, 7)


def test_mixed_precision_on_cpu():
    with pytest.raises(ValueError, match="float16 is not supported on the CPU"):
        MixedPrecision(enabled=True, dtype="float16", device=torch.device("cpu"))
    with pytest.raises(ValueError, match="train.amp_dtype='fp8'"):
        MixedPrecision(enabled=False, dtype="fp8", device=torch.device("cpu"))
    amp = MixedPrecision(enabled=True, dtype="bfloat16", device=torch.device("cpu"))
    assert not amp.scaler.is_enabled()  # bf16 needs no loss scaling
    with amp.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    model = LossModel()
    _trainer(model, [([torch.ones(3)], [{}])], precision=amp).train()
    assert model.w.detach().tolist() == [-1.0, -1.0, -1.0]


def test_storage_cursors_see_every_point_once():
    storage = ScalarStorage(max_history=3)
    storage.put("a", 1.0, 1)
    storage.put("a", 2.0, 2)
    seen, cursor = storage.since(0)
    assert seen == {"a": [(1, 1.0), (2, 2.0)]}
    storage.put("val/AP", 0.5, 2)  # recorded late for iteration 2
    seen, cursor = storage.since(cursor)
    assert seen == {"val/AP": [(2, 0.5)]} and storage.latest("a") == (2, 2.0)
    assert storage.since(cursor) == ({}, cursor)


def test_log_file_drops_lines_past_the_resumed_iteration_and_cut_lines(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1}\n{"iteration": 2}\n{"iteration": 3}\n{"iterat')
    writer = PeriodicLogger(period=1, path=path)
    writer.trainer = SimpleNamespace(iter=2)  # resumed from iteration 2
    writer.before_train()
    assert path.read_text() == '{"iteration": 1}\n{"iteration": 2}\n'


def test_flatten_metrics():
    metrics = {"AP": 0.5, "eval_type": "coco", "voc": {"mAP": 0.25}, "n": 3, "ok": True}
    assert flatten_metrics(metrics) == {"AP": 0.5, "voc/mAP": 0.25, "n": 3.0}


def test_checkpoint_directory_helpers(tmp_path: Path):
    assert latest_checkpoint(tmp_path) is None
    for it in (5, 10, 15):
        atomic_torch_save({"iteration": it}, tmp_path / f"model_{it:07d}.pth")
    (tmp_path / "model_best.pth").write_bytes(b"x")
    (tmp_path / ".model_0000020.pth.abc.tmp").write_bytes(b"half")
    assert latest_checkpoint(tmp_path) == tmp_path / "model_0000015.pth"
    assert resolve_checkpoint_path(tmp_path) == tmp_path / "model_0000015.pth"
    assert prune_checkpoints(tmp_path, keep_last=2) == [tmp_path / "model_0000005.pth"]
    assert remove_stale_temporaries(tmp_path) == [tmp_path / ".model_0000020.pth.abc.tmp"]
    assert find_resume_checkpoint(True, tmp_path) == tmp_path / "model_0000015.pth"
    assert find_resume_checkpoint(False, tmp_path) is None
    atomic_torch_save({"iteration": 20}, tmp_path / "model_final.pth")
    assert find_resume_checkpoint("true", tmp_path) == tmp_path / "model_final.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model_0000010.pth",
        "model_0000015.pth",
        "model_best.pth",
        "model_final.pth",
    ]
