"""Every trick end to end through the override that selects it: tiny synthetic runs, and BCCD
from ../shared when it exists."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from detector.engine.ablate import run_ablation
from detector.engine.build import build_test_model, load_trained
from detector.engine.eval_checkpoint import evaluate
from detector.engine.train import train
from detector.inference.box_refinement import BoxRefinement
from detector.inference.ensemble import ProposalEnsemble, WBFEnsemble
from detector.inference.multiscale_paper import MultiScaleMaxout
from detector.modeling.roi_heads.context import GlobalContextRoIHeads
from tests.helpers import SHARED, TINY, compose_config

pytestmark = pytest.mark.usefixtures("single_thread")


FEW_PROPOSALS = "model.rpn_post_nms_top_n={training:64,testing:20}"
PYRAMID = ["test.per_model.scales=[64,96,128]", "test.per_model.target_size=36"]


def _train(root: Path, out: Path, *extra: str, base: list[str] = TINY) -> Path:
    cfg = compose_config(
        "train", [*base, FEW_PROPOSALS, f"dataset.root={root}", f"output_dir={out}", *extra]
    )
    train(cfg)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A plain and a global-context model trained for 3 iterations on tiny synthetic data."""
    tmp = tmp_path_factory.mktemp("tricks")
    root = tmp / "synthetic"
    plain = _train(root, tmp / "plain", "eval.enabled=false")
    context = _train(
        root, tmp / "context", "model/roi_heads=c4_global_context", "eval.enabled=false"
    )
    twin = tmp / "plain_copy"  # the same weights under another path (an ensemble with itself)
    twin.mkdir()
    for name in ("model_final.pth", "config.yaml"):
        shutil.copy(plain / name, twin / name)
    return {"root": root, "plain": plain, "context": context, "twin": twin, "tmp": tmp}


def _evaluate(runs, checkpoint: Path, overrides: list[str], name: str) -> dict:
    ovs = [f"checkpoint={checkpoint}", f"output_dir={runs['tmp'] / 'eval' / name}", *overrides]
    return evaluate(compose_config("eval", ovs), ovs)


TRICKS = {
    "box_refinement": ["test=box_refinement"],
    "multiscale_paper": ["test=multiscale_paper", *PYRAMID],
    "multiscale_flip": ["test=multiscale_flip", "test.wrapper.scales=[80,96]"],
    "paper": ["test=paper", *PYRAMID],
}


@pytest.mark.parametrize("trick", sorted(TRICKS))
def test_each_test_time_trick_through_its_override(runs, trick):
    metrics = _evaluate(runs, runs["context"], TRICKS[trick], trick)
    assert metrics["num_images"] == 4
    assert 0.0 <= metrics["AP"] <= 1.0 and 0.0 <= metrics["AP50"] <= 1.0


def test_global_context_run_is_a_context_model(runs):
    cfg = compose_config("eval", [f"checkpoint={runs['context']}"])
    assert "GlobalContextRoIHeads" in (runs["context"] / "config.yaml").read_text()
    assert "GlobalContextRoIHeads" not in (runs["plain"] / "config.yaml").read_text()
    assert cfg.model.net.roi_heads._target_.endswith("StandardRoIHeads")  # default unchanged


@pytest.fixture(scope="module")
def plain_metrics(runs):
    return _evaluate(runs, runs["plain"], [], "plain")


def test_ensemble_overrides(runs, plain_metrics):
    base = plain_metrics
    itself = _evaluate(runs, runs["plain"], [f"ensemble.checkpoints=[{runs['twin']}]"], "self")
    assert itself["AP"] == pytest.approx(base["AP"], abs=1e-6)
    assert itself["AP50"] == pytest.approx(base["AP50"], abs=1e-6)
    both = f"ensemble.checkpoints=[{runs['context']}]"
    for name, ovs in {
        "ens_paper": ["test=paper", *PYRAMID, both],
        "ens_wbf": ["ensemble=wbf", both, "test=box_refinement"],
    }.items():
        metrics = _evaluate(runs, runs["plain"], ovs, name)
        assert metrics["num_images"] == 4 and 0.0 <= metrics["AP"] <= 1.0


def test_build_test_model_composition(runs):
    model, _ = load_trained(runs["plain"], device=torch.device("cpu"))
    members = f"ensemble.checkpoints=[{runs['context']}]"
    shared = build_test_model(compose_config("eval", ["test=paper", members]), model)
    assert isinstance(shared, BoxRefinement) and isinstance(shared.model, ProposalEnsemble)
    assert all(isinstance(m, MultiScaleMaxout) for m in shared.model.members)
    assert isinstance(shared.model.members[1].model.roi_heads, GlobalContextRoIHeads)
    fused = build_test_model(compose_config("eval", ["test=paper", "ensemble=wbf", members]), model)
    assert isinstance(fused, WBFEnsemble) and len(fused.members) == 2
    assert all(isinstance(m, BoxRefinement) for m in fused.members)
    plain = build_test_model(compose_config("eval", []), model)
    assert plain is model
    # a run config saved before the ensemble group existed: the paper's ensemble by default
    old = OmegaConf.create(
        {"test": {"wrapper": None}, "ensemble": {"checkpoints": [str(runs["context"])]}}
    )
    assert isinstance(build_test_model(old, model), ProposalEnsemble)
    assert build_test_model(OmegaConf.create({}), model) is model
    bad = compose_config("eval", [members, "ensemble.fuse=anything"])
    with pytest.raises(ValueError, match="unknown ensemble.fuse"):
        build_test_model(bad, model)


BCCD = SHARED / "data" / "bccd"


@pytest.mark.skipif(not BCCD.is_dir(), reason="needs ../shared/data/bccd")
def test_tricks_on_bccd(tmp_path):
    """The real VOC-layout data at 96 px: a 4-image split (links to the shared files)."""
    root = tmp_path / "bccd"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for sub in ("Annotations", "JPEGImages"):
        (root / sub).symlink_to(BCCD / sub)
    ids = (BCCD / "ImageSets" / "Main" / "val.txt").read_text().split()[:4]
    (root / "ImageSets" / "Main" / "tiny.txt").write_text("\n".join(ids) + "\n")
    data = [
        "dataset=bccd",
        f"dataset.root={root}",
        "dataset.train_split=tiny",
        "dataset.val_split=tiny",
        "dataset.input.min_sizes_train=[96]",
        "dataset.input.max_size_train=128",
        "dataset.input.min_size_test=96",
        "dataset.input.max_size_test=128",
    ]
    short = [
        "dataloader.batch_size=2",
        "dataloader.num_workers=0",
        "solver.max_iter=2",
        "solver.warmup_iters=1",
        "solver.steps=[1]",
        "model.roi_batch_size_per_image=16",
        "eval.enabled=false",
    ]
    run = _train(root, tmp_path / "run", *data, base=short)
    ctx = _train(root, tmp_path / "ctx", *data, "model/roi_heads=c4_global_context", base=short)
    pyramid = ["test.per_model.scales=[72,96,128]", "test.per_model.target_size=36"]
    flip = "test.wrapper.scales=[80,96]"
    members = f"ensemble.checkpoints=[{ctx}]"
    cases = {  # together every override: each test option, both ensembles
        "box_refinement": ["test=box_refinement"],
        "ensemble_paper": ["test=paper", *pyramid, members],
        "ensemble_wbf_flip": ["ensemble=wbf", members, "test=multiscale_flip", flip],
    }
    for name, ovs in cases.items():
        ovs = [*data, f"checkpoint={run}", f"output_dir={tmp_path / name}", *ovs]
        metrics = evaluate(compose_config("eval", ovs), ovs)
        assert metrics["num_images"] == 4, name


def test_ablation_table(runs, plain_metrics):
    """Two "seeds" of the baseline (the same weights under two paths): every baseline row is
    evaluated twice, with no spread; the one-run context key cannot form an ensemble."""
    out = runs["tmp"] / "ablation"
    cfg = compose_config(
        "ablate",
        [
            f"dataset.root={runs['root']}",
            *TINY[:7],
            "dataloader.num_workers=0",
            f"checkpoints.baseline=[{runs['plain']},{runs['twin']}]",
            f"checkpoints.context={runs['context']}",
            "pyramid.scales=[64,96,128]",
            "pyramid.target_size=36",
            "pyramid.reference_scale=null",
        ],
    )
    results = run_ablation(cfg, out)
    assert [r["name"] for r in results] == [
        "baseline",
        "+box refinement",
        "+context",
        "+multi-scale testing",
        "ensemble",
        *[r["name"] for r in results[5:]],
    ]
    assert results[4]["skipped"].startswith("an ensemble needs two runs")
    assert all(r["skipped"].startswith("diagnostic") for r in results[5:])
    assert [len(r["runs"]) for r in results[:4]] == [2, 2, 1, 1]
    for r in results[:4]:
        for run in r["runs"]:
            assert 0.0 <= run["AP"] <= 1.0 and run["seconds_per_image"] > 0
    base = results[0]["summary"]["AP"]
    assert base["values"] == pytest.approx([plain_metrics["AP"]] * 2, abs=1e-9)
    assert base["spread"] == 0.0 and results[0]["delta"]["AP"]["mean"] == 0.0
    refined = results[1]
    assert refined["delta"]["AP"]["mean"] == pytest.approx(
        refined["summary"]["AP"]["mean"] - base["mean"]
    )
    assert results[2]["delta"]["AP"] is None  # one context run against two baseline runs
    saved = json.loads((out / "ablation.json").read_text())
    assert saved["rows"][1]["summary"]["AP50"]["mean"] == pytest.approx(
        refined["summary"]["AP50"]["mean"]
    )
    assert saved["checkpoints"]["baseline"] == [str(runs["plain"]), str(runs["twin"])]
    table = (out / "ablation.md").read_text()
    assert re.search(r"\| \+multi-scale testing +\| +paper +\| +1 \|", table)
    assert re.search(r"\| baseline +\| +standard +\| +2 \| +[0-9.]+ ± 0\.0 \|", table)
    assert "skipped: an ensemble needs two runs" in table


def test_ablation_resume_reuses_only_matching_results(runs, monkeypatch):
    """``resume=true`` reads a row's saved numbers back when its config and checkpoint files
    match, and evaluates again when either changed; ``diagnostics`` as a list picks rows."""
    import detector.engine.ablate as ablate

    out = runs["tmp"] / "ablation_resume"
    overrides = [
        f"dataset.root={runs['root']}",
        *TINY[:7],
        "dataloader.num_workers=0",
        f"checkpoints.baseline={runs['plain']}",
        "diagnostics=[voting only]",
        "resume=true",
    ]
    first = run_ablation(compose_config("ablate", overrides), out)
    ran = [r["name"] for r in first if "runs" in r]
    assert ran == ["baseline", "+box refinement", "diag: box voting only, no refinement pass"]

    evaluated = []

    def recording(run, *args, **kwargs):
        evaluated.append(run.test.get("wrapper") or {})
        return ablate_validate(run, *args, **kwargs)

    ablate_validate = ablate.validate
    monkeypatch.setattr(ablate, "validate", recording)
    again = run_ablation(compose_config("ablate", overrides), out)
    assert evaluated == []
    assert [r["runs"] for r in again if "runs" in r] == [r["runs"] for r in first if "runs" in r]
    # another NMS threshold for the refinement row: that row alone is evaluated again
    changed = compose_config("ablate", [*overrides, "tests.box_refinement.wrapper.nms_thresh=0.4"])
    run_ablation(changed, out)
    assert len(evaluated) == 1 and evaluated[0]["nms_thresh"] == 0.4
    # a rewritten checkpoint file (new modification time): every row is evaluated again
    ckpt = runs["plain"] / "model_final.pth"
    os.utime(ckpt, ns=(ckpt.stat().st_atime_ns, ckpt.stat().st_mtime_ns + 1_000_000_000))
    evaluated.clear()
    run_ablation(changed, out)
    assert len(evaluated) == 3
    # a damaged result file is evaluated again, not an error
    damaged = next((out / "rows").glob("baseline/run0")) / "run.json"
    damaged.write_text("{")
    evaluated.clear()
    run_ablation(changed, out)
    assert len(evaluated) == 1
