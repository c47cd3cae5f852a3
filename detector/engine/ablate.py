"""The paper's Table 9 as a tool: trained checkpoints x test-time tricks -> a table.

Each row of ``cfg.rows`` names a checkpoint (a key of ``cfg.checkpoints``), a test config (a key
of ``cfg.tests``, the ``test`` group's options composed under other names) and optionally an
ensemble (a key of ``cfg.ensembles``) with its further ``members``. The row's run config is the
checkpoint's saved model section under the ablation's dataset, eval, device and dataloader
settings; it is evaluated by the same :func:`~detector.engine.validation.validate` as training
and ``tools/eval.py``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from detector.engine.build import load_trained, prepare_dataset, resolve_device
from detector.engine.validation import validate

logger = logging.getLogger(__name__)
METRICS = ("AP", "AP50", "AP75")


def row_skip_reason(cfg: DictConfig, row: Mapping[str, Any]) -> str | None:
    """Why ``row`` cannot run (a missing checkpoint or ensemble member), or None."""
    if row.get("diagnostic") and not cfg.get("diagnostics"):
        return "diagnostic rows off (diagnostics=true)"
    if not cfg.checkpoints.get(row["checkpoint"]):
        return f"no checkpoints.{row['checkpoint']}"
    if row.get("ensemble") and not ensemble_paths(cfg, row):
        names = ", ".join(f"checkpoints.{m}" for m in row.get("members") or [])
        return f"no ensemble member ({names or 'none listed'})"
    return None


def ensemble_members(cfg: DictConfig, row: Mapping[str, Any]) -> list[str]:
    """Names of the row's further ensemble members that are set (unset ones are left out)."""
    if not row.get("ensemble"):
        return []
    return [m for m in row.get("members") or [] if cfg.checkpoints.get(m)]


def ensemble_paths(cfg: DictConfig, row: Mapping[str, Any]) -> list[str]:
    """Checkpoint paths of :func:`ensemble_members`."""
    return [str(cfg.checkpoints[m]) for m in ensemble_members(cfg, row)]


def row_config(
    cfg: DictConfig, saved: DictConfig, row: Mapping[str, Any], path: Path
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
        run.ensemble.checkpoints = ensemble_paths(cfg, row)
    else:
        run.ensemble = {"checkpoints": []}
    run.checkpoint = str(path)
    return run


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "row"


def run_ablation(cfg: DictConfig, output_dir: Path) -> list[dict[str, Any]]:
    """Evaluate every row; write ``ablation.json`` and ``ablation.md`` into ``output_dir``."""
    device = resolve_device(str(cfg.device))
    prepare_dataset(cfg)
    results: list[dict[str, Any]] = []
    for row in cfg.rows:
        entry: dict[str, Any] = {
            "name": row["name"],
            "checkpoint": row["checkpoint"],
            "test": row["test"],
            "ensemble": row.get("ensemble"),
            "members": ensemble_members(cfg, row),
            "diagnostic": bool(row.get("diagnostic", False)),
        }
        reason = row_skip_reason(cfg, row)
        if reason is not None:
            logger.info("skipping row %r: %s", row["name"], reason)
            results.append({**entry, "skipped": reason})
            continue
        model, trained = load_trained(cfg.checkpoints[row["checkpoint"]], device=device)
        path = trained.path
        run = row_config(cfg, trained.config, row, path)
        logger.info(
            "row %r: %s, test=%s, ensemble=%s", row["name"], path, row["test"], row.get("ensemble")
        )
        with torch.inference_mode():
            metrics = validate(run, model, device, output_dir / "rows" / slug(row["name"]))
        entry.update({k: metrics.get(k) for k in METRICS})
        entry["seconds_per_image"] = metrics.get("seconds_per_image")
        entry["num_images"] = metrics.get("num_images")
        entry["path"] = str(path)
        results.append(entry)
    write_results(output_dir, cfg, results)
    return results


def write_results(output_dir: Path, cfg: DictConfig, results: list[dict[str, Any]]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "dataset": str(cfg.dataset.get("name")),
        "checkpoints": {k: (str(v) if v else None) for k, v in cfg.checkpoints.items()},
        "rows": results,
    }
    (output_dir / "ablation.json").write_text(json.dumps(payload, indent=2) + "\n")
    table = format_table(results)
    (output_dir / "ablation.md").write_text(table + "\n")
    print(table, flush=True)
    logger.info("wrote %s and %s", output_dir / "ablation.json", output_dir / "ablation.md")


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * float(value):.1f}"


def format_table(results: list[dict[str, Any]]) -> str:
    """Markdown table: AP, AP50, AP75 in percent, the AP50 / AP change from the first row, and
    seconds per image."""
    first = next((r for r in results if "skipped" not in r and r.get("AP") is not None), None)
    lines = [
        "| row | checkpoint | test | ensemble | AP | AP50 | AP75 | dAP | dAP50 | s/img |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ens = (
            "+".join([r["checkpoint"], *r["members"]]) + f" ({r['ensemble']})"
            if r["ensemble"]
            else "-"
        )
        if "skipped" in r:
            lines.append(
                f"| {r['name']} | {r['checkpoint']} | {r['test']} | {ens} | skipped: {r['skipped']} | | | | | |"
            )
            continue
        d_ap = d_ap50 = "-"
        if first is not None and r.get("AP") is not None:
            d_ap = f"{100 * (r['AP'] - first['AP']):+.1f}"
            d_ap50 = f"{100 * (r['AP50'] - first['AP50']):+.1f}"
        sec = r.get("seconds_per_image")
        lines.append(
            f"| {r['name']} | {r['checkpoint']} | {r['test']} | {ens} | {_pct(r.get('AP'))} | "
            f"{_pct(r.get('AP50'))} | {_pct(r.get('AP75'))} | {d_ap} | {d_ap50} | "
            f"{'-' if sec is None else f'{sec:.3f}'} |"
        )
    return "\n".join(lines)
