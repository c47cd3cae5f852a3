"""The paper's Table 9 as a tool: trained checkpoints x test-time tricks -> a table with seeds.

Each entry of ``cfg.checkpoints`` is a run (directory or ``.pth``) or a list of runs, one per
training seed. Each row of ``cfg.rows`` names a checkpoint key, a test config (a key of
``cfg.tests``, the ``test`` group's options composed under other names) and optionally an
ensemble (a key of ``cfg.ensembles``). A plain row is evaluated once per seed and reported as
mean and spread; its change from the first row is the mean of the per-seed (paired)
differences. An ensemble row combines every seed of its checkpoint key (and of its
``members`` keys) into one ensemble, evaluated once.

A row's run config is the checkpoint's saved model section under the ablation's dataset, eval,
device and dataloader settings; it is evaluated by the same
:func:`~detector.engine.validation.validate` as training and ``tools/eval.py``. With
``cfg.pairs`` (look-alike class pairs, e.g. synthetic_scenes') every row also reports how well
the pairs are told apart (:mod:`detector.evaluation.pairs`).
"""

from __future__ import annotations

import json
import logging
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from detector.engine.build import (
    build_dataset,
    build_trained_model,
    open_run,
    prepare_dataset,
    resolve_device,
)
from detector.engine.checkpoint import resolve_checkpoint_path
from detector.engine.validation import validate
from detector.evaluation.pairs import pair_metrics
from detector.utils.tables import format_table

logger = logging.getLogger(__name__)
#: Per-run numbers kept for every row (COCO metrics, then the pair metrics when asked for).
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
PAIR_METRICS = ("pair_AP", "pair_accuracy")


def checkpoint_list(cfg: DictConfig, key: str) -> list[str]:
    """The runs of ``cfg.checkpoints[key]`` (one per seed); [] when unset."""
    value = cfg.checkpoints.get(key)
    if value is None or value == "":
        return []
    if isinstance(value, ListConfig | list | tuple):
        return [str(v) for v in value if v]
    return [str(value)]


def row_runs(cfg: DictConfig, row: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """``[(checkpoint, ensemble members)]`` to evaluate for ``row``: one per seed, or for an
    ensemble row a single one whose members are every other run of its keys."""
    runs = checkpoint_list(cfg, row["checkpoint"])
    if not row.get("ensemble"):
        return [(run, []) for run in runs]
    extra = [run for key in row.get("members") or [] for run in checkpoint_list(cfg, key)]
    everyone = runs + extra
    return [(everyone[0], everyone[1:])] if everyone else []


def diagnostic_selected(cfg: DictConfig, name: str) -> bool:
    """``cfg.diagnostics``: false (none), true (all), or a string or list of strings, each
    selecting the diagnostic rows whose name contains it (case-insensitive)."""
    chosen = cfg.get("diagnostics")
    if isinstance(chosen, str):
        chosen = [chosen]
    if isinstance(chosen, ListConfig | list | tuple):
        return any(str(part).lower() in name.lower() for part in chosen)
    return bool(chosen)


def row_skip_reason(cfg: DictConfig, row: Mapping[str, Any]) -> str | None:
    """Why ``row`` cannot run (diagnostics off, a missing checkpoint, a one-model ensemble)."""
    if row.get("diagnostic") and not diagnostic_selected(cfg, row["name"]):
        return "diagnostic rows off (diagnostics=true, or a list of parts of row names)"
    if not checkpoint_list(cfg, row["checkpoint"]):
        return f"no checkpoints.{row['checkpoint']}"
    if row.get("ensemble") and not row_runs(cfg, row)[0][1]:
        return f"an ensemble needs two runs (checkpoints.{row['checkpoint']} lists one)"
    return None


def row_config(
    cfg: DictConfig, saved: DictConfig, row: Mapping[str, Any], path: Path, members: list[str]
) -> DictConfig:
    """The ablation config with the checkpoint's model, the row's ``test`` and ``ensemble``."""
    for key, group in (("test", "tests"), ("ensemble", "ensembles")):
        if row.get(key) and row[key] not in cfg[group]:
            raise ValueError(
                f"row {row['name']!r}: unknown {key} {row[key]!r}; have {list(cfg[group])}"
            )
    run = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    run.model = OmegaConf.create(OmegaConf.to_container(saved.model, resolve=False))
    run.test = run.tests[row["test"]]
    if row.get("ensemble"):
        run.ensemble = run.ensembles[row["ensemble"]]
        run.ensemble.checkpoints = members
    else:
        run.ensemble = {"checkpoints": []}
    run.checkpoint = str(path)
    return run


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "row"


#: Per-run result file under ``rows/<row>/run<i>/``; reused by ``resume=true``.
RUN_RESULT = "run.json"


def run_fingerprint(run: DictConfig, paths: Sequence[Path]) -> dict[str, Any]:
    """What a run's numbers depend on: its resolved config (test, ensemble, model, dataset,
    eval, device) and each checkpoint file's size and modification time. Not covered: the
    code's version and the data files' contents."""
    keys = ("model", "test", "ensemble", "dataset", "eval", "pairs", "device")
    config = {
        k: OmegaConf.to_container(run[k], resolve=True) if OmegaConf.is_config(run[k]) else run[k]
        for k in keys
        if run.get(k) is not None
    }
    files = []
    for path in paths:
        stat = path.stat()
        files.append([str(path), stat.st_size, stat.st_mtime_ns])
    return {"config": config, "files": files}


def _read_run_result(path: Path) -> dict[str, Any] | None:
    """A saved ``run.json``, or None (logged) when it is unreadable or incomplete."""
    try:
        saved = json.loads(path.read_text())
        if isinstance(saved, dict) and isinstance(saved.get("numbers"), dict):
            return saved
    except (OSError, ValueError) as err:
        logger.warning("ignoring %s: %s", path, err)
        return None
    logger.warning("ignoring %s: no numbers in it", path)
    return None


def evaluate_run(
    cfg: DictConfig,
    row: Mapping[str, Any],
    checkpoint: str,
    members: list[str],
    out: Path,
    device: torch.device,
) -> dict[str, Any]:
    """One evaluation of ``row``: its metrics (and pair metrics) for ``checkpoint``. With
    ``cfg.resume`` a result saved by an earlier ablation for the same config and checkpoint
    files is read back instead."""
    trained = open_run(checkpoint)
    run = row_config(cfg, trained.config, row, trained.path, members)
    fingerprint = run_fingerprint(
        run, [trained.path, *(resolve_checkpoint_path(p) for p in members)]
    )
    saved = out / RUN_RESULT
    if cfg.get("resume") and saved.exists():
        previous = _read_run_result(saved)
        if previous is not None and previous.get("fingerprint") == json.loads(
            json.dumps(fingerprint)
        ):
            logger.info("row %r: reusing %s", row["name"], saved)
            return previous["numbers"]
        logger.info("row %r: %s does not match this config or checkpoints", row["name"], saved)
    logger.info(
        "row %r: %s (+%d members), test=%s", row["name"], trained.path, len(members), row["test"]
    )
    model = build_trained_model(trained, device)
    with torch.inference_mode():
        metrics = validate(run, model, device, out)
    numbers = {k: metrics.get(k) for k in METRICS}
    if cfg.get("pairs"):
        gt = build_dataset(run, "val").coco_gt()
        results = json.loads((out / "coco_results.json").read_text())
        pairs = [list(p) for p in cfg.pairs]
        numbers.update(pair_metrics(gt, results, pairs, per_class_ap=metrics.get("per_class_AP")))
    numbers["seconds_per_image"] = metrics.get("seconds_per_image")
    numbers["checkpoint"] = str(trained.path)
    numbers["members"] = members
    tmp = saved.with_suffix(".tmp")
    tmp.write_text(json.dumps({"fingerprint": fingerprint, "numbers": numbers}, indent=1) + "\n")
    tmp.replace(saved)
    return numbers


def _valid(value: Any) -> bool:
    """A metric value that counts: present, not NaN, and not COCO's -1 (no such object)."""
    return value is not None and not math.isnan(float(value)) and float(value) >= 0


def _stat(values: Sequence[float]) -> dict[str, Any] | None:
    """``{"mean", "spread", "values"}`` (spread: half the range; 0 for one value)."""
    if not values:
        return None
    values = [float(v) for v in values]
    return {
        "mean": statistics.fmean(values),
        "spread": (max(values) - min(values)) / 2,
        "values": values,
    }


def summarize(runs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """``{key: {"mean", "spread", "values"}}`` over the runs (spread: half the range, so a
    value is mean +- spread; 0 for one run). Missing, NaN and COCO's -1 (no such object)
    values are left out."""
    out: dict[str, Any] = {}
    for key in keys:
        stat = _stat([r[key] for r in runs if _valid(r.get(key))])
        if stat is not None:
            out[key] = stat
    return out


def paired_delta(
    runs: Sequence[Mapping[str, Any]], base: Sequence[Mapping[str, Any]], key: str
) -> dict[str, Any] | None:
    """Mean and spread of the per-seed differences ``runs[i][key] - base[i][key]`` (None unless
    both have the same number of runs). A difference may be negative; pairs where either side
    is missing, NaN or -1 are left out."""
    if len(runs) != len(base) or not runs:
        return None
    return _stat(
        [
            float(r[key]) - float(b[key])
            for r, b in zip(runs, base)
            if _valid(r.get(key)) and _valid(b.get(key))
        ]
    )


def run_ablation(cfg: DictConfig, output_dir: Path) -> list[dict[str, Any]]:
    """Evaluate every row (once per seed); write ``ablation.json`` and ``ablation.md``."""
    device = resolve_device(str(cfg.device))
    prepare_dataset(cfg)
    keys = [*METRICS, *(PAIR_METRICS if cfg.get("pairs") else ()), "seconds_per_image"]
    results: list[dict[str, Any]] = []
    for row in cfg.rows:
        entry: dict[str, Any] = {
            "name": row["name"],
            "checkpoint": row["checkpoint"],
            "test": row["test"],
            "ensemble": row.get("ensemble"),
            "diagnostic": bool(row.get("diagnostic", False)),
        }
        reason = row_skip_reason(cfg, row)
        if reason is not None:
            logger.info("skipping row %r: %s", row["name"], reason)
            results.append({**entry, "skipped": reason})
            continue
        runs = []
        for i, (checkpoint, members) in enumerate(row_runs(cfg, row)):
            out = output_dir / "rows" / slug(row["name"]) / f"run{i}"
            runs.append(evaluate_run(cfg, row, checkpoint, members, out, device))
        entry["runs"] = runs
        entry["summary"] = summarize(runs, keys)
        results.append(entry)
    base = next((r for r in results if "runs" in r), None)
    for r in results:
        if "runs" in r and base is not None:
            r["delta"] = {k: paired_delta(r["runs"], base["runs"], k) for k in keys[:-1]}
    write_results(output_dir, cfg, results)
    return results


def write_results(output_dir: Path, cfg: DictConfig, results: list[dict[str, Any]]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "dataset": str(cfg.dataset.get("name")),
        "checkpoints": {k: checkpoint_list(cfg, k) for k in cfg.checkpoints},
        "pairs": [list(p) for p in cfg.pairs] if cfg.get("pairs") else None,
        "rows": results,
    }
    (output_dir / "ablation.json").write_text(json.dumps(payload, indent=2) + "\n")
    table = format_results(results, pairs=bool(cfg.get("pairs")))
    (output_dir / "ablation.md").write_text(table + "\n")
    print(table, flush=True)
    logger.info("wrote %s and %s", output_dir / "ablation.json", output_dir / "ablation.md")


def _cell(stat: Mapping[str, Any] | None, signed: bool = False) -> str:
    """``mean +- spread`` in percent (``-`` when absent; no spread for one value)."""
    if not stat:
        return "-"
    mean = f"{100 * stat['mean']:+.1f}" if signed else f"{100 * stat['mean']:.1f}"
    return mean if len(stat["values"]) < 2 else f"{mean} ± {100 * stat['spread']:.1f}"


def format_results(results: list[dict[str, Any]], *, pairs: bool = False) -> str:
    """Markdown table: per row the number of runs, AP, AP50, AP75, APs, APl (and the pair AP
    and pair accuracy), each as mean ± spread over the seeds in percent, the paired change of
    AP and AP50 from the first row, and seconds per image."""
    header = ["row", "test", "runs", "AP", "AP50", "AP75", "APs", "APl"]
    header += ["pair AP", "pair acc."] if pairs else []
    header += ["ΔAP", "ΔAP50", "s/img"]
    rows = []
    for r in results:
        if "skipped" in r:
            rows.append(
                [r["name"], r["test"], f"skipped: {r['skipped']}"] + [""] * (len(header) - 3)
            )
            continue
        s, d = r["summary"], r.get("delta") or {}
        cells = [r["name"], r["test"], str(len(r["runs"]))]
        cells += [_cell(s.get(k)) for k in ("AP", "AP50", "AP75", "APs", "APl")]
        cells += [_cell(s.get(k)) for k in PAIR_METRICS] if pairs else []
        cells += [_cell(d.get("AP"), signed=True), _cell(d.get("AP50"), signed=True)]
        sec = s.get("seconds_per_image")
        cells.append("-" if not sec else f"{sec['mean']:.3f}")
        rows.append(cells)
    return format_table(header, rows)
