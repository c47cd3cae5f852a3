"""Check a dataset before training: decode every image of its splits and list the bad files.

``python tools/check_data.py dataset=... dataset.root=... [splits=[train,val]]``: prints a table
of the bad files with reasons and exits 1 if there is any, 0 otherwise
(:func:`detector.data.check.check_data`, ``configs/check_data.yaml``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

import detector  # noqa: F401  (registers the config resolvers)
from detector.data.check import check_data
from detector.engine.cli import configure_process, user_errors

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


@hydra.main(config_path=CONFIG_DIR, config_name="check_data", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("detector").setLevel(logging.INFO)
    with user_errors():
        configure_process(cfg)
        status = check_data(cfg)
    raise SystemExit(status)


if __name__ == "__main__":
    main()
