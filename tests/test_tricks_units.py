"""Unit tests of the competition tricks' pure functions, with hand-computed expectations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ensemble_boxes import weighted_boxes_fusion as package_wbf

from detector.inference.resize import box_scale, hflip_boxes, resize_image, resized_size
from detector.inference.scale_selection import levels_within, maxout_pool, select_scale_pairs
from detector.inference.wbf import weighted_boxes_fusion
from detector.modeling.postprocess import box_voting, flatten_predictions, select_detections

T = torch.tensor


# ----------------------------------------------------------------- box voting
def _voting_candidates():
    boxes = T(
        [
            [0.0, 0.0, 10.0, 10.0],  # 0: class 1, the kept box itself
            [1.0, 0.0, 11.0, 10.0],  # 1: class 1, IoU 90/110 = 0.818 -> votes
            [5.0, 0.0, 15.0, 10.0],  # 2: class 1, IoU 50/150 = 0.333 -> no
            [0.0, 0.0, 10.0, 10.0],  # 3: class 2, same box, other class -> no
            [20.0, 20.0, 30.0, 30.0],  # 4: class 2, second kept box
            [22.0, 22.0, 32.0, 32.0],  # 5: class 2, IoU 64/136 = 0.4706 with box 4
        ]
    )
    scores = T([0.9, 0.6, 0.5, 0.8, 0.3, 0.1])
    labels = T([1, 1, 1, 2, 2, 2])
    return boxes, scores, labels


def test_box_voting_hand_computed():
    boxes, scores, labels = _voting_candidates()
    kept, kept_labels = boxes[[0, 4]], labels[[0, 4]]
    voted = box_voting(kept, kept_labels, boxes, scores, labels, iou_thresh=0.5)
    # box 0: (0.9 * [0,0,10,10] + 0.6 * [1,0,11,10]) / 1.5; box 4: only itself votes
    expected = T([[0.4, 0.0, 10.4, 10.0], [20.0, 20.0, 30.0, 30.0]])
    torch.testing.assert_close(voted, expected)
    # a lower threshold lets box 5 vote for box 4: (0.3 * 20 + 0.1 * 22) / 0.4 = 20.5
    voted = box_voting(kept, kept_labels, boxes, scores, labels, iou_thresh=0.45)
    torch.testing.assert_close(voted[1], T([20.5, 20.5, 30.5, 30.5]))


def test_box_voting_edge_cases():
    boxes, scores, labels = _voting_candidates()
    lonely = T([[50.0, 50.0, 60.0, 60.0]])
    out = box_voting(lonely, T([1]), boxes, scores, labels)
    torch.testing.assert_close(out, lonely)  # no voter: unchanged
    assert box_voting(boxes[:0], labels[:0], boxes, scores, labels).shape == (0, 4)
    torch.testing.assert_close(
        box_voting(lonely, T([1]), boxes[:0], scores[:0], labels[:0]), lonely
    )
    with pytest.raises(ValueError, match="matching lengths"):
        box_voting(lonely, T([1, 2]), boxes, scores, labels)


def test_select_detections_keeps_scores_and_votes_boxes():
    boxes, scores, labels = _voting_candidates()
    out = select_detections(
        boxes, scores, labels, nms_thresh=0.3, vote_thresh=0.5, max_detections=10
    )
    # class 1: 0 kept (0.9), 1 suppressed (0.818 > 0.3), 2 kept (IoU with 0 is 0.333 > 0.3 ->
    # suppressed too); class 2: 3 kept (0.8), 4 kept (no overlap with 3), 5 suppressed by 4
    torch.testing.assert_close(out["scores"], T([0.9, 0.8, 0.3]))
    torch.testing.assert_close(out["labels"], T([1, 2, 2]))
    # box 2 does not vote for box 0 (IoU 0.333 < 0.5)
    torch.testing.assert_close(out["boxes"][0], T([0.4, 0.0, 10.4, 10.0]))
    plain = select_detections(
        boxes, scores, labels, nms_thresh=0.3, vote_thresh=None, max_detections=2
    )
    torch.testing.assert_close(plain["boxes"], boxes[[0, 3]])


def test_flatten_predictions_matches_hand_computation():
    probs = T([[0.1, 0.6, 0.3], [0.5, 0.04, 0.46]])
    boxes = T(
        [
            [[0, 0, 1, 1], [-5, 2, 30, 40], [1, 1, 8, 8]],
            [[0, 0, 1, 1], [1, 1, 9, 9], [3, 3, 3, 9]],  # last one has zero width
        ]
    ).float()
    b, s, lab = flatten_predictions(probs, boxes, (20, 25), score_thresh=0.05)
    torch.testing.assert_close(s, T([0.6, 0.3]))
    torch.testing.assert_close(lab, T([1, 2]))
    torch.testing.assert_close(b, T([[0.0, 2.0, 25.0, 20.0], [1.0, 1.0, 8.0, 8.0]]))


# ----------------------------------------------------------------- SPP-net scale choice
def test_select_scale_pairs_hand_computed():
    # the paper's pyramid seen from a 600 px test image: factors 1/3, 2/3, 1, 4/3, 5/3
    factors = T([200.0, 400.0, 600.0, 800.0, 1000.0]) / 600.0
    sides = T([100.0, 224.0, 600.0, 300.0])
    pairs = select_scale_pairs(sides**2, factors, target_size=224)
    # 100 px: largest scale (area 27778 at 1000) is closest to 224^2 = 50176; its only
    #         neighbour is 800.
    # 224 px: exactly 224^2 at 600; neighbours 400 (|22300 - 50176| = 27876) and 800
    #         (|89202 - 50176| = 39026) -> 400.
    # 600 px: 200 gives 40000 (distance 10176); only neighbour 400.
    # 300 px: 400 gives 40000 (d 10176); neighbours 200 (10000, d 40176) and 600 (90000,
    #         d 39824) -> 600.
    assert pairs.tolist() == [[4, 3], [2, 1], [0, 1], [1, 2]]
    assert select_scale_pairs(T([50.0**2]), T([1.0])).tolist() == [[0, 0]]
    assert select_scale_pairs(T([]), factors).shape == (0, 2)
    with pytest.raises(ValueError, match="strictly increasing"):
        select_scale_pairs(T([1.0]), T([1.0, 0.5]))


def test_levels_kept_in_range_hand_computed():
    """``levels_in_range``: a 66-px cell on a 320-px image, the paper's pyramid scaled by 320/600
    (factors 1/3 .. 5/3: sides 22, 44, 66, 88, 110 px), trained on sides 54-82 px. The bounded
    target (82 px) is closest to 88 px (level 3) and SPP-net pairs it with level 2; in range
    only level 2 (66 px, also the test scale) is allowed, so the cell is pooled at one scale.
    A 54-px cell (sides 18, 36, 54, 72, 90) goes to levels 3 and 2 (72 and 54 px) instead of 4
    and 3 (90 px is above the range)."""
    factors = T([200.0, 400.0, 600.0, 800.0, 1000.0]) / 600.0
    areas = T([66.0, 54.0]) ** 2
    allowed = levels_within(areas, factors, (54.0, 82.0))
    assert allowed.tolist() == [
        [False, False, True, False, False],
        [False, False, True, True, False],
    ]
    assert select_scale_pairs(areas, factors, target_size=82.0).tolist() == [[3, 2], [4, 3]]
    pairs = select_scale_pairs(areas, factors, target_size=82.0, allowed=allowed)
    assert pairs.tolist() == [[2, 2], [3, 2]]
    # the test scale is allowed even when the RoI is outside the range there (a 120-px box:
    # 40, 80, 120, 160, 200 px -> levels 1 (80 px) and 2 (the test scale))
    big = levels_within(T([120.0**2]), factors, (54.0, 82.0))
    assert big.tolist() == [[False, True, True, False, False]]
    assert select_scale_pairs(T([120.0**2]), factors, target_size=82.0, allowed=big).tolist() == [
        [1, 2]
    ]
    # a 40-px box, below the range at the test scale (13.3, 26.7, 40, 53.3, 66.7 px): the
    # enlarged 53.3-px level moves it toward the range and stays allowed, so SPP-net's pair
    # (66.7 and 53.3 px) is kept; the shrunk levels are not
    small = levels_within(T([40.0**2]), factors, (54.0, 82.0))
    assert small.tolist() == [[False, False, True, True, True]]
    assert select_scale_pairs(T([40.0**2]), factors, target_size=82.0, allowed=small).tolist() == [
        [4, 3]
    ]
    # no level allowed (a pyramid without the test scale): every level is, as without a mask
    none = torch.zeros((1, 5), dtype=torch.bool)
    assert select_scale_pairs(T([10.0**2]), factors, target_size=82.0, allowed=none).tolist() == [
        [4, 3]
    ]
    with pytest.raises(ValueError, match="allowed"):
        select_scale_pairs(areas, factors, allowed=allowed[:, :3])


def test_levels_in_range_keeps_the_papers_pairs_on_coco_at_600_px():
    """At the paper's setting (600-px test images, COCO's 17-347 px training objects) the level
    rule changes no RoI up to 520 px; above, the RoI goes to the 200-px level alone."""
    factors = T([200.0, 400.0, 600.0, 800.0, 1000.0]) / 600.0
    sides = torch.arange(1, 1001, dtype=torch.float64)
    allowed = levels_within(sides**2, factors, (17.0, 347.0))
    kept = select_scale_pairs(sides**2, factors, target_size=224, allowed=allowed)
    paper = select_scale_pairs(sides**2, factors, target_size=224)
    changed = (kept != paper).any(dim=1)
    assert not changed[:520].any() and changed[520:].all()
    assert (kept[520:] == 0).all()


def test_maxout_pool_is_elementwise_max_of_the_pair():
    table = {
        0: {0: [1.0, 5.0]},
        1: {0: [3.0, 2.0], 1: [0.0, -1.0]},
        2: {1: [4.0, -3.0], 2: [7.0, 8.0]},
    }
    calls = []

    def pool_at_scale(s, idx):
        calls.append((s, idx.tolist()))
        return T([table[s][int(r)] for r in idx]).reshape(-1, 2, 1, 1)

    pairs = T([[0, 1], [2, 1], [2, 2]])
    out = maxout_pool(pairs, pool_at_scale)
    expected = T([[3.0, 5.0], [4.0, -1.0], [7.0, 8.0]]).reshape(3, 2, 1, 1)
    torch.testing.assert_close(out, expected)
    assert calls == [(0, [0]), (1, [0, 1]), (2, [1, 2])]  # each scale pooled once


# ----------------------------------------------------------------- weighted boxes fusion
SIZE = (100, 100)  # (H, W) of the image the WBF inputs are in


def _wbf_inputs():
    boxes = [
        T([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]]),
        T([[2.0, 0.0, 12.0, 10.0], [0.0, 0.0, 10.0, 10.0]]),
    ]
    scores = [T([0.9, 0.5]), T([0.6, 0.7])]
    labels = [T([1, 1]), T([1, 2])]
    return boxes, scores, labels


def test_wbf_hand_computed():
    boxes, scores, labels = _wbf_inputs()
    b, s, lab = weighted_boxes_fusion(boxes, scores, labels, iou_thresh=0.55, image_size=SIZE)
    # model 2's class-1 box overlaps model 1's by 80/120 = 0.667 -> one cluster, fused box
    # (0.9 * [0,0,10,10] + 0.6 * [2,0,12,10]) / 1.5, score (0.9 + 0.6) / 2; the two boxes
    # found by one model only keep half their score.
    torch.testing.assert_close(s, T([0.75, 0.35, 0.25]))
    torch.testing.assert_close(lab, T([1, 2, 1]))
    torch.testing.assert_close(
        b, T([[0.8, 0.0, 10.8, 10.0], [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    )
    # weights 2:1 -> fused box (1.8 * b1 + 0.6 * b2) / 2.4; scores over the total weight 3
    b, s, lab = weighted_boxes_fusion(boxes, scores, labels, weights=[2.0, 1.0], image_size=SIZE)
    torch.testing.assert_close(s, T([0.8, 1.0 / 3.0, 0.7 / 3.0]))
    torch.testing.assert_close(b[0], T([0.5, 0.0, 10.5, 10.0]))
    # above the threshold the two boxes stay apart
    b, s, lab = weighted_boxes_fusion(boxes, scores, labels, iou_thresh=0.7, image_size=SIZE)
    assert len(b) == 4


def test_wbf_is_the_ensemble_boxes_package_in_pixels():
    """The adapter only converts: random detections of 3 models with unequal weights (where
    the earlier hand-written WBF disagreed with the package) give the package's own output."""
    g = torch.Generator().manual_seed(0)
    h, w = 120, 200
    boxes, scores, labels = [], [], []
    for _ in range(3):
        xy = torch.rand(12, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = 10 + torch.rand(12, 2, generator=g) * 40
        boxes.append(torch.cat([xy, (xy + wh).clamp(max=torch.tensor([w, h]))], dim=1))
        scores.append(torch.rand(12, generator=g))
        labels.append(torch.randint(1, 3, (12,), generator=g))
    weights = [2.0, 1.0, 0.5]
    b, s, lab = weighted_boxes_fusion(boxes, scores, labels, image_size=(h, w), weights=weights)
    scale = np.array([w, h, w, h])
    eb, es, el = package_wbf(
        [x.double().numpy() / scale for x in boxes],
        [x.double().numpy() for x in scores],
        [x.numpy() for x in labels],
        weights=weights,
        iou_thr=0.55,
        skip_box_thr=0.0,
    )
    assert len(b) == len(eb) > 12  # some clusters merged, some not
    np.testing.assert_allclose(b.double().numpy(), eb * scale, atol=1e-4)
    np.testing.assert_allclose(s.double().numpy(), es, atol=1e-6)
    assert lab.tolist() == el.astype(int).tolist()


def test_wbf_single_model_and_empty():
    boxes, scores, labels = _wbf_inputs()
    b, s, lab = weighted_boxes_fusion(boxes[:1], scores[:1], labels[:1], image_size=SIZE)
    torch.testing.assert_close(b, boxes[0])
    torch.testing.assert_close(s, scores[0])
    empty = weighted_boxes_fusion(
        [T([]).reshape(0, 4)], [T([])], [T([], dtype=torch.long)], image_size=SIZE
    )
    assert empty[0].shape == (0, 4) and empty[1].shape == (0,)
    with pytest.raises(ValueError, match="positive weight"):
        weighted_boxes_fusion(boxes, scores, labels, weights=[1.0], image_size=SIZE)


# ----------------------------------------------------------------- geometry
def test_resize_and_flip_geometry():
    assert resized_size(96, 128, 192) == (192, 256)
    assert resized_size(96, 128, 192, max_size=200) == (150, 200)
    img = torch.rand(3, 96, 128)
    assert resize_image(img, 96) is img
    assert resize_image(img, 48).shape == (3, 48, 64)
    torch.testing.assert_close(box_scale((96, 128), (48, 64), img), T([0.5, 0.5, 0.5, 0.5]))
    torch.testing.assert_close(
        hflip_boxes(T([[10.0, 20.0, 30.0, 40.0]]), 100), T([[70.0, 20.0, 90.0, 40.0]])
    )
