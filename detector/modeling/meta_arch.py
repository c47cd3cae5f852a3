"""Faster R-CNN assembled from already-built parts, with a staged public API.

Stages, used by the training step and by every test-time trick:
  ``preprocess(images)`` -> ImageList (normalised, zero-padded to the size divisibility)
  ``features(image_list)`` -> dict of feature maps
  ``proposals(image_list, features, targets=None)`` -> (list of (P_i, 4) boxes, rpn losses)
  ``predict(features, boxes, image_sizes, pool=None)`` -> per image probs (R_i, K+1), boxes
  (R_i, K+1, 4); ``pooler(features, image_sizes)`` is the default pool (the pooling seam)
  ``postprocess(probs, boxes, image_sizes)`` -> detections per image
All boxes are xyxy in the coordinates of the images given to ``forward``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork

from detector.modeling.postprocess import Detections
from detector.modeling.roi_heads.base import StandardRoIHeads
from detector.modeling.staged import Pool, staged_inference

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RPN_LOSS_NAMES = {"loss_objectness": "loss_rpn_cls", "loss_rpn_box_reg": "loss_rpn_box"}


class FasterRCNN(nn.Module):
    """Two-stage detector: backbone -> RPN -> per-region head.

    ``forward(images, targets)`` in training mode returns the named losses
    ``loss_rpn_cls``, ``loss_rpn_box``, ``loss_cls``, ``loss_box``; in eval mode it returns
    ``[{"boxes": (D, 4), "scores": (D,), "labels": (D,)}]`` per image (labels in 1..K).

    Images are float tensors (3, H, W) with values in [0, 1], RGB.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        rpn: RegionProposalNetwork,
        roi_heads: StandardRoIHeads,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
        size_divisibility: int = 32,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.register_buffer("pixel_mean", torch.tensor(list(pixel_mean)).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(list(pixel_std)).view(3, 1, 1), False)
        self.size_divisibility = size_divisibility

    @property
    def num_classes(self) -> int:
        """Number of foreground classes K."""
        return self.roi_heads.num_classes

    # ----------------------------------------------------------------- stages
    def preprocess(self, images: Sequence[Tensor]) -> ImageList:
        """Normalise each (3, H, W) image and pad the batch to a multiple of the divisibility."""
        if len(images) == 0:
            raise ValueError("FasterRCNN got an empty list of images")
        for i, img in enumerate(images):
            if img.dim() != 3 or img.shape[0] != 3 or not img.is_floating_point():
                raise ValueError(
                    f"image {i}: expected a float tensor of shape (3, H, W), got "
                    f"{tuple(img.shape)} {img.dtype}"
                )
        sizes = [(int(img.shape[1]), int(img.shape[2])) for img in images]
        stride = self.size_divisibility
        max_h = int(math.ceil(max(s[0] for s in sizes) / stride) * stride)
        max_w = int(math.ceil(max(s[1] for s in sizes) / stride) * stride)
        batch = images[0].new_zeros((len(images), 3, max_h, max_w))
        for img, pad in zip(images, batch):
            pad[:, : img.shape[1], : img.shape[2]].copy_((img - self.pixel_mean) / self.pixel_std)
        return ImageList(batch, sizes)

    def features(self, images: ImageList) -> dict[str, Tensor]:
        return self.backbone(images.tensors)

    def proposals(
        self,
        images: ImageList,
        features: dict[str, Tensor],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """RPN proposals per image (P_i, 4), sorted by objectness, and the RPN losses
        (empty outside training)."""
        boxes, losses = self.rpn(images, features, targets)
        return boxes, {_RPN_LOSS_NAMES[k]: v for k, v in losses.items()}

    def pooler(self, features: dict[str, Tensor], image_sizes: list[tuple[int, int]]) -> Pool:
        """The pool ``predict`` uses by default (the per-region head's RoI pooling)."""
        return self.roi_heads.pooler(features, image_sizes)

    def predict(
        self,
        features: dict[str, Tensor],
        boxes: list[Tensor],
        image_sizes: list[tuple[int, int]],
        *,
        pool: Pool | None = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        return self.roi_heads.predict(features, boxes, image_sizes, pool=pool)

    def postprocess(
        self, probs: list[Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> Detections:
        return self.roi_heads.postprocess(probs, boxes, image_sizes)

    # ----------------------------------------------------------------- entry points
    def forward(
        self, images: Sequence[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | Detections:
        if not self.training:
            return self.inference(images)
        if targets is None or len(targets) != len(images):
            raise ValueError("training needs one target dict per image")
        _check_targets(targets, self.num_classes)
        image_list = self.preprocess(images)
        feats = self.features(image_list)
        proposals, losses = self.proposals(image_list, feats, targets)
        losses.update(
            self.roi_heads.forward_train(feats, proposals, image_list.image_sizes, targets)
        )
        return losses

    def inference(self, images: Sequence[Tensor]) -> Detections:
        return staged_inference(self, images)


def _check_targets(targets: list[dict[str, Tensor]], num_classes: int) -> None:
    for i, t in enumerate(targets):
        boxes = t.get("boxes")
        labels = t.get("labels")
        if boxes is None or labels is None:
            raise ValueError(f"target {i} needs 'boxes' and 'labels', got keys {sorted(t)}")
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or boxes.shape[0] != labels.shape[0]:
            raise ValueError(
                f"target {i}: boxes must be (N, 4) with N labels, got boxes "
                f"{tuple(boxes.shape)} and labels {tuple(labels.shape)}"
            )
        if boxes.numel() and not bool((boxes[:, 2:] > boxes[:, :2]).all()):
            bad = torch.where((boxes[:, 2:] <= boxes[:, :2]).any(dim=1))[0].tolist()
            raise ValueError(
                f"target {i} (image_id {t.get('image_id')}): boxes {bad} have non-positive "
                "width or height; the data layer should have dropped them"
            )
        if labels.numel() and not (int(labels.min()) >= 1 and int(labels.max()) <= num_classes):
            raise ValueError(
                f"target {i}: labels must be in 1..{num_classes} (0 is background), got "
                f"{labels.unique().tolist()}"
            )
