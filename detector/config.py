"""OmegaConf resolvers used by the config tree (registered on import of ``detector``)."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from detector.modeling.backbone.channels import resnet_out_channels

#: The repository root when the package is used from a source checkout (editable install).
REPO_ROOT = Path(__file__).resolve().parents[1]


def default_data_root() -> str:
    """``$DETECTOR_DATA_ROOT``, else ``<repo>/datasets`` for a checkout, else ``./datasets``."""
    env = os.environ.get("DETECTOR_DATA_ROOT")
    if env:
        return env
    if (REPO_ROOT / "datasets").is_dir():
        return str(REPO_ROOT / "datasets")
    return str(Path.cwd() / "datasets")


def _resnet_channels(depth: int, stage: str) -> int:
    return resnet_out_channels(int(depth))[stage]


def register_resolvers() -> None:
    """Idempotently register ``${resnet_channels:depth,stage}`` and ``${default_data_root:}``."""
    if not OmegaConf.has_resolver("resnet_channels"):
        OmegaConf.register_new_resolver("resnet_channels", _resnet_channels)
    if not OmegaConf.has_resolver("default_data_root"):
        OmegaConf.register_new_resolver("default_data_root", default_data_root)
