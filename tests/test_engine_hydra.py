"""Hydra multirun: each job of a sweep lands in its own directory, and the config it saves
rebuilds the model in ``tools/eval.py`` without repeating the training overrides."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

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
