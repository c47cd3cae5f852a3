"""Box refinement (ResNet paper, appendix B; Gidaris & Komodakis' iterative localisation).

Every proposal is scored and regressed once; the regressed box of its top-scoring foreground
class is pooled again and the head gives a new score and a new box. The original and refined
predictions are united (2 x R per-region predictions of every class), per-class NMS at IoU 0.3
keeps the best, and box voting (IoU >= 0.5) replaces each kept box by the score-weighted mean of
the same-class candidates.

Choice made here: one box per RoI is refined, that of its most probable foreground class (the
paper's "a new feature from the regressed box"); with ``iterations > 1`` the refined boxes are
refined again and every round joins the union.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detector.modeling.box_ops import clip_boxes_to_image
from detector.modeling.postprocess import Detections, detections_from_predictions
from detector.modeling.staged import require_staged


def top_class_boxes(probs: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """(R, 4): each RoI's box for its most probable foreground class, clipped to the image.

    Args:
        probs: (R, K+1) class probabilities (column 0 = background).
        boxes: (R, K+1, 4) class-specific boxes.
    """
    if probs.shape[0] == 0:
        return boxes.new_zeros((0, 4))
    top = probs[:, 1:].argmax(dim=1) + 1
    chosen = boxes[torch.arange(boxes.shape[0], device=boxes.device), top]
    return clip_boxes_to_image(chosen, image_size)


class BoxRefinement(nn.Module):
    """Wrapper with the detector's interface: ``forward(images) -> detections per image``.

    Args:
        model: a staged detector (FasterRCNN, a multi-scale wrapper or a proposal ensemble).
        iterations: refinement rounds (0: only the NMS + voting merge of the first prediction).
        nms_thresh: per-class NMS IoU over the union (the paper: 0.3).
        vote_thresh: box-voting IoU (0.5); ``None`` disables voting.
        score_thresh: candidates below this score are dropped before NMS.
        detections_per_img: detections kept per image.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        iterations: int = 1,
        nms_thresh: float = 0.3,
        vote_thresh: float | None = 0.5,
        score_thresh: float = 0.05,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        if iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
        self.model = require_staged(model, "box refinement")
        self.iterations = iterations
        self.nms_thresh = nms_thresh
        self.vote_thresh = vote_thresh
        self.score_thresh = score_thresh
        self.detections_per_img = detections_per_img

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def refine(
        self, features, proposals: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Predictions for the proposals and every refinement round, united per image:
        probs (R_i * (iterations + 1), K+1), boxes (R_i * (iterations + 1), K+1, 4)."""
        probs, boxes = self.model.predict(features, proposals, image_sizes)
        all_probs, all_boxes = [probs], [boxes]
        for _ in range(self.iterations):
            regressed = [top_class_boxes(p, b, s) for p, b, s in zip(probs, boxes, image_sizes)]
            probs, boxes = self.model.predict(features, regressed, image_sizes)
            all_probs.append(probs)
            all_boxes.append(boxes)
        return [torch.cat(p) for p in zip(*all_probs)], [torch.cat(b) for b in zip(*all_boxes)]

    def forward(self, images: Sequence[Tensor]) -> Detections:
        inputs = self.model.preprocess(images)
        feats = self.model.features(inputs)
        proposals, _ = self.model.proposals(inputs, feats)
        probs, boxes = self.refine(feats, proposals, inputs.image_sizes)
        return [
            detections_from_predictions(
                p,
                b,
                size,
                score_thresh=self.score_thresh,
                nms_thresh=self.nms_thresh,
                max_detections=self.detections_per_img,
                vote_thresh=self.vote_thresh,
            )
            for p, b, size in zip(probs, boxes, inputs.image_sizes)
        ]
