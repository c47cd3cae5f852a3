"""Ablation of the paper's tricks (its Table 9) over trained checkpoints.

``python tools/ablate.py checkpoints.baseline=RUN checkpoints.context=RUN2 [dataset=...]``;
rows and options are in ``configs/ablate.yaml``, the tricks in ``docs/tricks.md``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

import detector  # noqa: F401  (registers the config resolvers)
from detector.engine.ablate import run_ablation
from detector.engine.build import resolve_output_dir
from detector.engine.cli import configure_process, user_errors

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


@hydra.main(config_path=CONFIG_DIR, config_name="ablate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("detector").setLevel(logging.INFO)
    with user_errors():
        configure_process(cfg)
        run_ablation(cfg, resolve_output_dir(cfg))


if __name__ == "__main__":
    main()
