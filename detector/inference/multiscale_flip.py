"""Multi-scale (and flip) testing in the common form (detectron2, MMDetection TTA).

The wrapped detector runs end to end on every scale of the image, and on its horizontal
mirror; the detections are mapped back to the given image and merged per class by NMS, or by
NMS followed by box voting.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from detector.inference.resize import box_scale, hflip_boxes, resize_image
from detector.modeling.postprocess import Detections, concat_detections, select_detections

MERGE_MODES = ("nms", "vote")


class MultiScaleFlip(nn.Module):
    """Wrapper with the detector's interface: ``forward(images) -> detections per image``.

    Args:
        model: any module mapping a list of (3, H, W) images to detections.
        scales: shorter sides in pixels at which to run the model.
        max_size: cap on the longer side (``None``: no cap).
        flip: also run on the horizontally flipped image at every scale.
        merge: ``nms`` (union + per-class NMS) or ``vote`` (NMS then box voting).
        nms_thresh, vote_thresh: IoU thresholds of the merge.
        detections_per_img: detections kept per image.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        scales: Sequence[int] = (400, 500, 600, 700, 800),
        max_size: int | None = None,
        flip: bool = True,
        merge: str = "nms",
        nms_thresh: float = 0.5,
        vote_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        if merge not in MERGE_MODES:
            raise ValueError(f"unknown merge {merge!r}; allowed: {', '.join(MERGE_MODES)}")
        if not scales:
            raise ValueError("multi-scale testing needs at least one scale")
        self.model = model
        self.scales = [int(s) for s in scales]
        self.max_size = max_size
        self.flip = flip
        self.merge = merge
        self.nms_thresh = nms_thresh
        self.vote_thresh = vote_thresh
        self.detections_per_img = detections_per_img

    def views(self, images: Sequence[Tensor]) -> list[Detections]:
        """Detections of every (scale, flip) view, in the coordinates of ``images``."""
        sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        out = []
        for s in self.scales:
            resized = [resize_image(img, s, self.max_size) for img in images]
            for flipped in (False, True) if self.flip else (False,):
                batch = [img.flip(-1) for img in resized] if flipped else resized
                dets = self.model(batch)
                view = []
                for det, img, size in zip(dets, resized, sizes):
                    new = (int(img.shape[-2]), int(img.shape[-1]))
                    boxes = hflip_boxes(det["boxes"], new[1]) if flipped else det["boxes"]
                    boxes = boxes * box_scale(new, size, boxes)
                    view.append({**det, "boxes": boxes})
                out.append(view)
        return out

    def forward(self, images: Sequence[Tensor]) -> Detections:
        per_view = self.views(images)
        vote = self.vote_thresh if self.merge == "vote" else None
        return [
            select_detections(
                *concat_detections([view[i] for view in per_view]),
                nms_thresh=self.nms_thresh,
                vote_thresh=vote,
                max_detections=self.detections_per_img,
            )
            for i in range(len(images))
        ]
