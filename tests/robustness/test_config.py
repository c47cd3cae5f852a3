"""Bad configuration fails before any heavy work, naming the key, the value and what is allowed.

A checkpoint whose class count or architecture differs from the config is rejected when loaded
(:func:`detector.engine.checkpoint.load_model_weights`); that case is tested in
``tests/test_train_smoke.py::test_eval_rejects_checkpoint_with_other_class_count``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import MissingConfigException

from detector.config_checks import ConfigError, check_config
from tests.helpers import compose_config


def test_default_train_and_eval_configs_pass() -> None:
    check_config(compose_config("train"))  # synthetic: no root needed, it is generated
    check_config(compose_config("eval"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "model.depth=99",
            r"model\.depth=99: unknown ResNet depth 99; allowed: 18, 34, 50, 101, 152",
        ),
        ("solver.optimizer.lr=-0.01", r"solver\.optimizer\.lr=-0\.01: must be a finite number > 0"),
        ("solver.optimizer.lr=0", r"solver\.optimizer\.lr=0: must be a finite number > 0"),
        ("solver.max_iter=0", r"solver\.max_iter=0: must be an integer > 0"),
        ("dataloader.batch_size=0", r"dataloader\.batch_size=0: must be an integer > 0"),
        ("dataloader.batch_size=-2", r"dataloader\.batch_size=-2: must be an integer > 0"),
        ("dataloader.num_workers=-1", r"dataloader\.num_workers=-1: must be an integer >= 0"),
        (
            "model.num_classes=7",
            r"class count mismatch: model\.num_classes=7, dataset\.num_classes=4",
        ),
    ],
)
def test_bad_value_is_named(override: str, message: str) -> None:
    cfg = compose_config("train", [override])
    with pytest.raises(ConfigError, match=message) as excinfo:
        check_config(cfg)
    assert "1 problem(s)" in str(excinfo.value)  # only the bad key is reported


def test_every_problem_is_listed_at_once() -> None:
    cfg = compose_config("train", ["model.depth=99", "solver.max_iter=-5"])
    with pytest.raises(ConfigError, match=r"(?s)2 problem\(s\).*model\.depth.*solver\.max_iter"):
        check_config(cfg)


def test_missing_dataset_root(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_dir"
    cfg = compose_config("train", ["dataset=bccd", f"dataset.root={missing}"])
    with pytest.raises(ConfigError, match=rf"dataset\.root='{missing}': no such folder"):
        check_config(cfg)
    check_config(compose_config("train", ["dataset=bccd", f"dataset.root={tmp_path}"]))


def test_synthetic_root_may_be_missing(tmp_path: Path) -> None:
    check_config(compose_config("train", [f"dataset.root={tmp_path / 'generated_later'}"]))


def test_class_names_must_match_num_classes(tmp_path: Path) -> None:
    cfg = compose_config(
        "train", ["dataset=bccd", f"dataset.root={tmp_path}", "dataset.num_classes=4"]
    )
    with pytest.raises(ConfigError, match=r"len\(dataset\.class_names\)=3"):
        check_config(cfg)


def test_unset_mandatory_values_are_named() -> None:
    cfg = compose_config("train", ["dataset=voc_folder"])
    with pytest.raises(ConfigError, match=r"dataset\.root is not set") as excinfo:
        check_config(cfg)
    assert "dataset.class_names is not set" in str(excinfo.value)


def test_unknown_config_group_option_lists_the_available_ones() -> None:
    with pytest.raises(MissingConfigException) as excinfo:
        compose_config("train", ["model=faster_rcnn_r99_c4"])
    message = str(excinfo.value)
    assert "faster_rcnn_r99_c4" in message and "Available options" in message
    assert "faster_rcnn_r50_c4" in message
