"""The staged detector interface that test-time tricks build on and expose.

:class:`~detector.modeling.meta_arch.FasterRCNN` implements it, and so do the wrappers that
change one stage (multi-scale testing changes ``features``/``predict``, the proposal-sharing
ensemble changes every stage), so tricks stack: box refinement around an ensemble of multi-scale
models calls the same five methods on whatever it wraps. ``preprocess`` may return any object
with an ``image_sizes`` attribute; ``features`` any object ``proposals``/``predict`` accept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

Detections = list[dict[str, Tensor]]


@runtime_checkable
class StagedDetector(Protocol):
    """``preprocess -> features -> proposals -> predict -> postprocess`` (see meta_arch)."""

    def preprocess(self, images: Sequence[Tensor]) -> Any: ...

    def features(self, images: Any) -> Any: ...

    def proposals(
        self, images: Any, features: Any, targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[list[Tensor], dict[str, Tensor]]: ...

    def predict(
        self, features: Any, boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> tuple[list[Tensor], list[Tensor]]: ...

    def postprocess(
        self, probs: list[Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> Detections: ...


def require_staged(model: Any, who: str) -> StagedDetector:
    """``model`` if it has the staged interface, else a clear error naming the trick."""
    if not isinstance(model, StagedDetector):
        raise TypeError(
            f"{who} needs a detector with the staged interface (preprocess, features, "
            f"proposals, predict, postprocess); got {type(model).__name__}. Wrappers that only "
            "return final detections (box refinement, multi-scale + flip, WBF ensemble) must be "
            "the outermost component"
        )
    return model


def staged_inference(model: StagedDetector, images: Sequence[Tensor]) -> Detections:
    """The plain test path through the five stages."""
    inputs = model.preprocess(images)
    feats = model.features(inputs)
    proposals, _ = model.proposals(inputs, feats)
    probs, boxes = model.predict(feats, proposals, inputs.image_sizes)
    return model.postprocess(probs, boxes, inputs.image_sizes)
