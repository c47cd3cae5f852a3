"""Run benchmarks: ``python tools/benchmark.py [run=[coco_eval]] [tasks.<name>.<arg>=...]``.

Prints each task's table and writes ``<output_dir>/<task>.json`` and ``benchmark.json``
(see ``configs/benchmark.yaml``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from detector.benchmarks.runner import run_benchmarks
from detector.engine.build import resolve_output_dir
from detector.engine.cli import configure_process, user_errors

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


@hydra.main(config_path=CONFIG_DIR, config_name="benchmark", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("detector").setLevel(logging.INFO)
    names = [str(n) for n in cfg.run]
    tasks = {n: instantiate(cfg.tasks[n], _convert_="all") for n in names if n in cfg.tasks}
    with user_errors():
        configure_process(cfg)
        run_benchmarks(tasks, names, output_dir=resolve_output_dir(cfg))


if __name__ == "__main__":
    main()
