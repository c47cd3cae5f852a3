"""Test-time wrappers and the global-context head on small random models (no training)."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from torchvision.ops import roi_align

from detector.engine.checkpoint import load_model_weights
from detector.inference import multiscale_paper
from detector.inference.box_refinement import BoxRefinement, top_class_boxes
from detector.inference.ensemble import ProposalEnsemble, WBFEnsemble
from detector.inference.multiscale_flip import MultiScaleFlip
from detector.inference.multiscale_paper import MultiScaleMaxout
from detector.inference.resize import resize_image
from detector.modeling.roi_heads.context import GlobalContextPredictor, GlobalContextRoIHeads
from tests.helpers import compose_config

pytestmark = pytest.mark.usefixtures("single_thread")


T = torch.tensor
QUICK = "faster_rcnn_r18_c4_quick"


#: few proposals and RoIs keep the per-region head (most of the CPU time) cheap
SMALL = [
    "model.depth=18",
    "model.rpn_pre_nms_top_n={training:200,testing:200}",
    "model.rpn_post_nms_top_n={training:32,testing:24}",
    "model.roi_batch_size_per_image=16",
]


def _model(roi_heads: str = "c4", model: str = QUICK, seed: int = 0):
    cfg = compose_config("train", [f"model={model}", f"model/roi_heads={roi_heads}", *SMALL])
    cfg.dataset.num_classes = 3
    torch.manual_seed(seed)
    return instantiate(cfg.model.net).eval()


@pytest.fixture(scope="module")
def plain():
    return _model("c4")


@pytest.fixture(scope="module")
def context():
    return _model("c4_global_context")


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 96, 128, generator=g)]


def _assert_same_detections(got, expected):
    for g, e in zip(got, expected):
        assert len(e["boxes"]) > 5, "comparing near-empty outputs would prove nothing"
        torch.testing.assert_close(g["boxes"], e["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(g["scores"], e["scores"], atol=1e-5, rtol=0)
        assert torch.equal(g["labels"], e["labels"])


# ----------------------------------------------------------------- box refinement
class _FakeStaged:
    """One 100x100 image, one proposal, one foreground class; fixed predictions per call."""

    num_classes = 1

    def __init__(self):
        self.seen = []
        self.outputs = [
            (T([[0.2, 0.8]]), T([[[0.0, 0, 10, 10], [0, 0, 20, 20]]])),
            (T([[0.4, 0.6]]), T([[[0.0, 0, 10, 10], [0, 0, 20, 22]]])),
        ]

    def preprocess(self, images):
        return SimpleNamespace(image_sizes=[(100, 100)])

    def features(self, images):
        return None

    def proposals(self, images, features, targets=None):
        return [T([[0.0, 0.0, 10.0, 10.0]])], {}

    def predict(self, features, boxes, image_sizes):
        self.seen.append(boxes[0].clone())
        probs, pred = self.outputs[len(self.seen) - 1]
        return [probs], [pred]

    def postprocess(self, probs, boxes, image_sizes):
        raise AssertionError("box refinement merges by itself")


def test_box_refinement_hand_computed():
    fake = _FakeStaged()
    refine = BoxRefinement(model=fake, iterations=1, nms_thresh=0.3, vote_thresh=0.5)
    (det,) = refine([torch.zeros(3, 100, 100)])
    # the second pass pools the class-1 box of the first
    torch.testing.assert_close(fake.seen[1], T([[0.0, 0.0, 20.0, 20.0]]))
    # union: [0,0,20,20] @ 0.8 and [0,0,20,22] @ 0.6 (IoU 400/440): NMS keeps the first, voting
    # averages both: y2 = (0.8 * 20 + 0.6 * 22) / 1.4
    torch.testing.assert_close(det["scores"], T([0.8]))
    torch.testing.assert_close(det["boxes"], T([[0.0, 0.0, 20.0, (16 + 13.2) / 1.4]]))
    assert det["labels"].tolist() == [1]


def test_top_class_boxes_picks_foreground_argmax_and_clips():
    probs = T([[0.9, 0.06, 0.04], [0.1, 0.2, 0.7]])
    boxes = T(
        [[[0, 0, 1, 1], [1, 1, 5, 5], [2, 2, 6, 6]], [[0, 0, 1, 1], [0, 0, 2, 2], [3, 4, 90, 9]]]
    )
    out = top_class_boxes(probs, boxes.float(), (50, 40))
    torch.testing.assert_close(out, T([[1.0, 1.0, 5.0, 5.0], [3.0, 4.0, 40.0, 9.0]]))


def test_box_refinement_without_rounds_is_the_detector(images, plain):
    model = plain
    with torch.no_grad():
        expected = model(images)
        # no refinement round, the detector's NMS threshold, no voting -> its own detections
        got = BoxRefinement(model=model, iterations=0, nms_thresh=0.5, vote_thresh=None)(images)
        refined = BoxRefinement(model=model, iterations=2)(images)
    _assert_same_detections(got, expected)
    assert 0 < len(refined[0]["boxes"]) <= 100


# ----------------------------------------------------------------- multi-scale (paper)
@pytest.mark.parametrize("roi_heads", ["plain", "context"])
def test_multiscale_paper_single_scale_is_the_detector(images, roi_heads, request):
    model = request.getfixturevalue(roi_heads)
    with torch.no_grad():
        expected = model(images)
        got = MultiScaleMaxout(model=model, scales=[96])(images)
    _assert_same_detections(got, expected)


def test_multiscale_paper_two_scales_is_maxout_of_roi_align(images, plain):
    model = plain
    wrapper = MultiScaleMaxout(model=model, scales=[96, 192])
    boxes = [T([[10.0, 12.0, 50.0, 60.0], [0.0, 0.0, 127.0, 95.0], [60.0, 30.0, 70.0, 44.0]])]
    with torch.no_grad():
        probs, pred = wrapper.predict(
            wrapper.features(wrapper.preprocess(images)), boxes, [(96, 128)]
        )
        # by hand: RoIAlign (the quick config's output size, stride 16) at both scales, max
        f0 = model.features(model.preprocess(images))["res4"]
        f1 = model.features(model.preprocess([resize_image(images[0], 192)]))["res4"]
        size = model.roi_heads.box_roi_pool.output_size
        kw = dict(output_size=size, spatial_scale=1 / 16, sampling_ratio=0, aligned=True)
        pooled = torch.maximum(roi_align(f0, boxes, **kw), roi_align(f1, [boxes[0] * 2], **kw))
        head = model.roi_heads
        exp_probs, exp_pred = head.predict({}, boxes, [(96, 128)], pool=lambda b, **_: pooled)
    torch.testing.assert_close(probs[0], exp_probs[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pred[0], exp_pred[0], atol=1e-3, rtol=1e-4)


def test_multiscale_paper_can_pool_the_context_box_at_the_test_scale(images, context):
    model = context
    boxes = [T([[10.0, 12.0, 50.0, 60.0], [60.0, 30.0, 70.0, 44.0]])]
    with torch.no_grad():
        single = MultiScaleMaxout(model=model, scales=[96], context_scale="test")(images)
        _assert_same_detections(single, model(images))  # one level = the test scale
        wrapper = MultiScaleMaxout(model=model, scales=[96, 192], context_scale="test")
        feats = wrapper.features(wrapper.preprocess(images))
        probs, _ = wrapper.predict(feats, boxes, [(96, 128)])
        # by hand: the RoIs by scale pair + maxout, the whole image [0, 0, 128, 96] at 96 px
        head = model.roi_heads
        rois = wrapper.pooler(feats, [(96, 128)])(boxes)
        whole = head.box_roi_pool(feats.base, [T([[0.0, 0.0, 128.0, 96.0]])], [(96, 128)])

        def by_hand(b, whole_image=False):
            return whole if whole_image else rois

        exp_probs, _ = head.predict(feats.base, boxes, [(96, 128)], pool=by_hand)
        pyramid = MultiScaleMaxout(model=model, scales=[96, 192])
        other, _ = pyramid.predict(feats, boxes, [(96, 128)])
    torch.testing.assert_close(probs[0], exp_probs[0], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(probs[0], other[0])  # the 192 px level changes the context
    with pytest.raises(ValueError, match="unknown context_scale"):
        MultiScaleMaxout(model=model, context_scale="smallest")


# ----------------------------------------------------------------- multi-scale + flip
def test_multiscale_flip_identity_view_is_the_detector(images, plain):
    model = plain
    with torch.no_grad():
        expected = model(images)
        got = MultiScaleFlip(model=model, scales=[96], flip=False, nms_thresh=0.5)(images)
        more = MultiScaleFlip(model=model, scales=[80, 96], flip=True, merge="vote")(images)
    _assert_same_detections(got, expected)
    assert 0 < len(more[0]["boxes"]) <= 100
    assert (more[0]["boxes"][:, 2] <= 128 + 1e-3).all() and (more[0]["boxes"][:, 0] >= 0).all()


def test_flip_view_maps_boxes_back(images):
    class Fixed(torch.nn.Module):
        """Detects one box at x 10..30 in whatever (possibly flipped) image it gets."""

        def forward(self, batch):
            return [
                {"boxes": T([[10.0, 5.0, 30.0, 25.0]]), "scores": T([0.9]), "labels": T([1])}
                for _ in batch
            ]

    views = MultiScaleFlip(model=Fixed(), scales=[48], flip=True).views(images)
    # scale 48 halves the 96x128 image: back to the given image x2; the flipped view's box is
    # at x 64-30..64-10 in the 64 px wide half-size image -> 68..108 at full size
    torch.testing.assert_close(views[0][0]["boxes"], T([[20.0, 10.0, 60.0, 50.0]]))
    torch.testing.assert_close(views[1][0]["boxes"], T([[68.0, 10.0, 108.0, 50.0]]))


# ----------------------------------------------------------------- ensembles
def test_ensemble_of_a_model_with_itself_is_the_model(images, plain):
    model = plain
    with torch.no_grad():
        expected = model(images)
        shared = ProposalEnsemble(members=[model, model])(images)
        fused = WBFEnsemble(members=[model, model])(images)
        refined = BoxRefinement(model=model)(images)
        refined_ens = BoxRefinement(model=ProposalEnsemble(members=[model, model]))(images)
    _assert_same_detections(shared, expected)
    _assert_same_detections(fused, expected)
    _assert_same_detections(refined_ens, refined)


def test_ensemble_averages_two_models(images, plain):
    a, b = plain, _model(seed=1)
    ens = ProposalEnsemble(members=[a, b])
    with torch.no_grad():
        inputs = ens.preprocess(images)
        feats = ens.features(inputs)
        props, _ = ens.proposals(inputs, feats)
        pa, _ = a.proposals(inputs.per_member[0], feats[0])
        pb, _ = b.proposals(inputs.per_member[1], feats[1])
        assert torch.equal(props[0], torch.cat([pa[0], pb[0]]))  # union
        probs, boxes = ens.predict(feats, props, inputs.image_sizes)
        (prob_a,), (box_a,) = a.predict(feats[0], props, inputs.image_sizes)
        (prob_b,), (box_b,) = b.predict(feats[1], props, inputs.image_sizes)
    torch.testing.assert_close(probs[0], (prob_a + prob_b) / 2)
    torch.testing.assert_close(boxes[0], (box_a + box_b) / 2)


def test_wrappers_reject_what_they_cannot_wrap(plain):
    model = plain
    with pytest.raises(TypeError, match="staged interface"):
        BoxRefinement(model=MultiScaleFlip(model=model, scales=[96]))
    with pytest.raises(ValueError, match="strictly increasing"):
        MultiScaleMaxout(model=model, scales=[200, 100])
    with pytest.raises(ValueError, match="unknown merge"):
        MultiScaleFlip(model=model, merge="mean")


# ----------------------------------------------------------------- global context head
def test_global_context_feature_is_roi_feature_next_to_whole_image_feature(context):
    model = context
    head = model.roi_heads
    assert isinstance(head, GlobalContextRoIHeads)
    images = [torch.rand(3, 96, 128), torch.rand(3, 64, 96)]
    boxes = [T([[10.0, 12.0, 50.0, 60.0], [0.0, 0.0, 20.0, 20.0]]), T([[5.0, 5.0, 40.0, 30.0]])]
    with torch.no_grad():
        il = model.preprocess(images)
        feats = model.features(il)
        out = head.box_features(feats, boxes, il.image_sizes)
        d = head.box_head.out_channels
        assert out.shape == (3, 2 * d)
        rois = head.box_head(head.box_roi_pool(feats, boxes, il.image_sizes))
        whole = head.box_head(
            head.box_roi_pool(
                feats, [T([[0.0, 0, 128, 96]]), T([[0.0, 0, 96, 64]])], il.image_sizes
            )
        )
    torch.testing.assert_close(out[:, :d], rois, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[:2, d:], whole[0:1].expand(2, -1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[2:, d:], whole[1:2], atol=1e-5, rtol=1e-4)


def test_global_context_checkpoint_compatibility(plain, context):
    plain_model, plain, ctx = plain, plain.state_dict(), context.state_dict()
    assert plain.keys() == ctx.keys()  # no new parameter names
    differ = sorted(k for k in plain if plain[k].shape != ctx[k].shape)
    assert differ == [
        "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.box_predictor.cls_score.weight",
    ]
    assert ctx["roi_heads.box_predictor.cls_score.weight"].shape == (4, 2 * 512)
    load_model_weights(plain_model, plain, source="plain")  # plain checkpoints still load
    with pytest.raises(RuntimeError, match="shape mismatches"):
        load_model_weights(context, plain, source="plain")


def test_global_context_rejects_plain_predictor(plain):
    head = plain.roi_heads
    with pytest.raises(ValueError, match="needs 1024 inputs but has 512"):
        GlobalContextRoIHeads(
            box_roi_pool=head.box_roi_pool, box_head=head.box_head, box_predictor=head.box_predictor
        )
    assert GlobalContextPredictor(in_channels=8, num_classes=2).cls_score.in_features == 16


def test_fpn_global_context_trains_and_predicts():
    model = _model("fpn_global_context", model="faster_rcnn_r50_fpn")
    assert model.roi_heads.box_predictor.cls_score.in_features == 2048
    model.train()
    target = {"boxes": T([[10.0, 10.0, 60.0, 50.0]]), "labels": T([2])}
    losses = model([torch.rand(3, 64, 80)], [target])
    sum(losses.values()).backward()
    grad = model.roi_heads.box_head.fc6.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    with torch.no_grad():
        det = model.eval()([torch.rand(3, 64, 80)])[0]
    assert det["boxes"].shape[1] == 4


# ----------------------------------------------------------------- composition through the seam
def test_multiscale_wraps_an_ensemble_and_equals_the_ensemble_of_multiscale_members(images, plain):
    """Both orders make sense and agree: a pyramid pool per member either way."""
    other = _model(seed=1)
    with torch.no_grad():
        outside = MultiScaleMaxout(model=ProposalEnsemble(members=[plain, other]), scales=[64, 96])
        inside = ProposalEnsemble(
            members=[
                MultiScaleMaxout(model=plain, scales=[64, 96]),
                MultiScaleMaxout(model=other, scales=[64, 96]),
            ]
        )
        got, expected = outside(images), inside(images)
        single = MultiScaleMaxout(model=plain, scales=[64, 96])(images)
    _assert_same_detections(got, expected)
    assert not torch.equal(got[0]["scores"], single[0]["scores"])  # the ensemble did something


def test_multiscale_wrapper_uses_only_the_public_seam():
    """No reaching into the wrapped model: no hasattr/getattr, no roi_heads."""
    source = inspect.getsource(multiscale_paper)
    for forbidden in ("hasattr(", "getattr(", "roi_heads", "box_roi_pool", "box_predictor"):
        assert forbidden not in source, forbidden


def test_a_custom_head_following_the_seam_gets_multiscale_pooling(images, plain):
    """Any head that pools through ``pool`` works under the wrapper: here one that records
    what it was asked to pool."""
    asked = []
    head = plain.roi_heads
    original = type(head).region_features

    def recording(self, boxes, image_sizes, pool):
        asked.append(pool)
        return original(self, boxes, image_sizes, pool)

    boxes = [T([[10.0, 12.0, 50.0, 60.0]])]
    wrapper = MultiScaleMaxout(model=plain, scales=[96, 192])
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(head), "region_features", recording)
        wrapper.predict(wrapper.features(wrapper.preprocess(images)), boxes, [(96, 128)])
    assert len(asked) == 1 and type(asked[0]).__name__ == "PyramidPool"


def test_reference_scale_carries_the_pyramid_and_target_to_the_image_size(images, plain):
    """With reference_scale=600 a 96-px image gets levels of 96 * s / 600 px and a target of
    224 * 96 / 600; absolute (null) keeps the numbers as pixels."""
    scaled = MultiScaleMaxout(model=plain, scales=[300, 600, 1200], reference_scale=600)
    inputs = scaled.preprocess(images)
    assert [lvl.image_sizes[0] for lvl in inputs.levels] == [(48, 64), (96, 128), (192, 256)]
    pool = scaled.pooler(scaled.features(inputs), inputs.image_sizes)
    assert pool.target_sizes == pytest.approx([224 * 96 / 600])
    absolute = MultiScaleMaxout(model=plain, scales=[48, 96], reference_scale=None)
    assert [lvl.image_sizes[0] for lvl in absolute.preprocess(images).levels] == [
        (48, 64),
        (96, 128),
    ]
    with pytest.raises(ValueError, match="reference_scale"):
        MultiScaleMaxout(model=plain, reference_scale=0)


def test_target_range_bounds_the_scaled_target(images, plain):
    """The scaled target (224 * 96 / 600 = 35.84 px for a 96-px image) is clipped into
    ``target_range``; inside the range it is the paper's, unchanged."""
    scaled = 224 * 96 / 600
    for bounds, expected in (([40, 80], 40.0), ([10, 30], 30.0), ([10, 80], scaled)):
        ms = MultiScaleMaxout(
            model=plain, scales=[300, 600], reference_scale=600, target_range=bounds
        )
        inputs = ms.preprocess(images)
        pool = ms.pooler(ms.features(inputs), inputs.image_sizes)
        assert pool.target_sizes == pytest.approx([expected])
    for bad in ([50, 40], [0, 10], [10]):
        with pytest.raises(ValueError, match="target_range"):
            MultiScaleMaxout(model=plain, target_range=bad)


def test_levels_in_range_restricts_the_pyramid_pool(images, plain):
    """``levels_in_range`` hands ``target_range`` to the pool as the sizes to keep RoIs in. A
    40-px box on the 96-px test image (levels 48, 96, 192 px: the box is 20, 40, 80 px there),
    target 35.84 px: without the option SPP-net pairs 40 px with 20 px (area distances 315 and
    885 against 5115 for 80 px); with the range [30, 50] only the test scale is left."""
    box = [torch.tensor([[10.0, 10.0, 50.0, 50.0]])]
    pairs = {}
    for flag in (False, True):
        ms = MultiScaleMaxout(
            model=plain,
            scales=[300, 600, 1200],
            reference_scale=600,
            target_range=[30, 50],
            levels_in_range=flag,
        )
        inputs = ms.preprocess(images)
        pool = ms.pooler(ms.features(inputs), inputs.image_sizes)
        assert pool.size_range == ((30.0, 50.0) if flag else None)
        pairs[flag] = pool.scale_pairs(box).tolist()
    assert pairs == {False: [[1, 0]], True: [[1, 1]]}


def test_levels_in_range_warns_when_the_test_scale_is_no_level(images, plain, caplog):
    """Without a pyramid level at the test scale there is nowhere to keep a RoI that no level
    brings within the training sizes: said once, with the pyramid."""
    for scales, warned in (([300, 600, 1200], False), ([300, 1200], True)):
        caplog.clear()
        ms = MultiScaleMaxout(
            model=plain, scales=scales, reference_scale=600, target_range=[30, 50],
            levels_in_range=True,
        )  # fmt: skip
        inputs = ms.preprocess(images)
        for _ in range(2):
            ms.pooler(ms.features(inputs), inputs.image_sizes)
        assert caplog.text.count("is not a pyramid level") == int(warned)
