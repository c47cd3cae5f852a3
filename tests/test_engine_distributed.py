"""Distributed training: 2 CPU processes (torchrun, gloo) reproduce one process with the same
total batch; evaluation sharded over the ranks equals the single-process evaluation.

The detector samples anchors and RoIs with torch's global RNG, which differs between one
process (both images draw from one generator) and two (one generator each). To compare the
engine and not the sampling noise, both runs replace torchvision's
``BalancedPositiveNegativeSampler`` by a deterministic one (the first positives and
negatives). BatchNorm is ``frozen_bn`` (per-rank batch statistics of trainable BN would differ
from the 2-image statistics of one process; SyncBN is not used). Every image is resized into
96 x 96 so that it pads to the same 96 x 96 canvas whether it is batched with another image
(one process) or alone (one rank): otherwise the padded size, hence the anchor set, differs.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

from detector.data.loader import GroupedInfiniteBatchSampler, SeededBatchSampler
from detector.engine.build import build_model
from detector.engine.checkpoint import load_checkpoint
from detector.engine.train import train
from detector.engine.validation import validate
from tests.helpers import REPO_ROOT, TINY, compose_config, first_k_sampler

RUN = [
    *TINY,
    "dataset.input.max_size_train=96",
    "model.norm=frozen_bn",
    "solver.max_iter=3",
    "solver.steps=[2]",
    "solver.optimizer.lr=0.005",
    "train.log_period=1",
    "train.tensorboard=false",
    "model.rpn_pre_nms_top_n.training=256",
    "model.rpn_post_nms_top_n.training=64",
]
#: Relative tolerance on every per-iteration loss and on the final weights (max abs diff over
#: max abs value of each tensor): gradients are summed in a different order (per-rank
#: backward + all-reduce average vs. one backward over both images). Measured: 2.3e-7 on the
#: losses, 4.4e-7 on the weights.
RTOL = 1e-5


pytestmark = pytest.mark.usefixtures("single_thread")

CHILD = """
import sys
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from detector.engine.train import train
from tests.helpers import compose_config, first_k_sampler

BalancedPositiveNegativeSampler.__call__ = first_k_sampler
train(compose_config("train", sys.argv[1:]))
"""


def _losses(run_dir: Path) -> dict[int, dict[str, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        r["iteration"]: {k: v for k, v in r.items() if "loss" in k}
        for r in records
        if "train/total_loss" in r
    }


def test_sharded_sampler_splits_each_global_batch_and_seeds_by_position():
    group_ids = [0, 1] * 10
    single = SeededBatchSampler(
        sampler=GroupedInfiniteBatchSampler(group_ids=group_ids, batch_size=4, seed=3)
    )
    shards = [
        SeededBatchSampler(
            sampler=GroupedInfiniteBatchSampler(
                group_ids=group_ids, batch_size=2, seed=3, num_shards=2, shard=rank
            )
        )
        for rank in (0, 1)
    ]
    wholes = list(itertools.islice(single, 12))  # 48 samples: more than 2 epochs
    for whole, part0, part1 in zip(wholes, *shards):
        assert whole == part0 + part1  # same indices and the same per-sample seeds
    assert len({seed for batch in wholes for _, seed in batch}) == 48
    for batch in wholes:  # aspect-ratio groups hold across the global batch
        assert len({group_ids[index] for index, _ in batch}) == 1
    resumed = GroupedInfiniteBatchSampler(group_ids=group_ids, batch_size=4, seed=3, start=7)
    assert list(itertools.islice(SeededBatchSampler(sampler=resumed), 5)) == wholes[7:]


def _aborted_at_shutdown(stderr: str, run_dir: Path) -> bool:
    """The run wrote its final checkpoint and its metrics, then a rank died in std::terminate."""
    finished = (run_dir / "model_final.pth").is_file() and (run_dir / "metrics.json").is_file()
    return finished and "terminate called without an active exception" in stderr


def test_two_gloo_processes_reproduce_one_process(tmp_path: Path, monkeypatch):
    data = [f"dataset.root={tmp_path / 'synthetic'}"]
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(script), *RUN, *data, f"output_dir={ddp_dir}"]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 and _aborted_at_shutdown(done.stderr, ddp_dir):
        # a finished run whose gloo threads aborted interpreter shutdown (std::terminate after
        # destroy_process_group; seen once in ~10 loaded CI runs, never alone): run it again
        shutil.rmtree(ddp_dir)
        done = subprocess.run(
            cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
        )
    assert done.returncode == 0, done.stderr[-4000:]

    monkeypatch.setattr(BalancedPositiveNegativeSampler, "__call__", first_k_sampler)
    cfg = compose_config("train", [*RUN, *data, f"output_dir={single_dir}", "eval.enabled=false"])
    train(cfg)

    ddp, single = _losses(ddp_dir), _losses(single_dir)
    assert sorted(ddp) == sorted(single) == [1, 2, 3]
    for it in single:
        assert ddp[it] == pytest.approx(single[it], rel=RTOL), f"iteration {it}"
    ddp_state = load_checkpoint(ddp_dir / "model_final.pth")
    single_state = load_checkpoint(single_dir / "model_final.pth")
    assert ddp_state["data"]["batch_size"] == 2 and len(ddp_state["rng"]) == 2
    for key, value in single_state["model"].items():
        if value.is_floating_point():
            scale = max(float(value.abs().max()), 1e-6)
            diff = float((ddp_state["model"][key] - value).abs().max())
            assert diff <= RTOL * scale, f"{key}: max diff {diff:.3g} (scale {scale:.3g})"

    # rank 0 wrote the evaluation of both ranks' shards; one process scores the same weights
    sharded = json.loads((ddp_dir / "metrics.json").read_text())
    assert sharded["num_images"] == 4
    model = build_model(cfg, torch.device("cpu"))
    model.load_state_dict(ddp_state["model"])
    again = validate(cfg, model, torch.device("cpu"), tmp_path / "eval")
    for key in ("AP", "AP50", "AR100"):
        assert sharded[key] == pytest.approx(again[key], abs=1e-9)
    assert json.loads((ddp_dir / "coco_results.json").read_text()) == json.loads(
        (tmp_path / "eval" / "coco_results.json").read_text()
    )
