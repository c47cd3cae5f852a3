"""Where the files of a VOC-style dataset are: the VOC devkit layout and the usual exports.

Three layouts are read (``docs/data_and_eval.md``):

- the VOC devkit layout: ``Annotations/<name>.xml``, ``JPEGImages/<name>.jpg``,
  ``ImageSets/Main/<split>.txt`` listing the split's names;
- ``Annotations/`` + ``JPEGImages/`` without split files (CVAT, Roboflow exports);
- one flat folder of images and XML files side by side (labelImg): used when the annotation
  folder does not exist and ``root`` itself holds ``.xml`` files.

The folder names are :class:`VOCLayout` fields. Without a split file, every XML file is an
image and the split name selects a part of them (:func:`fraction_split`): ``train`` /
``trainval`` the training part, ``val`` / ``test`` the held-out ``val_fraction``, ``all``
every file.

An image is found, in this order, as ``<images_dir>/<name>.jpg``, ``<images_dir>/<filename>``
(the XML's ``<filename>``, or its last path component), ``<images_dir>/<name><suffix>`` for the
:data:`IMAGE_SUFFIXES`; then the same next to the XML file.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from detector.data.errors import DatasetError

logger = logging.getLogger(__name__)

#: Image suffixes tried after ``.jpg`` and the XML's ``<filename>`` (also in upper case).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: Split names that select the training part of a folder without split files.
TRAIN_SPLITS: tuple[str, ...] = ("train", "trainval")
#: Split names that select the held-out part (``val_fraction`` of the files).
HELD_OUT_SPLITS: tuple[str, ...] = ("val", "test")
#: Split name that selects every file.
ALL_SPLIT = "all"


@dataclass(frozen=True)
class VOCLayout:
    """The folders of one VOC-style dataset (module doc).

    Attributes:
        root: the dataset folder.
        annotations_dir: XML folder, relative to ``root``.
        images_dir: image folder, relative to ``root``.
        imagesets_dir: folder of the split files ``<split>.txt``, relative to ``root``;
            ``None``: ignore split files, split the XML files by ``val_fraction``.
    """

    root: Path
    annotations_dir: str = "Annotations"
    images_dir: str = "JPEGImages"
    imagesets_dir: str | None = "ImageSets/Main"

    @cached_property
    def annotation_folder(self) -> Path:
        """``root/annotations_dir``, or ``root`` when that folder is missing and ``root``
        holds ``.xml`` files (a flat export)."""
        folder = self.root / self.annotations_dir
        if not folder.is_dir() and self.root.is_dir() and any(self.root.glob("*.xml")):
            return self.root
        return folder

    def xml_file(self, name: str) -> Path:
        return self.annotation_folder / f"{name}.xml"

    def split_names(self, split: str, *, val_fraction: float, split_seed: int) -> list[str]:
        """Image names of ``split``: from its split file when there is one, else a part of
        the XML files (:func:`fraction_split`).

        Raises:
            FileNotFoundError: no split file for ``split`` while others exist (they are
                listed), or neither split files nor XML files.
            ValueError, DatasetError: see :func:`read_split` and :func:`fraction_split`.
        """
        if self.imagesets_dir is not None:
            sets = self.root / self.imagesets_dir
            split_file = sets / f"{split}.txt"
            if split_file.is_file():
                return read_split_file(split_file)
            available = sorted(p.stem for p in sets.glob("*.txt")) if sets.is_dir() else []
            if available:
                raise FileNotFoundError(
                    f"VOC split file not found: {split_file} (available: {available}; "
                    "imagesets_dir=null ignores split files and splits the XML files by "
                    "val_fraction)"
                )
        names = sorted(p.stem for p in self.annotation_folder.glob("*.xml"))
        if not names:
            sets = "" if self.imagesets_dir is None else f"{self.root / self.imagesets_dir}/"
            raise FileNotFoundError(
                f"no VOC split file {sets}{split}.txt and no .xml files in "
                f"{self.annotation_folder} (nor in {self.root})"
            )
        part = fraction_split(names, split, val_fraction=val_fraction, seed=split_seed)
        logger.info(
            "%s: no split files; split %r is %d of the %d XML files in %s (val_fraction=%g, "
            "split_seed=%d)",
            self.root,
            split,
            len(part),
            len(names),
            self.annotation_folder,
            val_fraction,
            split_seed,
        )
        return part

    def find_image(self, name: str, filename: str) -> Path | None:
        """The image of annotation ``name`` (XML ``<filename>`` ``filename``, may be empty),
        searched as the module doc says; ``None`` when no candidate exists."""
        return next((p for p in self.image_candidates(name, filename) if p.is_file()), None)

    def image_candidates(self, name: str, filename: str) -> Iterator[Path]:
        """The paths :meth:`find_image` tries, in order."""
        folders = [self.root / self.images_dir]
        if self.annotation_folder != folders[0]:
            folders.append(self.annotation_folder)
        file_names = [f"{name}.jpg"]
        if filename:
            file_names += [filename, Path(filename.replace("\\", "/")).name]
        file_names += [f"{name}{s}" for s in IMAGE_SUFFIXES] + [
            f"{name}{s.upper()}" for s in IMAGE_SUFFIXES
        ]
        for folder in folders:
            for file_name in dict.fromkeys(file_names):
                yield folder / file_name


def split_annotation_files(
    root: str | Path,
    split: str,
    *,
    annotations_dir: str = "Annotations",
    imagesets_dir: str | None = "ImageSets/Main",
    val_fraction: float = 0.2,
    split_seed: int = 0,
    **_: object,
) -> list[Path]:
    """The XML files of ``split``, as :class:`~detector.data.voc.VOCDetection` with these
    arguments reads them (other keyword arguments of a dataset config node are ignored, so
    ``split_annotation_files(**node)`` works for a ``VOCDetection`` node)."""
    layout = VOCLayout(
        root=Path(root), annotations_dir=annotations_dir, imagesets_dir=imagesets_dir
    )
    names = layout.split_names(split, val_fraction=val_fraction, split_seed=split_seed)
    return [layout.xml_file(name) for name in names]


def read_split_file(split_file: Path) -> list[str]:
    """Image names listed in a split file (first token of each non-empty line).

    Raises:
        DatasetError: the file lists no image.
        ValueError: a name is listed twice.
    """
    names = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"{split_file}: lists no images")
    if len(set(names)) != len(names):
        raise ValueError(f"{split_file}: lists some images more than once")
    return names


def read_split(root: Path, split: str, imagesets_dir: str = "ImageSets/Main") -> list[str]:
    """Image names listed in ``root/<imagesets_dir>/<split>.txt``.

    Raises:
        FileNotFoundError: no such file (the message lists the available splits).
    """
    split_file = Path(root) / imagesets_dir / f"{split}.txt"
    if not split_file.is_file():
        available = sorted(p.stem for p in split_file.parent.glob("*.txt"))
        raise FileNotFoundError(f"VOC split file not found: {split_file} (available: {available})")
    return read_split_file(split_file)


def _rank(name: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def fraction_split(names: list[str], split: str, *, val_fraction: float, seed: int) -> list[str]:
    """The part of ``names`` that ``split`` selects, in the order of ``names``.

    The held-out part is the ``round(len(names) * val_fraction)`` names (at least 1 when
    ``val_fraction > 0``, at most all but one) that come first when ordered by
    ``sha256(f"{seed}:{name}")``: deterministic, independent of the file order and of numpy,
    and adding files moves few others between the parts. ``train`` / ``trainval`` select the
    rest, ``val`` / ``test`` the held-out part, ``all`` every name; the parts are disjoint
    and together are ``names``.

    Raises:
        ValueError: another split name, or ``val_fraction`` outside ``[0, 1)``.
        DatasetError: the selected part is empty (e.g. ``val`` with ``val_fraction=0``).
    """
    if split == ALL_SPLIT:
        return list(names)
    if split not in TRAIN_SPLITS + HELD_OUT_SPLITS:
        raise ValueError(
            f"split {split!r}: without a split file the split must be one of "
            f"{list(TRAIN_SPLITS)} (the files not held out), {list(HELD_OUT_SPLITS)} (the "
            f"held-out val_fraction) or {ALL_SPLIT!r} (every file)"
        )
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    num_held_out = round(len(names) * val_fraction)
    if val_fraction > 0:
        num_held_out = min(max(num_held_out, 1), len(names) - 1)
    held_out = set(sorted(names, key=lambda n: _rank(n, seed))[:num_held_out])
    part = [n for n in names if (n in held_out) == (split in HELD_OUT_SPLITS)]
    if not part:
        raise DatasetError(
            f"split {split!r} is empty: no split file, and val_fraction={val_fraction} of the "
            f"{len(names)} XML files holds out {num_held_out}; set val_fraction (e.g. 0.2), add "
            f"a split file, or use split {ALL_SPLIT!r} with another root"
        )
    return part
