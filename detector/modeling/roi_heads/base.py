"""Fast R-CNN per-region head: sampling, prediction, losses and inference as separate stages.

Subclasses change how a region's feature is computed (C4's res5, FPN's two-layer MLP, global
context) by passing other ``box_roi_pool``/``box_head`` modules or overriding
``region_features``, which asks a :data:`~detector.modeling.staged.Pool` for the regions it
needs (the pooling seam that multi-scale testing plugs into).
The module names ``box_roi_pool``, ``box_head`` and ``box_predictor`` match torchvision's
``RoIHeads`` so checkpoints load across the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector.modeling.box_ops import BalancedPositiveNegativeSampler, BoxCoder, Matcher, box_iou
from detector.modeling.postprocess import Detections, detections_from_predictions
from detector.modeling.staged import Pool


@dataclass
class SampledProposals:
    """Training RoIs of a batch: ``boxes[i]`` (R_i, 4), ``labels[i]`` (R_i,) in 0..K
    (0 = background), ``regression_targets[i]`` (R_i, 4) encoded deltas."""

    boxes: list[Tensor]
    labels: list[Tensor]
    regression_targets: list[Tensor]


class FastRCNNPredictor(nn.Module):
    """Sibling (K+1)-way classifier and class-specific box regressor.

    ``forward(x: (R, D) or (R, D, 1, 1)) -> (class_logits (R, K+1), box_deltas (R, (K+1)*4))``.
    Same parameter names as torchvision's ``FastRCNNPredictor``.
    """

    def __init__(self, *, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls_score = nn.Linear(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, (num_classes + 1) * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


class StandardRoIHeads(nn.Module):
    """Per-region detection head of Faster R-CNN.

    Stages (all public, reused by the test-time tricks):
      * ``sample_proposals(proposals, targets)`` -> ``SampledProposals`` (training)
      * ``pooler(features, image_sizes)`` -> the default :data:`Pool` over ``box_roi_pool``
      * ``region_features(boxes, image_sizes, pool)`` -> (R, D)
      * ``box_predictor(region_features)`` -> raw (class_logits, box_deltas)
      * ``predict(features, boxes, image_sizes, pool=None)`` -> per image (probs (R_i, K+1),
        pred_boxes (R_i, K+1, 4)) decoded but not clipped
      * ``losses(...)`` and ``postprocess(...)``.
    """

    def __init__(
        self,
        *,
        box_roi_pool: nn.Module,
        box_head: nn.Module,
        box_predictor: FastRCNNPredictor,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        smooth_l1_beta: float = 1.0 / 9,
    ) -> None:
        super().__init__()
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.num_classes = box_predictor.num_classes
        self.proposal_matcher = Matcher(
            fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False
        )
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(
            batch_size_per_image, positive_fraction
        )
        self.box_coder = BoxCoder(tuple(bbox_reg_weights))
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.smooth_l1_beta = smooth_l1_beta

    # ----------------------------------------------------------------- training RoIs
    @torch.no_grad()
    def sample_proposals(
        self, proposals: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> SampledProposals:
        """Add the ground-truth boxes to the proposals, match, and sample fg/bg RoIs."""
        boxes_out, labels_out, deltas_out = [], [], []
        for props, target in zip(proposals, targets):
            gt_boxes = target["boxes"].to(props.dtype)
            gt_labels = target["labels"]
            props = torch.cat([props, gt_boxes])
            if gt_boxes.numel() == 0:
                matched = torch.zeros(props.shape[0], dtype=torch.int64, device=props.device)
                labels = torch.zeros(props.shape[0], dtype=torch.int64, device=props.device)
                gt_for_props = torch.zeros_like(props)
            else:
                match_idx = self.proposal_matcher(box_iou(gt_boxes, props))
                matched = match_idx.clamp(min=0)
                labels = gt_labels[matched].to(torch.int64)
                labels[match_idx == Matcher.BELOW_LOW_THRESHOLD] = 0
                labels[match_idx == Matcher.BETWEEN_THRESHOLDS] = -1
                gt_for_props = gt_boxes[matched]
            pos_mask, neg_mask = self.fg_bg_sampler([labels])
            keep = torch.where(pos_mask[0] | neg_mask[0])[0]
            boxes_out.append(props[keep])
            labels_out.append(labels[keep])
            deltas_out.append(self.box_coder.encode_single(gt_for_props[keep], props[keep]))
        return SampledProposals(boxes_out, labels_out, deltas_out)

    # ----------------------------------------------------------------- prediction
    def pooler(self, features: dict[str, Tensor], image_sizes: list[tuple[int, int]]) -> Pool:
        """The default pool: ``box_roi_pool`` on ``features`` (whole-image boxes alike)."""

        def pool(boxes: list[Tensor], whole_image: bool = False) -> Tensor:
            return self.box_roi_pool(features, boxes, image_sizes)

        return pool

    def region_features(
        self, boxes: list[Tensor], image_sizes: list[tuple[int, int]], pool: Pool
    ) -> Tensor:
        """Pool each box and run the post-RoI layers: (sum R_i, D)."""
        return self.box_head(pool(boxes)).flatten(start_dim=1)

    def box_features(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> Tensor:
        """:meth:`region_features` with the default pool: (sum R_i, D)."""
        return self.region_features(boxes, image_sizes, self.pooler(features, image_sizes))

    def decode(self, class_logits: Tensor, box_deltas: Tensor, boxes: list[Tensor]):
        """Softmax and box decoding, split per image: lists of (R_i, K+1) and (R_i, K+1, 4)."""
        counts = [len(b) for b in boxes]
        probs = F.softmax(class_logits, dim=-1)
        if sum(counts) == 0:
            pred = box_deltas.new_zeros((0, self.num_classes + 1, 4))
        else:
            pred = self.box_coder.decode(box_deltas, boxes)
        return list(probs.split(counts)), list(pred.split(counts))

    def predict(
        self,
        features: dict[str, Tensor],
        boxes: list[Tensor],
        image_sizes: list[tuple[int, int]],
        *,
        pool: Pool | None = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Score and regress given boxes: per image probs (R_i, K+1), boxes (R_i, K+1, 4).
        ``pool``: how to pool the regions (default :meth:`pooler` on ``features``)."""
        pool = self.pooler(features, image_sizes) if pool is None else pool
        logits, deltas = self.box_predictor(self.region_features(boxes, image_sizes, pool))
        return self.decode(logits, deltas, boxes)

    # ----------------------------------------------------------------- losses
    def losses(self, class_logits: Tensor, box_deltas: Tensor, sampled: SampledProposals):
        """Cross-entropy over K+1 classes and smooth-L1 on the fg RoIs' class-specific deltas,
        normalised by the number of sampled RoIs (as in Fast R-CNN / torchvision)."""
        labels = torch.cat(sampled.labels)
        targets = torch.cat(sampled.regression_targets)
        loss_cls = F.cross_entropy(class_logits, labels)
        pos = torch.where(labels > 0)[0]
        deltas = box_deltas.reshape(box_deltas.shape[0], -1, 4)[pos, labels[pos]]
        loss_box = F.smooth_l1_loss(
            deltas, targets[pos], beta=self.smooth_l1_beta, reduction="sum"
        ) / max(labels.numel(), 1)
        return {"loss_cls": loss_cls, "loss_box": loss_box}

    def forward_train(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        sampled = self.sample_proposals(proposals, targets)
        logits, deltas = self.box_predictor(self.box_features(features, sampled.boxes, image_sizes))
        return self.losses(logits, deltas, sampled)

    # ----------------------------------------------------------------- inference
    def postprocess(
        self, probs: list[Tensor], pred_boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> Detections:
        """Clip, drop background and low scores, per-class NMS, keep the top detections.

        Returns per image ``{"boxes": (D, 4), "scores": (D,), "labels": (D,)}`` with labels
        in 1..K, sorted by decreasing score.
        """
        return [
            self.postprocess_single(p, b, size)
            for p, b, size in zip(probs, pred_boxes, image_sizes)
        ]

    def postprocess_single(
        self, probs: Tensor, boxes: Tensor, image_size: tuple[int, int]
    ) -> dict[str, Tensor]:
        return detections_from_predictions(
            probs,
            boxes,
            image_size,
            score_thresh=self.score_thresh,
            nms_thresh=self.nms_thresh,
            max_detections=self.detections_per_img,
        )

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> Detections:
        """Inference: detections per image in input-image coordinates."""
        probs, boxes = self.predict(features, proposals, image_sizes)
        return self.postprocess(probs, boxes, image_sizes)
