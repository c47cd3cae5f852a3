"""Ensembles of trained detectors.

* :class:`ProposalEnsemble` is the ResNet paper's (appendix B): the union of every member's RPN
  proposals (each member's proposals are already after its own NMS) is scored by every member's
  per-region head; class probabilities and class-specific boxes are averaged over the members and
  post-processed by the first member. It is a staged detector with the pooling seam (its pool
  is the list of its members' pools), so box refinement runs on top of it, its members may be
  multi-scale wrappers, and a multi-scale wrapper may wrap it. Members must see the same images
  (same test scale) and predict the same classes.
* :class:`WBFEnsemble` fuses the members' final detections with weighted boxes fusion
  (:mod:`detector.inference.wbf`), for models that cannot share proposals.

Members are built models; :func:`detector.engine.build.build_test_model` loads them from
their runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from detector.inference.wbf import weighted_boxes_fusion
from detector.modeling.postprocess import Detections
from detector.modeling.staged import Pool, require_staged, staged_inference


@dataclass
class EnsembleInputs:
    """Each member's preprocessed batch, and the image sizes they share."""

    per_member: list[Any]
    image_sizes: list[tuple[int, int]]


def _check_members(members: Sequence[nn.Module]) -> None:
    if len(members) == 0:
        raise ValueError("an ensemble needs at least one member")
    classes = {int(getattr(m, "num_classes", -1)) for m in members}
    if len(classes) != 1:
        raise ValueError(f"ensemble members predict different class counts: {sorted(classes)}")


class ProposalEnsemble(nn.Module):
    """Staged detector over ``members`` (staged detectors) sharing proposals."""

    def __init__(self, *, members: Sequence[nn.Module]) -> None:
        super().__init__()
        _check_members(members)
        self.members = nn.ModuleList([require_staged(m, "the proposal ensemble") for m in members])

    @property
    def num_classes(self) -> int:
        return self.members[0].num_classes

    def preprocess(self, images: Sequence[Tensor]) -> EnsembleInputs:
        per_member = [m.preprocess(images) for m in self.members]
        sizes = [list(x.image_sizes) for x in per_member]
        if any(s != sizes[0] for s in sizes):
            raise ValueError(f"ensemble members preprocess to different image sizes: {sizes}")
        return EnsembleInputs(per_member=per_member, image_sizes=sizes[0])

    def features(self, images: EnsembleInputs) -> list[Any]:
        return [m.features(x) for m, x in zip(self.members, images.per_member)]

    def proposals(
        self, images: EnsembleInputs, features: list[Any], targets=None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Per image the union (concatenation) of every member's proposals: (sum_m P_mi, 4)."""
        if targets is not None:
            raise ValueError("the ensemble is a test-time component; it takes no targets")
        per_member = [
            m.proposals(x, f)[0] for m, x, f in zip(self.members, images.per_member, features)
        ]
        return [torch.cat(props) for props in zip(*per_member)], {}

    def pooler(self, features: list[Any], image_sizes: list[tuple[int, int]]) -> list[Pool]:
        """One pool per member (each member's default pool on its own features)."""
        return [m.pooler(f, image_sizes) for m, f in zip(self.members, features)]

    def predict(
        self,
        features: list[Any],
        boxes: list[Tensor],
        image_sizes: list[tuple[int, int]],
        *,
        pool: Sequence[Pool] | None = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Member-averaged probs (R_i, K+1) and class-specific boxes (R_i, K+1, 4); ``pool``:
        one pool per member (default: each member's own)."""
        if pool is None:
            outs = [m.predict(f, boxes, image_sizes) for m, f in zip(self.members, features)]
        else:
            if len(pool) != len(self.members):
                raise ValueError(f"{len(pool)} pools for {len(self.members)} ensemble members")
            outs = [
                m.predict(f, boxes, image_sizes, pool=p)
                for m, f, p in zip(self.members, features, pool)
            ]
        n = float(len(outs))
        probs = [sum(ps) / n for ps in zip(*(o[0] for o in outs))]
        pred = [sum(bs) / n for bs in zip(*(o[1] for o in outs))]
        return probs, pred

    def postprocess(
        self, probs: list[Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> Detections:
        return self.members[0].postprocess(probs, boxes, image_sizes)

    def forward(self, images: Sequence[Tensor]) -> Detections:
        return staged_inference(self, images)


class WBFEnsemble(nn.Module):
    """``forward(images)``: every member's detections fused by weighted boxes fusion.

    Args:
        members: modules mapping images to detections (any test-time wrapper).
        weights: one per member (default equal).
        iou_thresh: WBF clustering IoU; skip_score: drop boxes below this score first.
        detections_per_img: detections kept per image.
    """

    def __init__(
        self,
        *,
        members: Sequence[nn.Module],
        weights: Sequence[float] | None = None,
        iou_thresh: float = 0.55,
        skip_score: float = 0.0,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        if len(members) == 0:
            raise ValueError("an ensemble needs at least one member")
        if weights is not None and len(weights) != len(members):
            raise ValueError(f"{len(weights)} weights for {len(members)} ensemble members")
        self.members = nn.ModuleList(members)
        self.weights = None if weights is None else [float(w) for w in weights]
        self.iou_thresh = iou_thresh
        self.skip_score = skip_score
        self.detections_per_img = detections_per_img

    def forward(self, images: Sequence[Tensor]) -> Detections:
        per_member = [m(images) for m in self.members]
        out = []
        for image, dets in zip(images, zip(*per_member)):
            boxes, scores, labels = weighted_boxes_fusion(
                [d["boxes"] for d in dets],
                [d["scores"] for d in dets],
                [d["labels"] for d in dets],
                image_size=(int(image.shape[-2]), int(image.shape[-1])),
                weights=self.weights,
                iou_thresh=self.iou_thresh,
                skip_score=self.skip_score,
            )
            k = self.detections_per_img
            out.append({"boxes": boxes[:k], "scores": scores[:k], "labels": labels[:k]})
        return out
