"""Every convention of every numerics preset (src/maskrcnn/numerics.py) against an independent
NumPy computation (or, for the model zoo, the MindSpore op the zoo itself calls), on tiny
tensors. Neither torch nor the zoo's code is needed."""

import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from src.config import ConfigError, load_config
from src.maskrcnn.anchors import generate_anchors
from src.maskrcnn.box_ops import (DEFAULT_MAX_LOG_RATIO, clip_boxes, decode_boxes, encode_boxes,
                                  np_decode_boxes, np_encode_boxes)
from src.maskrcnn.fpn import FPN
from src.maskrcnn.numerics import PRESET_NAMES, PRESETS, get_numerics
from src.maskrcnn.proposals import ProposalGenerator
from src.maskrcnn.resnet50 import ZERO_EPS_STAND_IN, stem_max_pool
from src.maskrcnn.roi_heads import TEST_PRE_NMS_CANDIDATES, BoxPostProcessor, candidate_bound
from src.maskrcnn.roi_align import MultiLevelRoIAlign, roi_levels
from src.maskrcnn.target import CPU_KERNELS

PRESET_LIST = list(PRESET_NAMES)


@pytest.fixture(autouse=True)
def _pynative():
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
    yield
    ms.set_context(mode=previous)


# ---- the preset table ----------------------------------------------------------------------

def test_preset_table_is_the_documented_one():
    assert PRESET_NAMES == ("native", "zoo", "torchvision")
    native, zoo, tv = PRESETS["native"], PRESETS["zoo"], PRESETS["torchvision"]
    assert (native.fpn_upsample, zoo.fpn_upsample, tv.fpn_upsample) == ("nearest", "bilinear_legacy", "nearest")
    assert (native.stem_pool, zoo.stem_pool, tv.stem_pool) == ("same", "same", "symmetric")
    assert (native.roi_align, zoo.roi_align, tv.roi_align) == ("aligned", "legacy", "legacy")
    assert (native.box_plus_one, zoo.box_plus_one, tv.box_plus_one) == (False, True, False)
    assert (native.clip_to, zoo.clip_to, tv.clip_to) == ("image", "input", "image")
    assert (native.min_detection_size, zoo.min_detection_size, tv.min_detection_size) == (0.0, 0.0, 0.01)
    assert (native.bn_eps, zoo.bn_eps, tv.bn_eps) == (1e-5, 1e-5, 0.0)
    assert (native.candidate_cap, zoo.candidate_cap, tv.candidate_cap) == ("fixed", "exact", "exact")
    assert (native.mask_box, zoo.mask_box, tv.mask_box) == ("detection", "argmax_class", "detection")
    assert (native.mask_paste, zoo.mask_paste, tv.mask_paste) == ("native", "zoo", "torchvision")


def test_config_key_default_recipes_and_bad_value():
    assert load_config().numerics == "native"
    assert load_config("FineTune/zoo.yaml").numerics == "zoo"
    tv = load_config("FineTune/torchvision.yaml")
    assert tv.numerics == "torchvision" and tv.rpn_min_box_size == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match="numerics"):
        load_config(overrides={"numerics": "detectron"})
    with pytest.raises(ValueError, match="detectron"):
        get_numerics("detectron")


# ---- FPN upsampling ------------------------------------------------------------------------

def _np_upsample(x, out_h, out_w, mode):
    """Independent NumPy upsampling of ``x [H, W]``: source position ``d * in / out``."""
    in_h, in_w = x.shape

    def axis(out, size):
        src = np.arange(out) * (size / out)
        low = np.floor(src).astype(int)
        return low, np.minimum(low + 1, size - 1), src - low

    ylo, yhi, fy = axis(out_h, in_h)
    xlo, xhi, fx = axis(out_w, in_w)
    if mode == "nearest":
        return x[ylo][:, xlo]
    rows = x[ylo] * (1 - fy)[:, None] + x[yhi] * fy[:, None]
    return rows[:, xlo] * (1 - fx) + rows[:, xhi] * fx


@pytest.mark.parametrize("preset", PRESET_LIST)
@pytest.mark.parametrize("in_hw,out_hw", [((2, 3), (4, 6)), ((3, 4), (5, 7))])
def test_fpn_upsampling(preset, in_hw, out_hw):
    fpn = FPN(in_channels=(1, 1, 1, 1), out_channels=1, upsample=get_numerics(preset).fpn_upsample)
    x = (np.arange(np.prod(in_hw), dtype=np.float32).reshape(in_hw) ** 2)
    got = fpn._up(Tensor(x[None, None]), Tensor(np.zeros((1, 1) + out_hw, np.float32))).asnumpy()[0, 0]
    mode = "nearest" if get_numerics(preset).fpn_upsample == "nearest" else "bilinear"
    np.testing.assert_allclose(got, _np_upsample(x, *out_hw, mode), rtol=1e-6, atol=1e-5)
    # The two modes really differ on these inputs (so the check above tells them apart).
    other = "bilinear" if mode == "nearest" else "nearest"
    assert np.abs(got - _np_upsample(x, *out_hw, other)).max() > 0.1


# ---- stem max-pool -------------------------------------------------------------------------

def _np_maxpool(x, pad_before, pad_after):
    """3x3 stride-2 max-pool of ``x [H, W]`` with explicit -inf padding."""
    padded = np.pad(x, ((pad_before, pad_after), (pad_before, pad_after)), constant_values=-np.inf)
    out = (padded.shape[0] - 3) // 2 + 1
    return np.array([[padded[2 * i:2 * i + 3, 2 * j:2 * j + 3].max() for j in range(out)]
                     for i in range(out)])


@pytest.mark.parametrize("preset", PRESET_LIST)
def test_stem_pool_windows(preset):
    x = np.random.default_rng(3).standard_normal((6, 6)).astype(np.float32)
    got = stem_max_pool(get_numerics(preset).stem_pool)(Tensor(x[None, None])).asnumpy()[0, 0]
    pads = (1, 1) if get_numerics(preset).stem_pool == "symmetric" else (0, 1)
    np.testing.assert_array_equal(got, _np_maxpool(x, *pads))
    other = (0, 1) if pads == (1, 1) else (1, 1)
    assert not np.array_equal(got, _np_maxpool(x, *other))


# ---- RoI level rule ------------------------------------------------------------------------

# (width, height) of boxes just below/at the thresholds of each rule.
# 111.99985 is 1.3e-6 (relative) below 112: torchvision's epsilon (added to the level) does not lift it to P3,
# an epsilon inside the log (native) does.
LEVEL_BOXES = [(111.99985, 111.99985), (111.9, 112.0), (112.0, 112.0), (111.0, 111.0), (110.0, 111.0), (223.0, 223.0),
               (224.0, 224.0), (447.0, 447.0), (448.0, 448.0), (1000.0, 900.0), (0.0, 0.0),
               (3.0, 2.0)]


def _np_level(w, h, rule):
    if rule == "sqrt_area_plus_one":
        size = math.sqrt(w + 1) * math.sqrt(h + 1)
        level = 2 + math.floor(math.log2(size / 56 + 1e-6))
    elif rule == "torchvision":
        size = math.sqrt(w * h)
        level = math.floor(4 + math.log2(size / 224) + 1e-6) if size > 0 else 2
    else:
        level = math.floor(4 + math.log2(math.sqrt(w * h + 1e-6) / 224 + 1e-6))
    return min(max(level, 2), 5)


@pytest.mark.parametrize("preset", PRESET_LIST)
def test_roi_levels_at_thresholds(preset):
    rule = get_numerics(preset).roi_level
    boxes = np.array([[10, 20, 10 + w, 20 + h] for w, h in LEVEL_BOXES], np.float32)
    got = roi_levels(Tensor(boxes), rule=rule).asnumpy()
    expected = [_np_level(w, h, rule) for w, h in LEVEL_BOXES]
    np.testing.assert_array_equal(got, expected)
    # Spot values: a 112-pixel square is on P3 under every rule, a 111-pixel one only with +1.
    assert got[2] == 3 and got[3] == (3 if rule == "sqrt_area_plus_one" else 2)
    assert got[0] == (2 if rule == "torchvision" else 3)


# ---- anchors -------------------------------------------------------------------------------

def _np_first_anchors(layout, stride, size, ratio, cell_x, cell_y):
    """Independent anchor of one cell (ratio = h / w, area size**2)."""
    w, h = size / math.sqrt(ratio), size * math.sqrt(ratio)
    if layout == "centred":
        cx, cy = (cell_x + 0.5) * stride, (cell_y + 0.5) * stride
        return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    if layout == "legacy":
        c = (stride - 1) / 2
        base = np.round([c - (w - 1) / 2, c - (h - 1) / 2, c + (w - 1) / 2, c + (h - 1) / 2])
    else:
        base = np.round([-w / 2, -h / 2, w / 2, h / 2])
    return list(base + [cell_x * stride, cell_y * stride] * 2)


@pytest.mark.parametrize("preset", PRESET_LIST)
def test_anchor_coordinates_of_first_cells(preset):
    layout = get_numerics(preset).anchor_layout
    anchors = generate_anchors([(2, 3), (1, 2)], (4, 8), (8.0,), (0.5, 1.0, 2.0), layout=layout)
    # Level 0 (stride 4, size 32): cells (x=0, y=0), (1, 0), (0, 1); 3 ratios each.
    for cell, (cx, cy) in enumerate([(0, 0), (1, 0), (2, 0), (0, 1)]):
        for r, ratio in enumerate((0.5, 1.0, 2.0)):
            np.testing.assert_allclose(anchors[cell * 3 + r],
                                       _np_first_anchors(layout, 4, 32, ratio, cx, cy), atol=1e-5)
    # First anchor of level 1 (stride 8, size 64).
    np.testing.assert_allclose(anchors[2 * 3 * 3], _np_first_anchors(layout, 8, 64, 0.5, 0, 0), atol=1e-5)
    # Published values of the first cell (ratio 0.5, 1, 2) as a readable cross-check.
    first = {"centred": [-14.0, -14.0, 18.0, 18.0], "legacy": [-14.0, -14.0, 17.0, 17.0],
             "torchvision": [-16.0, -16.0, 16.0, 16.0]}[layout]
    np.testing.assert_allclose(anchors[1], first, atol=1e-5)


# ---- box coder -----------------------------------------------------------------------------

REFS = np.array([[10.0, 20.0, 41.0, 35.0], [0.0, 0.0, 15.0, 15.0], [5.0, 5.0, 6.0, 9.0]], np.float32)
DELTAS = np.array([[0.1, -0.2, 0.3, -0.4], [0.0, 0.0, 9.0, -9.0], [0.5, 0.5, -6.0, 0.2]], np.float32)
STDS = (1.0, 1.0, 1.0, 1.0)
HEAD_STDS = (0.1, 0.1, 0.2, 0.2)


def _np_decode(ref, deltas, stds, plus_one, clamp_below):
    """Independent decode written from the conventions' definitions."""
    extra = 1.0 if plus_one else 0.0
    out = []
    for (x1, y1, x2, y2), d in zip(ref.astype(np.float64), deltas.astype(np.float64)):
        w, h = x2 - x1 + extra, y2 - y1 + extra
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        dw, dh = d[2] * stds[2], d[3] * stds[3]
        m = math.log(1000 / 16)
        dw, dh = min(dw, m), min(dh, m)
        if clamp_below:
            dw, dh = max(dw, -m), max(dh, -m)
        gx, gy = cx + d[0] * stds[0] * w, cy + d[1] * stds[1] * h
        gw, gh = w * math.exp(dw), h * math.exp(dh)
        out.append([gx - (gw - extra) / 2, gy - (gh - extra) / 2, gx + (gw - extra) / 2, gy + (gh - extra) / 2])
    return np.array(out)


@pytest.mark.parametrize("preset", PRESET_LIST)
@pytest.mark.parametrize("stds", [STDS, HEAD_STDS])
def test_decode_and_encode_known_deltas(preset, stds):
    n = get_numerics(preset)
    expected = _np_decode(REFS, DELTAS, stds, n.box_plus_one, n.clamp_log_ratio_below)
    got = decode_boxes(Tensor(REFS), Tensor(DELTAS), stds, plus_one=n.box_plus_one,
                       clamp_below=n.clamp_log_ratio_below).asnumpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np_decode_boxes(REFS, DELTAS, stds, plus_one=n.box_plus_one,
                                               clamp_below=n.clamp_log_ratio_below),
                               expected, rtol=1e-5, atol=1e-4)
    # Encode inverts decode (inside the clamp: the first row).
    targets = expected[:1].astype(np.float32)
    enc = encode_boxes(Tensor(REFS[:1]), Tensor(targets), stds, plus_one=n.box_plus_one).asnumpy()
    np.testing.assert_allclose(enc, DELTAS[:1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np_encode_boxes(REFS[:1], targets, stds, plus_one=n.box_plus_one),
                               DELTAS[:1], rtol=1e-4, atol=1e-5)
    # torchvision does not clamp from below: row 2's width shrinks by exp(-6), below the clamp.
    width = got[2, 2] - got[2, 0] + (1.0 if n.box_plus_one else 0.0)
    ref_width = 1.0 + (1.0 if n.box_plus_one else 0.0)
    floor = ref_width * math.exp(max(-6.0 * stds[2], -DEFAULT_MAX_LOG_RATIO))
    if n.clamp_log_ratio_below:
        assert width == pytest.approx(floor, rel=1e-4)
    else:
        assert width == pytest.approx(ref_width * math.exp(-6.0 * stds[2]), rel=1e-4)


def test_zoo_box_coder_matches_mindspore_ops():
    """The zoo calls BoundingBoxDecode/Encode; with clipping to the padded input they agree."""
    zoo = get_numerics("zoo")
    stds = HEAD_STDS
    op = ops.BoundingBoxDecode(max_shape=(40, 48), means=(0.0,) * 4, stds=stds)
    expected = op(Tensor(REFS), Tensor(DELTAS)).asnumpy()
    ours = decode_boxes(Tensor(REFS[None]), Tensor(DELTAS[None]), stds, plus_one=zoo.box_plus_one,
                        clamp_below=zoo.clamp_log_ratio_below)
    shape = Tensor(np.array([[20.0, 20.0, 1.0, 1.0]], np.float32))  # the image is smaller
    ours = clip_boxes(ours, shape, input_size=(40, 48)).asnumpy()[0]
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-4)
    gt = np.array([[12.0, 18.0, 40.0, 39.0], [1.0, 2.0, 14.0, 15.0], [4.0, 5.0, 7.0, 8.0]], np.float32)
    enc = ops.BoundingBoxEncode(means=(0.0,) * 4, stds=stds)(Tensor(REFS), Tensor(gt)).asnumpy()
    np.testing.assert_allclose(encode_boxes(Tensor(REFS), Tensor(gt), stds, plus_one=True).asnumpy(),
                               enc, rtol=1e-5, atol=1e-5)


# ---- RoIAlign ------------------------------------------------------------------------------

def _np_bilinear(feature, y, x):
    """RoIAlign's bilinear read of ``feature [C, H, W]`` (0 beyond one cell outside, clamped)."""
    _, height, width = feature.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(feature.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    y1, x1 = y0 + 1, x0 + 1
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * feature[:, y0, x0] + (1 - ly) * lx * feature[:, y0, x1]
            + ly * (1 - lx) * feature[:, y1, x0] + ly * lx * feature[:, y1, x1])


def _np_roi_align(feature, box, stride, out, sampling, alignment):
    """One RoI: sample points ``start + (i + (s + 0.5) / sampling) * bin`` per output cell."""
    shift = 0.5 if alignment == "aligned" else 0.0
    x1, y1, x2, y2 = (c / stride - shift for c in box)
    roi_w, roi_h = x2 - x1, y2 - y1
    if alignment == "legacy":
        roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    result = np.zeros((feature.shape[0], out, out))
    for i in range(out):
        for j in range(out):
            for a in range(sampling):
                for b in range(sampling):
                    y = y1 + (i + (a + 0.5) / sampling) * roi_h / out
                    x = x1 + (j + (b + 0.5) / sampling) * roi_w / out
                    result[:, i, j] += _np_bilinear(feature, y, x)
    return result / sampling ** 2


RNG = np.random.default_rng(7)
P2 = RNG.standard_normal((1, 2, 32, 32)).astype(np.float32)
P3 = RNG.standard_normal((1, 2, 16, 16)).astype(np.float32)
# In input pixels (strides 4 and 8): small boxes (P2), a large one (P3 under every rule), a
# sub-cell box (legacy: widened to one cell) and one on the P2/P3 threshold of the +1 rule.
ROI_BOXES = np.array([[3.3, 5.1, 30.7, 27.9], [10.0, 10.0, 11.0, 10.5], [0.0, 0.0, 39.0, 47.0],
                      [6.2, 8.9, 7.0, 9.1], [2.0, 3.0, 114.0, 115.0], [1.0, 2.0, 112.0, 113.0]],
                     np.float32)


@pytest.mark.parametrize("preset", PRESET_LIST)
def test_roi_align_sample_points_and_levels(preset):
    n = get_numerics(preset)
    pool = MultiLevelRoIAlign(3, 2, strides=(4, 8), alignment=n.roi_align, level_rule=n.roi_level,
                              kernels=CPU_KERNELS)
    got = pool((Tensor(P2), Tensor(P3)), Tensor(ROI_BOXES[None])).asnumpy()
    levels = [_np_level(b[2] - b[0], b[3] - b[1], n.roi_level) for b in ROI_BOXES.astype(np.float64)]
    for r, (box, level) in enumerate(zip(ROI_BOXES, levels)):
        feature, stride = (P2[0], 4) if level == 2 else (P3[0], 8)
        expected = _np_roi_align(feature, box.astype(np.float64), stride, 3, 2, n.roi_align)
        np.testing.assert_allclose(got[r], expected, rtol=1e-5, atol=1e-5, err_msg=f"RoI {r}, level {level}")
    # 112 x 112 px is on P3 under every rule, 111 x 111 px only under the zoo's +1 rule.
    assert levels[4] == 3
    assert levels[5] == (3 if n.roi_level == "sqrt_area_plus_one" else 2)


def test_legacy_roi_align_matches_mindspore_roi_end_mode_0():
    """The zoo's RoIAlign is ops.ROIAlign(roi_end_mode=0); legacy alignment reproduces it."""
    pool = MultiLevelRoIAlign(3, 2, strides=(4,), alignment="legacy", level_rule="sqrt_area_plus_one",
                              kernels=CPU_KERNELS)
    boxes = ROI_BOXES[:4]
    got = pool((Tensor(P2),), Tensor(boxes[None])).asnumpy()
    rois = np.concatenate((np.zeros((len(boxes), 1), np.float32), boxes), axis=1)
    expected = ops.ROIAlign(3, 3, 0.25, 2, 0)(Tensor(P2), Tensor(rois)).asnumpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# ---- proposals: per-level NMS, clipping, size filter ---------------------------------------

def _proposal_generator(n, min_size=0.0, input_size=(64, 64)):
    return ProposalGenerator([4, 4], pre_nms_top_k=4, post_nms_top_k=6, nms_thr=0.5,
                             min_size=min_size, stds=STDS, box_plus_one=n.box_plus_one,
                             clamp_below=n.clamp_log_ratio_below,
                             clip_to_input=input_size if n.clip_to == "input" else None,
                             filter_small=n.filter_small_proposals)


@pytest.mark.parametrize("preset", PRESET_LIST)
def test_proposals_nms_per_level(preset):
    n = get_numerics(preset)
    # Level 0: two heavily overlapping boxes (one suppressed) and one apart; level 1 repeats the
    # first box exactly (kept: NMS never compares across levels) and has one box beyond the image.
    anchors = np.array([[4, 4, 20, 20], [5, 5, 21, 21], [30, 30, 40, 40], [0, 0, 2, 2],
                        [4, 4, 20, 20], [10, 30, 26, 46], [50, 50, 70, 70], [0, 0, 2, 2]], np.float32)
    logits = np.array([[3.0, 2.0, 1.0, -9.0, 2.5, 1.5, 0.5, -9.0]], np.float32)
    deltas = np.zeros((1, 8, 4), np.float32)
    image_shape = Tensor(np.array([[48.0, 56.0, 1.0, 1.0]], np.float32))  # padded input 64 x 64
    boxes, valid = _proposal_generator(n)(Tensor(logits), Tensor(deltas), Tensor(anchors), image_shape)
    boxes, valid = boxes.asnumpy()[0], valid.asnumpy()[0]
    kept = boxes[valid]
    # Independent expectation: sort by score over levels after per-level NMS, clipped.
    limit_w, limit_h = (64.0, 64.0) if n.clip_to == "input" else (56.0, 48.0)
    expected_order = [0, 4, 5, 2, 6, 3, 7]  # scores 3, 2.5, 1.5, 1, 0.5, -9, -9 (1 suppressed)
    expected = np.clip(anchors[expected_order], 0, None)
    expected[:, [0, 2]] = np.minimum(expected[:, [0, 2]], limit_w)
    expected[:, [1, 3]] = np.minimum(expected[:, [1, 3]], limit_h)
    widths = expected[:, 2] - expected[:, 0]
    heights = expected[:, 3] - expected[:, 1]
    if n.filter_small_proposals:
        # A box clipped to zero width is dropped; the zoo keeps every box.
        keep = (widths > 0) & (heights > 0)
        expected = expected[keep]
    np.testing.assert_allclose(kept, expected[:6], atol=1e-5)
    # Box 0 and its exact copy on level 1 both survive.
    assert np.sum(np.all(np.isclose(kept, [4, 4, 20, 20]), axis=1)) == 2


@pytest.mark.parametrize("preset", PRESET_LIST)
def test_proposals_min_size(preset):
    """torchvision's recipe drops proposals with a side below 1e-3 px; the zoo keeps all."""
    n = get_numerics(preset)
    anchors = np.array([[4, 4, 20, 20], [8, 8, 8.0005, 30], [0, 0, 2, 2], [0, 0, 2, 2],
                        [30, 30, 40, 40], [0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 2, 2]], np.float32)
    logits = np.array([[3.0, 2.0, -9.0, -9.0, 1.0, -9.0, -9.0, -9.0]], np.float32)
    image_shape = Tensor(np.array([[64.0, 64.0, 1.0, 1.0]], np.float32))
    boxes, valid = _proposal_generator(n, min_size=1e-3)(
        Tensor(logits), Tensor(np.zeros((1, 8, 4), np.float32)), Tensor(anchors), image_shape)
    thin_kept = np.any(np.all(np.isclose(boxes.asnumpy()[0][valid.asnumpy()[0]], anchors[1]), axis=1))
    assert thin_kept == (not n.filter_small_proposals)


def test_torchvision_anchor_spacing_follows_the_input_size():
    """torchvision spaces cells input_size // feature_size apart (53 px for P6 of 160 px)."""
    shapes = [(2, 3)]  # P6 of a 128 x 160 input
    got = generate_anchors(shapes, (64,), (8.0,), (1.0,), layout="torchvision", input_size=(128, 160))
    xs = np.arange(3) * (160 // 3)
    ys = np.arange(2) * (128 // 2)
    expected = [[x - 256, y - 256, x + 256, y + 256] for y in ys for x in xs]
    np.testing.assert_allclose(got, expected)
    # The other layouts keep the stride (the input size is not theirs to use).
    centred = generate_anchors(shapes, (64,), (8.0,), (1.0,), layout="centred", input_size=(128, 160))
    np.testing.assert_allclose(centred[1] - centred[0], [64, 0, 64, 0])


# ---- wiring: the model hands each stage its part of the preset -----------------------------

@pytest.mark.parametrize("preset", PRESET_LIST)
def test_model_passes_the_preset_to_every_stage(preset):
    from src.config import FPN_STRIDES
    from src.maskrcnn.builder import build_model

    cfg = load_config(overrides={"numerics": preset, "img_height": 64, "img_width": 96})
    n = get_numerics(preset)
    net = build_model(cfg)
    assert net.fpn.upsample == n.fpn_upsample
    assert net.backbone.stem_pool == n.stem_pool
    for align in (net.box_roi_align, net.mask_roi_align):
        assert (align.alignment, align.level_rule) == (n.roi_align, n.roi_level)
    clip = (64.0, 96.0) if n.clip_to == "input" else None
    for gen in (net.proposals_train, net.proposals_test):
        assert (gen.box_plus_one, gen.clamp_below, gen.clip_to_input, gen.filter_small) == \
            (n.box_plus_one, n.clamp_log_ratio_below, clip, n.filter_small_proposals)
    assert net.rpn_targets.box_plus_one == net.rcnn_targets.box_plus_one == n.box_plus_one
    post = net.box_postprocess
    assert (post.box_plus_one, post.clamp_below, post.clip_to_input, post.min_detection_size) == \
        (n.box_plus_one, n.clamp_log_ratio_below, clip, n.min_detection_size)
    assert post.num_candidates == (candidate_bound(cfg.rpn_post_nms_top_k_test, cfg.num_classes, cfg.test_score_thr)
                                   if n.candidate_cap == "exact" else
                                   min(TEST_PRE_NMS_CANDIDATES, cfg.rpn_post_nms_top_k_test * (cfg.num_classes - 1)))
    assert net.mask_box == n.mask_box and post.return_sources == (n.mask_box == "argmax_class")
    assert {cell.eps for _, cell in net.cells_and_names() if isinstance(cell, nn.BatchNorm2d)} == \
        {n.bn_eps if n.bn_eps > 0 else ZERO_EPS_STAND_IN}
    expected = generate_anchors(cfg.feature_shapes, FPN_STRIDES, cfg.anchor_scales, cfg.anchor_ratios,
                                layout=n.anchor_layout, input_size=(64, 96))
    np.testing.assert_array_equal(net.anchors.asnumpy(), expected)


# ---- BatchNorm epsilon ---------------------------------------------------------------------

def test_bn_eps_zero_normalises_without_epsilon_and_config_overrides_it():
    """eps 0 (torchvision's COCO loader) divides by sqrt(var) exactly, even for var = 1e-5, where
    eps 1e-5 would scale by 1/sqrt(2); ``bn_eps`` in the config overrides the preset."""
    from src.maskrcnn.numerics import backbone_bn_eps
    from src.maskrcnn.resnet50 import _norm, norm_eps

    assert backbone_bn_eps(load_config("FineTune/torchvision.yaml")) == 0.0
    assert backbone_bn_eps(load_config("FineTune/torchvision.yaml", {"bn_eps": 1e-5})) == 1e-5
    assert backbone_bn_eps(load_config()) == 1e-5
    var = np.array([1e-5, 0.3], np.float32)
    x = np.random.default_rng(0).normal(size=(1, 2, 3, 3)).astype(np.float32)
    for eps in (0.0, 1e-5):
        for mode in ("frozen", "batch"):
            bn = _norm(2, mode, eps=eps)
            bn.moving_variance.set_data(Tensor(var))
            bn.set_train(False)
            assert norm_eps(bn) == eps
            expected = x / np.sqrt(var.astype(np.float64) + eps).reshape(1, 2, 1, 1)
            np.testing.assert_allclose(bn(Tensor(x)).asnumpy(), expected, rtol=1e-5)
    with pytest.raises(ConfigError, match="'bn_eps' = -0.1 must be null or in"):
        load_config(overrides={"bn_eps": -0.1})


# ---- the final NMS sees every candidate ----------------------------------------------------

def _np_torchvision_postprocess(boxes, scores, score_thr, nms_thr, max_per_image):
    """torchvision's RoIHeads.postprocess_detections on decoded boxes [P, C-1, 4] and scores
    [P, C-1]: every (proposal, class) above the threshold, NMS per class, the best K kept."""
    keep = []
    for c in range(scores.shape[1]):
        idx = np.where(scores[:, c] > score_thr)[0]
        idx = idx[np.argsort(-scores[idx, c], kind="stable")]
        kept = []
        for i in idx:
            b = boxes[i, c]
            ok = True
            for j in kept:
                o = boxes[j, c]
                inter = max(0, min(b[2], o[2]) - max(b[0], o[0])) * max(0, min(b[3], o[3]) - max(b[1], o[1]))
                union = (b[2] - b[0]) * (b[3] - b[1]) + (o[2] - o[0]) * (o[3] - o[1]) - inter
                if inter / union > nms_thr:
                    ok = False
                    break
            if ok:
                kept.append(i)
        keep += [(scores[i, c], c + 1, i) for i in kept]
    keep.sort(key=lambda t: -t[0])
    return keep[:max_per_image]


def test_candidate_bound_holds_every_candidate():
    # At most floor(1 / 0.05) = 20 softmax scores can exceed 0.05.
    assert candidate_bound(1000, 91, 0.05) == 20000
    assert candidate_bound(1000, 5, 0.05) == 4000 and candidate_bound(10, 5, 0.0) == 40
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 0.01, (20000, 91))  # nearly uniform: as many above 1/91 as can be
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for thr in (0.05, 0.011, 0.3):
        counts = (probs[:, 1:] > thr).sum(1)
        assert counts.max() <= candidate_bound(1, 91, thr)


def test_exact_cap_keeps_detections_a_fixed_cap_loses():
    """1200 overlapping candidates of 4 classes outscore 20 separate boxes: a 1000-candidate cap
    leaves 4 detections (one per class after NMS), torchvision keeps all 24; so does 'exact'."""
    num_classes, fg = 5, 4
    cluster = np.tile([[10.0, 10.0, 60.0, 60.0]], (300, 1)) + np.linspace(0, 1, 300)[:, None]
    separate = np.array([[100.0 + 30 * (i % 10), 100.0 + 60 * (i // 10), 120.0 + 30 * (i % 10),
                          140.0 + 60 * (i // 10)] for i in range(5)])
    proposals = np.concatenate([cluster, separate]).astype(np.float32)  # P = 305
    num = len(proposals)
    logits = np.full((num, num_classes), 0.0, np.float32)
    logits[:300, 1:] = 3.0 + np.linspace(0, 0.5, 300)[:, None] + np.arange(fg) * 0.01  # >= 0.247 each
    # ~0.2 each, below every cluster candidate; no two scores tied
    logits[300:] = 2.0 + np.arange(num_classes) * 0.01
    logits[300:, 1:] += np.arange(5)[:, None] * 0.003
    deltas = np.zeros((num, num_classes, 4), np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = _np_torchvision_postprocess(np.repeat(proposals[:, None], fg, 1), probs[:, 1:], 0.05, 0.5, 50)
    assert len(expected) == 4 + 5 * fg
    image_shape = Tensor(np.array([[512.0, 512.0, 1.0, 1.0]], np.float32))
    for cap, count in (("fixed", 4), ("exact", len(expected))):
        post = BoxPostProcessor(num_classes, num, (0.1, 0.1, 0.2, 0.2), 0.05, 0.5, 50, 512, clamp_below=False,
                                candidate_cap=cap)
        boxes, scores, labels, valid = (o.asnumpy()[0] for o in post(
            Tensor(proposals[None]), Tensor(np.ones((1, num), bool)), Tensor(logits), Tensor(deltas), image_shape))
        assert int(valid.sum()) == count, cap
    np.testing.assert_allclose(scores[valid], [t[0] for t in expected], rtol=1e-5)
    np.testing.assert_array_equal(labels[valid], [t[1] for t in expected])
    np.testing.assert_allclose(boxes[valid], proposals[[t[2] for t in expected]], atol=1e-3)


# ---- the zoo's mask box --------------------------------------------------------------------

def test_zoo_pools_each_mask_on_its_proposals_argmax_class_box():
    """Under 'zoo' a detection's mask is pooled on its proposal decoded with that proposal's
    arg-max class over all classes (background included), clipped to the input; under the
    others on the detection's own box (``_mask_rois``: the boxes ``_detect`` hands the mask
    RoIAlign)."""
    from src.maskrcnn.builder import build_model

    rng = np.random.default_rng(3)
    num_props, num_classes = 12, 4
    proposals = np.sort(rng.uniform(0, 60, (num_props, 2, 2)), axis=1).reshape(num_props, 4)  # x1 y1 x2 y2
    logits = rng.normal(0, 2.0, (num_props, num_classes)).astype(np.float32)
    logits[:4, 0] += 5.0  # some proposals whose arg-max class is the background
    deltas = rng.normal(0, 1.0, (num_props, num_classes, 4)).astype(np.float32)
    image_shape = np.array([[64.0, 96.0, 1.0, 1.0]], np.float32)
    for preset in ("zoo", "native"):
        cfg = load_config(overrides={"numerics": preset, "img_height": 64, "img_width": 96,
                                     "coco_classes": ["background", "a", "b", "c"], "test_score_thr": 0.01,
                                     "rpn_post_nms_top_k_test": num_props})
        net = build_model(cfg)
        n = get_numerics(preset)
        detections = net.box_postprocess(Tensor(proposals[None].astype(np.float32)), Tensor(np.ones((1, num_props), bool)),
                                          Tensor(logits), Tensor(deltas), Tensor(image_shape))
        rois = net._mask_rois(detections, Tensor(proposals[None].astype(np.float32)), Tensor(logits),
                              Tensor(deltas), Tensor(image_shape)).asnumpy()[0]
        boxes, _, labels, valid = (d.asnumpy()[0] for d in detections[:4])
        assert valid.sum() >= 8
        if preset == "native":
            np.testing.assert_array_equal(rois, boxes)
            continue
        sources = detections[4].asnumpy()[0]
        stds = (0.1, 0.1, 0.2, 0.2)
        for k in np.where(valid)[0]:
            p = sources[k]
            own = _np_decode(proposals[p][None], deltas[p, labels[k]][None], stds, True, True)[0]
            np.testing.assert_allclose(boxes[k], np.clip(own, 0, [96, 64, 96, 64]), atol=1e-3)  # the right proposal
            argmax_box = _np_decode(proposals[p][None], deltas[p, np.argmax(logits[p])][None], stds, n.box_plus_one,
                                    True)[0]
            np.testing.assert_allclose(rois[k], np.clip(argmax_box, 0, [96, 64, 96, 64]), atol=1e-3)
        assert (np.argmax(logits[sources[valid]], 1) != labels[valid]).any()  # the boxes differ somewhere


# ---- mask paste ----------------------------------------------------------------------------

def test_mask_paste_conventions_on_a_box_of_ones():
    """A 10x10 box of ones: 100 pixels natively, 121 under torchvision (the box grown by 30/28
    and truncated to [0, 10], x2 - x1 + 1 = 11 pixels per side), 121 under the zoo (11 x 11 at
    the truncated corner); every pasted pixel is where the convention says."""
    from src.evaluation.results import paste_masks

    ones = np.ones((1, 28, 28), np.float32)
    box = np.array([[0.0, 0.0, 10.0, 10.0]], np.float32)
    pasted = {c: paste_masks(ones, box, 40, 50, 0.5, convention=c)[0] for c in ("native", "torchvision", "zoo")}
    assert pasted["native"].sum() == 100 and pasted["native"][:10, :10].all()
    assert pasted["torchvision"].sum() == 121 and pasted["torchvision"][:11, :11].all()
    assert pasted["zoo"].sum() == 121 and pasted["zoo"][:11, :11].all()
    # A box away from the origin: torchvision's centre 17.5, half-width 5 * 30 / 28 -> [12, 22].
    shifted = paste_masks(ones, box + 12.5, 40, 50, 0.5, convention="torchvision")[0]
    cols = np.where(shifted.any(0))[0]
    assert (cols.min(), cols.max()) == (int(17.5 - 5 * 30 / 28), int(17.5 + 5 * 30 / 28))


def test_zoo_paste_is_opencv_resize_of_the_truncated_box():
    """The zoo's paste: int(box), w = x2 - x1 + 1 cut at the image, cv2.resize (INTER_LINEAR) of
    the 28x28 mask, foreground above the threshold."""
    import cv2

    from src.evaluation.results import paste_masks

    rng = np.random.default_rng(5)
    masks = rng.uniform(0, 1, (3, 28, 28)).astype(np.float32)
    boxes = np.array([[2.7, 3.2, 30.9, 17.99], [40.2, 20.0, 63.5, 39.9], [0.0, 0.0, 5.0, 70.0]], np.float32)
    height, width = 40, 60
    pasted = paste_masks(masks, boxes, height, width, 0.5, convention="zoo")
    for k in range(3):
        x1, y1, x2, y2 = boxes[k].astype(np.int32)
        w = max(min(max(x2 - x1 + 1, 1), width - x1), 1)
        h = max(min(max(y2 - y1 + 1, 1), height - y1), 1)
        expected = np.zeros((height, width), np.uint8)
        expected[y1:y1 + h, x1:x1 + w] = cv2.resize(masks[k], (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
        assert (pasted[k] != expected).sum() <= 2  # OpenCV's fixed-point weights at exact ties


def test_coco_box_width_follows_the_preset():
    from src.evaluation.results import predictions_to_coco

    masks = np.ones((1, 28, 28), np.float32)
    shape = [40.0, 50.0, 1.0, 1.0]
    args = (np.array([[1.0, 2.0, 11.0, 7.0]]), np.array([0.9]), np.array([1]), np.array([True]), masks, shape, 40, 50,
            {1: 7}, 0.5)
    assert predictions_to_coco(3, *args)[0]["bbox"] == [1.0, 2.0, 10.0, 5.0]
    assert predictions_to_coco(3, *args, numerics="zoo")[0]["bbox"] == [1.0, 2.0, 11.0, 6.0]


# ---- MindSpore's ROIAlign skips RoIs at x = 0 ----------------------------------------------

class _RecordingPool(nn.Cell):
    """Stands in for the pooling op: records the canvas RoIs it is handed (PyNative)."""

    def __init__(self, pool):
        super().__init__()
        self.pool = pool
        self.rois = []

    def construct(self, canvas, rois):
        self.rois.append(rois.asnumpy())
        return self.pool(canvas, rois)


@pytest.mark.parametrize("alignment", ["aligned", "legacy"])
def test_no_roi_near_x_zero_reaches_the_native_roi_align(alignment):
    """MindSpore's ROIAlign kernel (CPU and GPU source) skips a RoI with |x1| < 0.001 and
    |x2| < 0.001 and leaves its output unwritten. The multi-level RoIAlign maps RoIs into a canvas
    where every level's cell 0 starts at column >= 1, so x1 >= 0.5 (aligned) or >= 1 (legacy)
    whatever the box: padding rows of zeros, boxes at x = 0 of zero or tiny width, negative ones,
    on every level (a 400x250 box goes to P5, the coarsest block, at the canvas's left edge)."""
    from src.maskrcnn.target import NATIVE_KERNELS

    rng = np.random.default_rng(2)
    features = tuple(Tensor(rng.normal(size=(1, 2, 64 // s, 96 // s)).astype(np.float32)) for s in (4, 8, 16, 32))
    rois = np.array([[0, 0, 0, 0], [0, 0, 0.0005, 30], [-5, -5, 0, 0], [0, 10, 0.0009, 500],
                     [0, 0, 400, 250], [0, 0, 1e-4, 1e-4], [0.0004, 3, 0.0008, 9]], np.float32)
    for level_rule in ("sqrt_area", "sqrt_area_plus_one", "torchvision"):
        align = MultiLevelRoIAlign(7, 2, alignment=alignment, level_rule=level_rule, kernels=NATIVE_KERNELS)
        align.pool = _RecordingPool(align.pool)
        out = align(features, Tensor(rois[None])).asnumpy()
        canvas_rois = align.pool.rois[-1]
        x1, x2 = canvas_rois[:, 1], canvas_rois[:, 3] + 1.0  # roi_end_mode=1 is handed end - 1
        skipped = (np.abs(canvas_rois[:, 1]) < 1e-3) & (np.abs(canvas_rois[:, 3]) < 1e-3)
        assert not skipped.any() and x1.min() >= 0.5 and (x2 >= x1).all()
        assert np.isfinite(out).all()


# ---- each recipe's evaluation protocol -----------------------------------------------------

@pytest.mark.parametrize("recipe", ["torchvision", "zoo"])
def test_recipe_evaluation_protocol_canvas_and_resize_rule(recipe):
    """torchvision: shorter side 800, longer at most 1333 (scale min(800 / short, 1333 / long)),
    in a 1344x1344 input that holds either orientation, counts 1000 / 1000 / 100. Zoo: fit into
    its 768x1280 input (scale min(768 / h, 1280 / w)), counts 1000 / 1000 / 128."""
    from src.transforms import preprocess_eval

    cfg = load_config(f"FineTune/{recipe}.yaml")
    counts = (cfg.rpn_pre_nms_top_k_test, cfg.rpn_post_nms_top_k_test, cfg.test_max_per_img)
    if recipe == "torchvision":
        assert (cfg.img_height, cfg.img_width, counts) == (1344, 1344, (1000, 1000, 100))
    else:
        assert (cfg.img_height, cfg.img_width, counts) == (768, 1280, (1000, 1000, 128))
    assert cfg.test_score_thr == 0.05 and cfg.test_nms_thr == 0.5 and cfg.rpn_nms_thr == 0.7
    np.testing.assert_allclose(cfg.img_mean, np.array([0.485, 0.456, 0.406]) * 255)
    np.testing.assert_allclose(cfg.img_std, np.array([0.229, 0.224, 0.225]) * 255)
    for height, width in ((480, 640), (640, 480), (300, 1200), (1200, 300), (500, 500)):
        if recipe == "torchvision":
            scale = min(800 / min(height, width), 1333 / max(height, width))
        else:
            scale = min(768 / height, 1280 / width)
        image, shape = preprocess_eval(np.zeros((height, width, 3), np.uint8), cfg.img_height, cfg.img_width,
                                       cfg.img_mean, cfg.img_std, cfg.keep_ratio, cfg.resize_to)
        assert image.shape == (3, cfg.img_height, cfg.img_width)
        np.testing.assert_allclose(shape[2:], [scale, scale], rtol=2e-3)  # after rounding to whole pixels
        assert tuple(shape[:2]) == (round(height * scale), round(width * scale))


def test_resize_to_needs_an_input_that_holds_both_orientations():
    with pytest.raises(ConfigError, match=r"'resize_to' = \[800, 1333\] does not fit the input 1344x1280 in both "
                                          r"orientations \(img_height and img_width must be >= 1333\)"):
        load_config("FineTune/torchvision.yaml", {"img_width": 1280})
    with pytest.raises(ConfigError, match=r"'resize_to' = \[1333, 800\] must be \[\] or \[short, long\]"):
        load_config("FineTune/torchvision.yaml", {"resize_to": [1333, 800]})
    with pytest.raises(ConfigError, match="'resize_to' = \\[800, 1333\\] needs keep_ratio: true"):
        load_config("FineTune/torchvision.yaml", {"keep_ratio": False})
