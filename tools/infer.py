"""Run a trained detector on images and draw its detections.

``python tools/infer.py checkpoint=<run dir or .pth> input=<image or folder> [score_thresh=0.5]
[output_dir=...]`` writes each image with its boxes, class names and scores drawn, plus
``detections.json`` (see ``configs/infer.yaml``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

import detector  # noqa: F401  (registers the config resolvers)
from detector.engine.cli import configure_process, user_errors
from detector.engine.predict import infer

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


@hydra.main(config_path=CONFIG_DIR, config_name="infer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("detector").setLevel(logging.INFO)
    with user_errors():
        configure_process(cfg)
        infer(cfg)


if __name__ == "__main__":
    main()
