"""Hydra multirun: each job of a sweep lands in its own directory, and the config it saves
rebuilds the model in ``tools/eval.py`` without repeating the training overrides."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from detector.engine.build import merge_run_config
from detector.engine.eval_checkpoint import evaluate
from tests.helpers import REPO_ROOT, TINY, compose_config


def test_multirun_jobs_get_their_own_dirs_and_eval_rebuilds_the_model(tmp_path: Path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "tools/train.py", "-m", "solver.optimizer.lr=0.01,0.02", *TINY]
    cmd += [
        "solver.max_iter=1",
        "model.rpn_post_nms_top_n.training=64",
        "eval.enabled=false",
        "train.tensorboard=false",
        f"dataset.root={tmp_path / 'synthetic'}",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]

    for job, lr in enumerate((0.01, 0.02)):
        run = sweep / str(job)
        saved = OmegaConf.load(run / "config.yaml")
        assert saved.solver.optimizer.lr == lr
        assert saved.model.roi_batch_size_per_image == 16  # an override, resolved and saved
        assert (run / "model_final.pth").is_file() and (run / "metrics.jsonl").is_file()

    # only the checkpoint is given: the model (roi batch, sizes, data root) comes from the run
    args = [f"checkpoint={sweep / '1'}", f"output_dir={tmp_path / 'eval'}"]
    metrics = evaluate(compose_config("eval", args), args)
    assert metrics["num_images"] == 4
    assert (tmp_path / "eval" / "metrics.json").is_file()


def test_eval_overrides_reach_the_values_derived_from_them():
    """A run's saved config is resolved; overriding the test size or the data root at
    evaluation must still reach the val transforms and the split roots derived from them,
    while a value the run set by hand stays."""
    trained = compose_config(
        "train", ["dataset=bccd", "dataset.root=/old", "dataset.input.min_size_test=320"]
    )
    saved = OmegaConf.create(OmegaConf.to_container(trained, resolve=True))
    saved.dataset.train.transforms.max_size = 999  # set by hand in the run: must stay
    overrides = [
        "dataset.input.min_size_test=213",
        "dataset.root=/new",
        "dataset.input.max_size_train=500",
    ]
    composed = compose_config("eval", ["checkpoint=x", *overrides])
    merged = merge_run_config(saved, composed, overrides)
    assert merged.dataset.val.transforms.min_sizes == [213]
    assert merged.dataset.val.root == "/new" and merged.dataset.train.root == "/new"
    assert merged.dataset.train.transforms.max_size == 999
    assert merged.dataset.class_names == ["RBC", "WBC", "Platelets"]  # untouched
    assert merged.dataset.train.transforms.min_sizes == [480]  # bccd's training size, untouched
    # without overrides nothing moves
    assert merge_run_config(saved, composed, []).dataset.val.transforms.min_sizes == [320]
