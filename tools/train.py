"""Train a detector: ``python tools/train.py [model=...] [dataset=...] [key=value ...]``.

Several processes (DistributedDataParallel): ``torchrun --nproc_per_node=N tools/train.py ...``;
sweeps: ``python tools/train.py -m key=a,b``; resume: ``train.resume=true``. See
``docs/training.md``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

import detector  # noqa: F401  (registers the config resolvers)
from detector.engine.cli import configure_process, user_errors
from detector.engine.train import train

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("detector").setLevel(logging.INFO)
    with user_errors():
        configure_process(cfg)
        train(cfg)


if __name__ == "__main__":
    main()
