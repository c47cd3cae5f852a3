"""The staged detector interface that test-time tricks build on and expose.

:class:`~detector.modeling.meta_arch.FasterRCNN` implements it, and so do the wrappers that
change a stage (multi-scale testing changes ``features`` and how ``predict`` pools, the
proposal-sharing ensemble every stage), so tricks stack: box refinement around an ensemble of
multi-scale models calls the same methods on whatever it wraps. ``preprocess`` may return any
object with an ``image_sizes`` attribute; ``features`` any object ``proposals``/``predict``
accept.

The pooling seam: ``pooler(features, image_sizes)`` returns the :data:`Pool` that ``predict``
uses by default, and ``predict(..., pool=...)`` takes another one. A per-region head asks its
pool for the regions it needs (its RoIs; the global-context head also the whole image, with
``whole_image=True``), so a wrapper that pools differently (multi-scale testing pools on an
image pyramid) plugs in there without knowing the head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from detector.modeling.postprocess import Detections

#: ``pool(boxes, whole_image=False) -> (sum R_i, C, S, S)``: pooled maps of per-image (R_i, 4)
#: xyxy boxes (in the coordinates of the images given to the detector); ``whole_image`` says
#: the boxes are whole-image boxes (global context), which a pooler may treat differently.
Pool = Callable[..., Any]


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


@runtime_checkable
class PoolingDetector(StagedDetector, Protocol):
    """A staged detector with the pooling seam: ``pooler`` and ``predict(..., pool=...)``."""

    def pooler(self, features: Any, image_sizes: list[tuple[int, int]]) -> Any: ...


def require_staged(model: Any, who: str, protocol: type = StagedDetector) -> Any:
    """``model`` if it has the staged interface (``protocol``), else a clear error naming the
    trick."""
    if not isinstance(model, protocol):
        needs = "preprocess, features, proposals, predict, postprocess"
        if protocol is PoolingDetector:
            needs += ", pooler"
        raise TypeError(
            f"{who} needs a detector with the staged interface ({needs}); got "
            f"{type(model).__name__}. Wrappers that only return final detections (box "
            "refinement, multi-scale + flip, WBF ensemble) must be the outermost component"
        )
    return model


def staged_inference(model: StagedDetector, images: Sequence[Tensor]) -> Detections:
    """The plain test path through the five stages."""
    inputs = model.preprocess(images)
    feats = model.features(inputs)
    proposals, _ = model.proposals(inputs, feats)
    probs, boxes = model.predict(feats, proposals, inputs.image_sizes)
    return model.postprocess(probs, boxes, inputs.image_sizes)
