"""A run's life: splits checked before iteration 1, the trained model saved before the final
evaluation, only finite checkpoints named good, the configured solver applied on resume, one
metrics line per iteration, clean command-line errors, and scoring that never overwrites."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detector.engine.checkpoint import FINAL_NAME, last_good_checkpoint, load_checkpoint
from detector.engine.train import FinalEvaluationError, train
from detector.engine.trainer import Trainer
from detector.modeling.meta_arch import FasterRCNN
from tests.helpers import REPO_ROOT, TINY, compose_config, voc_object, write_voc_image

pytestmark = pytest.mark.usefixtures("single_thread")

RUN = [*TINY, "train.tensorboard=false", "model.rpn_post_nms_top_n.training=64"]
#: RUN for a dataset that is not generated
FILES_RUN = [o for o in RUN if not o.startswith("dataset.generator.")]


def _cfg(tmp_path: Path, *extra: str):
    return compose_config(
        "train",
        [*RUN, f"dataset.root={tmp_path / 'synthetic'}", f"output_dir={tmp_path / 'run'}", *extra],
    )


def _voc(root: Path, names: dict[str, str]) -> Path:
    """A VOC folder; ``names`` maps image name -> the object's class name."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, cls in names.items():
        write_voc_image(root, name, 64, 48, [voc_object(cls, (5, 5, 40, 30))])
    (root / "ImageSets/Main/train.txt").write_text("\n".join(names) + "\n")
    return root


def _voc_cfg(tmp_path: Path, root: Path, *, class_name: str, val_split: str):
    """A one-class voc_folder run on ``root`` training on its ``train`` split."""
    return compose_config(
        "train",
        [
            *FILES_RUN,
            "dataset=voc_folder",
            f"dataset.root={root}",
            f"dataset.class_names=[{class_name}]",
            "dataset.num_classes=1",
            "dataset.train_split=train",
            f"dataset.val_split={val_split}",
            f"output_dir={tmp_path / 'run'}",
        ],
    )


def test_the_model_is_saved_before_a_failing_final_evaluation(tmp_path: Path, monkeypatch):
    """Any error in the final evaluation: model_final.pth is on disk and the error names it."""

    def broken(*args, **kwargs):
        raise OSError("cannot decode image val/000003.png: image file is truncated")

    monkeypatch.setattr("detector.engine.train.validate", broken)
    with pytest.raises(FinalEvaluationError) as excinfo:
        train(_cfg(tmp_path))
    final = tmp_path / "run" / FINAL_NAME
    assert final.is_file() and load_checkpoint(final)["iteration"] == 3
    message = str(excinfo.value)
    assert str(final) in message and "cannot decode image" in message
    assert "tools/eval.py checkpoint=" in message


def test_a_missing_val_split_stops_before_iteration_1(tmp_path: Path, monkeypatch):
    """dataset.val_split=val on a dataset that only has a train split file."""
    root = _voc(tmp_path / "voc", {"a": "cat", "b": "cat"})
    steps = []
    monkeypatch.setattr(FasterRCNN, "forward", lambda *a, **k: steps.append(1))
    cfg = _voc_cfg(tmp_path, root, class_name="cat", val_split="val")
    with pytest.raises(FileNotFoundError, match=r"val\.txt"):
        train(cfg)
    assert steps == []  # not one training step


def test_a_class_list_that_matches_nothing_stops_before_training(tmp_path: Path, monkeypatch):
    root = _voc(tmp_path / "voc", {"a": "raccoon", "b": "raccoon"})
    steps = []
    monkeypatch.setattr(FasterRCNN, "forward", lambda *a, **k: steps.append(1))
    cfg = _voc_cfg(tmp_path, root, class_name="Raccoon", val_split="train")
    with pytest.raises(ValueError, match=r"did you mean 'raccoon'"):
        train(cfg)
    assert steps == []


def test_a_poisoned_checkpoint_is_never_written_nor_named_good(tmp_path: Path, monkeypatch):
    """BatchNorm statistics overflow while the loss is still finite: the checkpoint of that
    iteration is refused, and the guard names the last one whose tensors are all finite."""
    real_step = Trainer.run_step

    def run_step(self):
        real_step(self)
        if self.iter == 2:  # the step that becomes iteration 3 overflows a running variance
            self.model.backbone.layer1[1].bn1.running_var.fill_(float("inf"))

    monkeypatch.setattr(Trainer, "run_step", run_step)
    cfg = _cfg(tmp_path, "solver.max_iter=4", "train.checkpoint_period=1", "eval.enabled=false")
    with pytest.raises(FloatingPointError) as excinfo:
        train(cfg)
    run = tmp_path / "run"
    message = str(excinfo.value)
    assert "backbone.layer1.1.bn1.running_var" in message
    assert not (run / "model_0000003.pth").exists()
    assert str(run / "model_0000002.pth") in message
    assert last_good_checkpoint(run) == run / "model_0000002.pth"
    # a poisoned file left by an older version is skipped too
    state = load_checkpoint(run / "model_0000002.pth")
    state["model"]["backbone.layer1.1.bn1.running_var"].fill_(float("nan"))
    torch.save(state, run / "model_0000003.pth")
    assert last_good_checkpoint(run) == run / "model_0000002.pth"


def test_resume_applies_the_configured_solver(tmp_path: Path, caplog):
    """train.resume=... solver.optimizer.lr=0.005 trains on at 0.005 (the schedule's factor
    at the resumed iteration), keeps the momentum buffers, and says what changed."""
    first = _cfg(tmp_path, "train.checkpoint_period=1", "eval.enabled=false")
    train(first)
    ckpt = tmp_path / "run" / "model_0000001.pth"
    before = load_checkpoint(ckpt)
    assert before["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(0.02)
    resumed = compose_config(
        "train",
        [
            *RUN,
            f"dataset.root={tmp_path / 'synthetic'}",
            f"output_dir={tmp_path / 'resumed'}",
            f"train.resume={ckpt}",
            "solver.optimizer.lr=0.005",
            "solver.optimizer.momentum=0.8",
            "eval.enabled=false",
            "train.log_period=1",
        ],
    )
    with caplog.at_level("INFO", logger="detector"):
        train(resumed)
    assert "base lr: 0.02 -> 0.005" in caplog.text and "momentum: 0.9 -> 0.8" in caplog.text
    lines = [
        json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    ]
    # steps 2 and 3: warmup is over (warmup_iters=1), step 2 at lr, step 3 after the step at 2
    assert [r["train/lr"] for r in lines] == pytest.approx([0.005, 0.0005])
    final = load_checkpoint(tmp_path / "resumed" / FINAL_NAME)
    assert final["optimizer"]["param_groups"][0]["momentum"] == 0.8
    assert final["optimizer"]["state"], "momentum buffers were dropped"


def test_metrics_jsonl_has_one_line_per_iteration(tmp_path: Path):
    """The final evaluation's metrics join the last training line instead of a second line
    with the same iteration."""
    train(_cfg(tmp_path, "train.log_period=3"))
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    iterations = [r["iteration"] for r in records]
    assert iterations == sorted(set(iterations)) == [3]
    assert "val/AP" in records[-1] and "train/total_loss" in records[-1]


def _tool(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)},
    )


@pytest.mark.parametrize(
    "overrides",
    [
        ["dataset=bccd", "dataset.root=/nonexistent"],
        ["dataset=voc_folder", "dataset.root=."],  # no class_names
        ["model.num_classes=7"],
    ],
    ids=["missing-root", "no-class-names", "num-classes"],
)
def test_config_errors_print_the_message_alone(tmp_path: Path, overrides: list[str]):
    result = _tool([str(REPO_ROOT / "tools" / "train.py"), *overrides], tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: invalid configuration")
    assert "Traceback" not in result.stderr and "Error executing job" not in result.stderr
    full = _tool(
        [str(REPO_ROOT / "tools" / "train.py"), *overrides], tmp_path, HYDRA_FULL_ERROR="1"
    )
    assert full.returncode == 1 and "Traceback" in full.stderr


def test_scoring_a_results_file_never_overwrites_and_needs_no_model(tmp_path: Path):
    """Scoring a run's coco_results.json keeps the run's metrics.json, writes beside it under
    another name, leaves no Hydra folder in the working directory, imports no torch."""
    run = tmp_path / "run"
    run.mkdir()
    gt = {
        "images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [1, 1, 5, 5],
                "iscrowd": 0,
                "area": 25,
            }
        ],
        "categories": [{"id": 1, "name": "a"}],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    dets = [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.9}]
    (run / "coco_results.json").write_text(json.dumps(dets))
    (run / "metrics.json").write_text('{"AP": 0.123}')
    work = tmp_path / "cwd"
    work.mkdir()
    code = (
        "import runpy, sys; sys.argv = sys.argv[1:]; "
        "runpy.run_path(sys.argv[0], run_name='__main__'); "
        "assert 'torch' not in sys.modules, 'scoring imported torch'"
    )
    args = [
        "-c",
        code,
        str(REPO_ROOT / "tools" / "eval.py"),
        f"results={run / 'coco_results.json'}",
        "dataset=coco",
        f"dataset.root={tmp_path}",
        f"dataset.val.ann_file={tmp_path / 'gt.json'}",
    ]
    first, second = _tool(args, work), _tool(args, work)
    assert first.returncode == 0, first.stderr
    assert (run / "metrics.json").read_text() == '{"AP": 0.123}'
    scored = run / "coco_results.metrics.json"
    assert json.loads(scored.read_text())["AP"] == pytest.approx(1.0)
    assert first.stdout.strip().splitlines()[-1] == f"scores written to {scored}"
    assert second.stdout.strip().splitlines()[-1].endswith("coco_results.metrics-2.json")
    assert list(work.iterdir()) == []
