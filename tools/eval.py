"""Evaluate a trained detector or score a results file.

``python tools/eval.py checkpoint=<run dir or .pth> [overrides]`` rebuilds the model from the
run's saved config, evaluates it on the val split (``eval.type``: coco | voc | both) and prints
the tables; ``results=<file.json or devkit folder>`` scores saved detections against the
configured dataset's val annotations without a model. Both write ``metrics.json``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import detector  # noqa: F401  (registers the config resolvers)
from detector.engine.cli import configure_process, user_errors

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


@hydra.main(config_path=CONFIG_DIR, config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("detector").setLevel(logging.INFO)
    # imported per branch: scoring a results file needs no model code (start-up time)
    with user_errors():
        configure_process(cfg)
        if cfg.get("results"):
            from detector.engine.score_results import score_results

            score_results(cfg)
        else:
            from detector.engine.eval_checkpoint import evaluate

            evaluate(cfg, list(HydraConfig.get().overrides.task))


#: Scoring a results file writes only its scores file: no Hydra run folder, log to the terminal.
SCORING_ONLY = ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout"]

if __name__ == "__main__":
    if any(arg.startswith("results=") for arg in sys.argv[1:]):
        sys.argv += [o for o in SCORING_ONLY if o not in sys.argv]
    main()
