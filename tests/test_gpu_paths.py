"""CUDA code paths: CPU-side tests where possible (AMP dtype selection and GradScaler use,
device placement in the training step, the GPU kit's parts in dry-run mode and its summary),
and tests marked ``cuda`` that need a GPU (skipped without one; ``tools/gpu_check.sh`` runs them
with ``pytest -m cuda``)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from detector.benchmarks import gpu
from detector.engine import amp
from detector.engine.amp import MixedPrecision
from detector.engine.build import build_model
from detector.engine.trainer import Trainer
from tests.helpers import REPO_ROOT, TINY, build_model_from_config, compose_config

CUDA = torch.device("cuda")
HAS_CUDA = torch.cuda.is_available()


def cuda_test(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Marked ``cuda`` (selected by ``pytest -m cuda``) and skipped without a GPU."""
    fn = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")(fn)
    return pytest.mark.cuda(fn)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA that reports itself available with bfloat16 (nothing is allocated on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


# --------------------------------------------------------------------------- AMP selection
def test_cuda_bfloat16_autocasts_without_a_grad_scaler(fake_cuda: None) -> None:
    mp = MixedPrecision(enabled=True, dtype="bfloat16", device=CUDA)
    assert mp.dtype is torch.bfloat16
    assert not mp.scaler.is_enabled()  # bf16 has float32's range: no loss scaling
    ctx = mp.autocast()
    assert isinstance(ctx, torch.autocast)
    assert (ctx.device, ctx.fast_dtype) == ("cuda", torch.bfloat16)


def test_cuda_float16_autocasts_with_a_grad_scaler(fake_cuda: None) -> None:
    mp = MixedPrecision(enabled=True, dtype="float16", device=CUDA)
    assert mp.dtype is torch.float16
    assert mp.scaler.is_enabled()
    assert mp.scaler.get_scale() == 2.0**16  # the default initial scale, before any step
    ctx = mp.autocast()
    assert (ctx.device, ctx.fast_dtype) == ("cuda", torch.float16)


def test_disabled_precision_is_a_pass_through_on_cuda(fake_cuda: None) -> None:
    mp = MixedPrecision(enabled=False, dtype="float16", device=CUDA)
    assert not mp.scaler.is_enabled()
    assert not isinstance(mp.autocast(), torch.autocast)


def test_cuda_bfloat16_is_refused_on_a_gpu_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100-SXM2-16GB")
    with pytest.raises(ValueError, match="V100.*no bfloat16.*amp_dtype=float16"):
        MixedPrecision(enabled=True, dtype="bfloat16", device=CUDA)


def test_cpu_float16_is_refused_and_cpu_bfloat16_has_no_scaler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValueError, match="float16 is not supported on the CPU"):
        MixedPrecision(enabled=True, dtype="float16", device=torch.device("cpu"))
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: True)  # no emulation warning
    mp = MixedPrecision(enabled=True, dtype="bfloat16", device=torch.device("cpu"))
    assert not mp.scaler.is_enabled()
    assert (mp.autocast().device, mp.autocast().fast_dtype) == ("cpu", torch.bfloat16)


@pytest.mark.parametrize(
    ("dtype", "device", "match"),
    [("float32", "cuda", "amp_dtype='float32' is not supported"), ("bfloat16", "meta", "meta")],
)
def test_unsupported_amp_settings_are_refused(
    fake_cuda: None, dtype: str, device: str, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        MixedPrecision(enabled=True, dtype=dtype, device=torch.device(device))


# --------------------------------------------------------------------------- device placement
class RecordingDetector(nn.Module):
    """Stands in for the detector: records where its inputs are and returns one loss from its
    own (CPU) parameter, so the step runs whatever the inputs' device."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2))
        self.seen: list[tuple[list[torch.device], list[dict[str, Any]]]] = []

    def forward(self, images: list[Tensor], targets: list[dict[str, Any]]) -> dict[str, Tensor]:
        target_places = [
            {k: (v.device if isinstance(v, Tensor) else v) for k, v in t.items()} for t in targets
        ]
        self.seen.append(([img.device for img in images], target_places))
        return {"loss_a": (self.weight**2).sum(), "loss_b": self.weight.sum()}


def _batch() -> tuple[list[Tensor], list[dict[str, Any]]]:
    images = [torch.rand(3, 8, 8), torch.rand(3, 6, 10)]
    targets = [
        {"boxes": torch.tensor([[1.0, 1.0, 4.0, 5.0]]), "labels": torch.tensor([1]), "image_id": 7},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "file": "b.png"},
    ]
    return images, targets


def _trainer(model: nn.Module, device: torch.device, **kw: Any) -> Trainer:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return Trainer(
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0),
        data=iter([_batch()] * 3),
        max_iter=3,
        device=device,
        **kw,
    )


def test_run_step_moves_images_and_target_tensors_to_the_device() -> None:
    model = RecordingDetector()
    trainer = _trainer(model, torch.device("meta"))  # a device that allocates nothing
    trainer.run_step()
    ((image_devices, targets),) = model.seen
    meta = torch.device("meta")
    assert image_devices == [meta, meta]
    assert targets[0] == {"boxes": meta, "labels": meta, "image_id": 7}
    assert targets[1] == {"boxes": meta, "labels": meta, "file": "b.png"}  # non-tensors as given
    assert model.weight.grad is not None and trainer.latest_losses.keys() == {"loss_a", "loss_b"}


def test_run_step_asks_for_the_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``device=cuda`` every image (non-blocking) and target tensor is sent to it; ``.to``
    is recorded and returns the CPU tensor, so nothing is allocated."""
    calls: list[tuple[torch.device, bool]] = []
    original = Tensor.to

    def recording_to(self: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        target = args[0] if args else kwargs.get("device")
        if isinstance(target, torch.device) and target.type == "cuda":
            calls.append((target, bool(kwargs.get("non_blocking", False))))
            return self
        return original(self, *args, **kwargs)

    model = RecordingDetector()
    trainer = _trainer(model, CUDA)  # disabled precision: a disabled cuda GradScaler
    monkeypatch.setattr(Tensor, "to", recording_to)
    trainer.run_step()
    monkeypatch.undo()
    assert calls == [(CUDA, True)] * 2 + [(CUDA, False)] * 4  # 2 images, then boxes + labels x 2


class SqrtLoss(nn.Module):
    """loss = sum(sqrt(w - 1)) + sum(w): at ``w = 1`` finite (2.0), its gradient infinite."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((2,), value))

    def forward(self, images: list[Tensor], targets: list[dict[str, Any]]) -> dict[str, Tensor]:
        return {"loss_a": torch.sqrt(self.weight - 1).sum(), "loss_b": self.weight.sum()}


def _scaled_trainer(model: nn.Module, **kw: Any) -> tuple[Trainer, torch.amp.GradScaler]:
    """A CPU trainer whose precision has an enabled GradScaler (as fp16 on CUDA has), so the
    step's scaler calls run for real without a GPU."""
    mp = MixedPrecision(enabled=False, dtype="float16", device=torch.device("cpu"))
    mp.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    return _trainer(model, torch.device("cpu"), precision=mp, **kw), mp.scaler


def test_scaled_step_updates_with_the_unscaled_gradient() -> None:
    """The loss is scaled for backward and the gradient unscaled (before clipping) for the
    step: the update is lr * the true gradient, not 1024 times it or 1/1024 of it."""
    model = SqrtLoss(5.0)  # d/dw = 0.5 / sqrt(w - 1) + 1 = 1.25
    trainer, scaler = _scaled_trainer(model, clip_grad_norm=100.0)
    trainer.run_step()
    assert torch.allclose(model.weight.detach(), torch.full((2,), 5.0 - 0.1 * 1.25))
    assert scaler.get_scale() == 1024.0


def test_scaled_step_with_an_infinite_gradient_is_skipped() -> None:
    """A finite loss with an infinite gradient (as float16 overflow gives): the scaler skips
    the optimizer step and halves the scale; the weights stay as they were."""
    model = SqrtLoss(1.0)
    trainer, scaler = _scaled_trainer(model)
    trainer.run_step()
    assert torch.equal(model.weight.detach(), torch.ones(2))
    assert scaler.get_scale() == 512.0


# --------------------------------------------------------------------------- the kit, on CPU
@pytest.mark.parametrize(
    ("dtype", "device", "amp_on", "amp_dtype"),
    [
        ("bf16", "cuda", "true", "bfloat16"),
        ("fp16", "cuda", "true", "float16"),
        ("fp32", "cuda", "false", "bfloat16"),
        ("fp16", "cpu", "false", "bfloat16"),  # CPU float16 autocast is refused: float32
        ("bf16", "cpu", "true", "bfloat16"),
    ],
)
def test_kit_training_overrides_compose(
    tmp_path: Path, dtype: str, device: str, amp_on: str, amp_dtype: str
) -> None:
    spec = gpu.TrainSpec(model="r101_c4", dtype=dtype, device=device, batch=4, size=640)
    overrides = gpu.train_overrides(spec, work_dir=tmp_path, run_dir=tmp_path / "r", world_size=2)
    cfg = compose_config("train", overrides)
    assert (str(cfg.train.amp).lower(), cfg.train.amp_dtype) == (amp_on, amp_dtype)
    assert cfg.model.depth == 101 and cfg.device == device
    assert cfg.dataloader.batch_size == 8  # 4 per process x 2 processes
    assert list(cfg.dataset.input.min_sizes_train) == [640]
    assert cfg.dataset.generator.image_size == 640 and cfg.eval.enabled is False
    assert cfg.solver.max_iter == 40 and cfg.train.log_period == 1
    assert cfg.model.init_checkpoint == str(tmp_path / "init" / "r101_c4_640.pth")
    assert cfg.output_dir == str(tmp_path / "r")


def test_kit_names_and_rates() -> None:
    assert gpu.model_config("r50_fpn") == "faster_rcnn_r50_fpn"
    with pytest.raises(ValueError, match="unknown model 'r99_c4'; known: .*r101_c4"):
        gpu.model_config("r99_c4")
    rates = gpu.throughput([5.0, 1.0, 0.5, 0.5], images_per_step=4, warmup=1)
    assert rates["images_per_s"] == pytest.approx(12 / 2.0)
    assert rates["median_step_s"] == 0.5 and rates["first_step_s"] == 5.0
    with pytest.raises(ValueError, match="warmup < iters"):
        gpu.TrainSpec(iters=10, warmup=10)


def test_kit_initial_weights_keep_a_random_r101_c4_in_float16_range(
    tmp_path: Path, single_thread: None
) -> None:
    """As built, a random R101-C4 (identity frozen BatchNorm) reaches activations above
    float16's 65504; from the kit's initial checkpoint every stage stays far below it."""
    spec = gpu.TrainSpec(model="r101_c4", device="cpu", size=128)
    cfg = compose_config("train", gpu.train_overrides(spec, work_dir=tmp_path, run_dir=tmp_path))
    OmegaConf.update(cfg, "model.rpn_post_nms_top_n.testing", 20)
    path = gpu.initial_checkpoint(cfg, torch.device("cpu"), tmp_path / "init.pth")
    torch.manual_seed(1)
    model = build_model(cfg, torch.device("cpu"))
    images = [torch.rand(3, 128, 128)]
    peaks: dict[str, float] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _args: Any, out: Tensor) -> None:
            if out.numel():  # res5 gets no RoI when the RPN proposes nothing
                peaks[name] = max(peaks.get(name, 0.0), float(out.abs().max()))

        return hook

    stages = {"layer3": model.backbone.layer3, "res5": model.roi_heads.box_head.res5}
    for name, module in stages.items():
        module.register_forward_hook(record(name))
    with torch.no_grad():
        model.eval()(images)
    assert max(peaks.values()) > 65504  # float16 would overflow
    model.load_state_dict(torch.load(path, weights_only=True)["model"])
    peaks.clear()
    with torch.no_grad():
        model.eval()(images)
    assert peaks.keys() == {"layer3", "res5"} and max(peaks.values()) < 1000


def _write_parts(out: Path, rows: list[tuple[str, ...]]) -> None:
    (out / "parts.tsv").write_text("".join("\t".join(r) + "\n" for r in rows))


def test_kit_parts_dry_run_on_cpu_and_the_summary(tmp_path: Path, single_thread: None) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    common = ["--work", str(work), "--dry-run"]
    assert gpu.main(["data", *common]) == 0
    assert (work / "datasets" / "synthetic_96" / "annotations" / "instances_train.json").is_file()
    train_args = ["train", "--model", "r18_c4", "--dtype", "fp16", "--out", str(out), *common]
    assert gpu.main(train_args) == 0
    result = json.loads((out / "train_r18_c4_fp16.json").read_text())
    assert result["amp_dtype"] == "float32"  # fp16 is CUDA-only: the CPU dry run is float32
    assert result["spec"]["iters"] == 2 and result["spec"]["size"] == 96
    assert result["timed_steps"] == 1 and result["images_per_s"] > 0
    assert result["peak_allocated_gib"] is None and result["grad_scaler"]["enabled"] is False
    assert not list((work / "runs" / "train_r18_c4_fp16").glob("*.pth"))
    assert (work / "init" / "r18_c4_96.pth").is_file()
    infer_args = ["infer", "--model", "r18_c4", "--dtypes", "fp32", "--out", str(out)]
    assert gpu.main([*infer_args, "--dry-run"]) == 0
    rows = json.loads((out / "infer_r18_c4.json").read_text())["rows"]
    assert [r["dtype"] for r in rows] == ["fp32"] and rows[0]["label"] == "R18-C4"
    assert rows[0]["ours_images_per_s"] > 0 and rows[0]["torchvision_images_per_s"] > 0
    assert rows[0]["identical"] is True and rows[0]["ours_share_of_peak"] is not None

    (out / "cuda_tests.log").write_text("....\n3 passed, 2 skipped in 4.20s\n")
    (out / "train_r50_fpn_bf16.log").write_text("step\rstep\nFloatingPointError: non-finite loss\n")
    (out / "env.json").write_text(json.dumps(gpu.environment()))
    _write_parts(
        out,
        [
            ("cuda_tests", "0", "100.0", "104.5", "90", ""),
            ("train_r18_c4_fp16", "0", "104.5", "120.0", "70", ""),
            ("train_r50_fpn_bf16", "1", "120.0", "125.0", "60", ""),
            ("infer_r18_c4", "124", "125.0", "185.0", "60", ""),
            ("torchrun", "-", "-", "-", "-", "skipped: 1 GPU(s) visible"),
        ],
    )
    assert gpu.main(["summary", str(out)]) == 1  # a part failed
    summary = json.loads((out / "gpu_check.json").read_text())
    status = {p["part"]: (p["status"], p["key_numbers"]) for p in summary["parts"]}
    assert status["cuda_tests"] == ("ok", "3 passed, 2 skipped in 4.20s")
    assert status["train_r18_c4_fp16"][0] == "ok"
    assert "images/s" in status["train_r18_c4_fp16"][1]
    assert status["train_r50_fpn_bf16"] == ("failed", "FloatingPointError: non-finite loss")
    assert status["infer_r18_c4"][0] == "timeout"  # 124: timeout's status
    assert status["torchrun"] == ("skipped", "skipped: 1 GPU(s) visible")
    assert summary["failed"] == ["train_r50_fpn_bf16", "infer_r18_c4"]
    assert summary["total_s"] == pytest.approx(85.0)
    md = (out / "gpu_check.md").read_text()
    assert "| part" in md and "| train_r18_c4_fp16" in md and "FAILED" in md


def test_gpu_check_script_is_valid_bash() -> None:
    script = REPO_ROOT / "tools" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0


# --------------------------------------------------------------------------- on a GPU
def _tiny_c4_on_cuda() -> nn.Module:
    torch.manual_seed(0)
    return build_model_from_config(
        "faster_rcnn_r18_c4", num_classes=4, overrides={"model.roi_batch_size_per_image": 16}
    ).to(CUDA)


def _cpu_batches(n: int) -> list[tuple[list[Tensor], list[dict[str, Any]]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 160, generator=g) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 70.0, 90.0]]), "labels": torch.tensor([k + 1])}
        for k in range(2)
    ]
    return [(images, targets)] * n


@cuda_test
def test_cuda_fp16_training_steps_use_the_grad_scaler_on_the_gpu() -> None:
    model = _tiny_c4_on_cuda()
    seen: list[tuple[set[str], bool, torch.dtype]] = []

    def pre_hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
        images, targets = args
        devices = {str(t.device) for t in images} | {
            str(v.device) for t in targets for v in t.values()
        }
        seen.append((devices, torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")))

    model.register_forward_pre_hook(pre_hook)
    mp = MixedPrecision(enabled=True, dtype="float16", device=CUDA)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    trainer = Trainer(
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0),
        data=iter(_cpu_batches(3)),
        max_iter=3,
        device=CUDA,
        precision=mp,
    )
    for _ in range(3):
        trainer.run_step()
    assert seen == [({"cuda:0"}, True, torch.float16)] * 3
    assert mp.scaler.is_enabled() and mp.scaler.get_scale() <= 2.0**16
    assert trainer.state_dict()["grad_scaler"]["scale"] == mp.scaler.get_scale()
    assert all(p.device.type == "cuda" for p in model.parameters())


@cuda_test
def test_cuda_bf16_autocast_forward_runs_the_convolutions_in_bfloat16() -> None:
    """(torchvision's FrozenBatchNorm2d then promotes each convolution's output to float32:
    its float32 scale and offset win the type promotion.)"""
    model = _tiny_c4_on_cuda().eval()
    dtypes: list[torch.dtype] = []
    conv = model.backbone.layer3[0].conv1
    conv.register_forward_hook(lambda _m, _a, out: dtypes.append(out.dtype))
    mp = MixedPrecision(enabled=True, dtype="bfloat16", device=CUDA)
    with torch.no_grad(), mp.autocast():
        detections = model([torch.rand(3, 128, 160, device=CUDA)])
    assert dtypes == [torch.bfloat16] and not mp.scaler.is_enabled()
    assert detections[0]["boxes"].device.type == "cuda"
    assert torch.isfinite(detections[0]["boxes"].float()).all()


@cuda_test
def test_cuda_amp_training_then_float32_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train(cfg) on the GPU with fp16 AMP; the final evaluation runs without autocast on
    float32 weights."""
    from detector.engine import validation
    from detector.engine.train import train

    seen: list[tuple[bool, torch.dtype, str]] = []
    original = validation.evaluate_model

    def evaluate_model(model: Any, dataset: Any, **kwargs: Any) -> dict[str, Any]:
        def pre_hook(m: nn.Module, args: tuple[Any, ...]) -> None:
            p = next(m.parameters())
            seen.append((torch.is_autocast_enabled("cuda"), p.dtype, str(args[0][0].device)))

        handle = model.register_forward_pre_hook(pre_hook)
        try:
            return original(model, dataset, **kwargs)
        finally:
            handle.remove()

    monkeypatch.setattr(validation, "evaluate_model", evaluate_model)
    cfg = compose_config(
        "train",
        [
            *TINY,
            f"dataset.root={tmp_path / 'data'}",
            f"output_dir={tmp_path / 'run'}",
            "device=cuda",
            "train.amp=true",
            "train.amp_dtype=float16",
        ],
    )
    metrics = train(cfg)
    assert "AP" in metrics
    assert seen and all(s == (False, torch.float32, "cuda:0") for s in seen)
    state = torch.load(tmp_path / "run" / "model_final.pth", map_location="cpu", weights_only=False)
    assert state["grad_scaler"]  # float16 training saved its scaler's state


@cuda_test
def test_cuda_kit_training_part_measures_peak_memory(tmp_path: Path) -> None:
    spec = gpu.TrainSpec(
        model="r18_c4",
        dtype="fp16",
        iters=3,
        warmup=1,
        batch=2,
        size=128,
        workers=0,
        num_train=4,
        roi_batch=16,
    )
    result = gpu.run_train(spec, out_dir=tmp_path / "out", work_dir=tmp_path / "work")
    assert result["amp_dtype"] == "float16" and result["device"].startswith("cuda")
    assert result["peak_allocated_gib"] > 0 and result["grad_scaler"]["enabled"]
    assert result["images_per_s"] > 0 and result["timed_steps"] == 2
