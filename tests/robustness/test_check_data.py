"""``tools/check_data.py``: every image of the splits decoded, the bad files listed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from detector.data.check import check_data, check_split, format_report
from detector.data.coco import CocoDetection
from tests.helpers import REPO_ROOT, compose_config
from tests.robustness.files import (
    coco_ann,
    coco_image,
    solid,
    truncate,
    voc_object,
    write_coco,
    write_noise_jpeg,
    write_voc_pair,
)


def _flat_voc(root: Path, cut: str | None = "im3") -> Path:
    """10 images with one 'raccoon' each, side by side with their XML; ``cut`` truncated."""
    for i in range(10):
        write_voc_pair(root, root, f"im{i}", [voc_object("raccoon", (2, 2, 9, 9))])
    if cut is not None:
        write_noise_jpeg(root / f"{cut}.jpg", 30, 20)
        truncate(root / f"{cut}.jpg")
    return root


def test_check_split_names_the_truncated_and_the_missing_file(tmp_path: Path) -> None:
    solid(32, 24).save(tmp_path / "ok.png")
    write_noise_jpeg(tmp_path / "cut.jpg", 32, 24)
    truncate(tmp_path / "cut.jpg")  # header intact: the dataset loads it
    names = ["ok.png", "cut.jpg", "gone.jpg"]
    images = [coco_image(i, name, 32, 24) for i, name in enumerate(names, 1)]
    anns = [coco_ann(i, i, [1, 1, 8, 8]) for i in (1, 2, 3)]
    dataset = CocoDetection(image_dir=tmp_path, ann_file=write_coco(tmp_path, images, anns))
    check = check_split("train", dataset, workers=2, progress=False)
    assert check.num_images == 3
    assert [(b.path, b.problem.split(":")[0]) for b in check.bad] == [
        (str(tmp_path / "gone.jpg"), "skipped at load"),
        (str(tmp_path / "cut.jpg"), "cannot decode"),
    ]
    assert "cannot decode: OSError: image file is truncated" in check.bad[1].problem
    report = format_report([check])
    assert report.splitlines()[0].split() == ["|", "split", "|", "file", "|", "problem", "|"]
    assert f"| train | {tmp_path / 'cut.jpg'} " in report
    assert report.endswith("check_data: 2 problem(s) (train: 2 bad of 3 images)")


def _cfg(root: Path, *overrides: str):
    return compose_config(
        "check_data",
        [
            "dataset=voc_folder",
            f"dataset.root={root}",
            "dataset.num_classes=1",
            "dataset.class_names=[raccoon]",
            *overrides,
        ],
    )


def test_check_data_reports_the_bad_file_and_fails(tmp_path: Path, capsys) -> None:
    assert check_data(_cfg(_flat_voc(tmp_path))) == 1
    out = capsys.readouterr().out
    assert f"| {tmp_path / 'im3.jpg'} | cannot decode: OSError: image file is truncated" in out
    assert out.rstrip().splitlines()[-1].startswith("check_data: 1 problem(s) (train: ")


def test_check_data_passes_a_clean_dataset_and_flags_an_empty_class_list(
    tmp_path: Path, capsys
) -> None:
    root = _flat_voc(tmp_path, cut=None)
    assert check_data(_cfg(root)) == 0
    out = capsys.readouterr().out.rstrip()
    assert out == "check_data: no problem (train: 0 bad of 8 images; val: 0 bad of 2 images)"
    assert check_data(_cfg(root, "dataset.class_names=[Raccoon]")) == 1
    out = capsys.readouterr().out
    assert "cannot build the split: VOCDetection" in out and "did you mean 'raccoon'" in out


def test_the_tool_exits_1_and_writes_nothing(tmp_path: Path) -> None:
    root = _flat_voc(tmp_path / "data")
    work = tmp_path / "cwd"
    work.mkdir()
    args = ["dataset=voc_folder", f"dataset.root={root}", "dataset.num_classes=1"]
    command = [sys.executable, str(REPO_ROOT / "tools" / "check_data.py"), *args]
    done = subprocess.run(
        [*command, "dataset.class_names=[raccoon]", "splits=[train]", "workers=1"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout.rstrip().splitlines()[-1] == (
        "check_data: 1 problem(s) (train: 1 bad of 8 images)"
    )
    assert list(work.iterdir()) == []  # no outputs/, .hydra/ or log file
