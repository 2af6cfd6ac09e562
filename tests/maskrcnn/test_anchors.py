"""Exact-value tests of src/maskrcnn/anchors.py."""

import numpy as np
import pytest

from src.config import FPN_STRIDES, Config
from src.maskrcnn.anchors import anchors_per_level, generate_anchors

# Toy config: two levels (strides 4 and 8), scale 2 (sizes 8 and 16), ratios h/w = 0.25 and 1.
TOY_SHAPES = [(2, 2), (1, 1)]
TOY_STRIDES = (4, 8)
TOY_SCALES = (2.0,)
TOY_RATIOS = (0.25, 1.0)
# Written out by hand. Level 0 (size 8): ratio 0.25 -> w 16, h 4; ratio 1 -> 8 x 8.
# Centres ((x + .5) * 4, (y + .5) * 4) in row-major order: (2,2), (6,2), (2,6), (6,6).
# Level 1 (size 16): ratio 0.25 -> w 32, h 8; ratio 1 -> 16 x 16; centre (4, 4).
TOY_EXPECTED = [
    [-6, 0, 10, 4], [-2, -2, 6, 6],    # y=0, x=0
    [-2, 0, 14, 4], [2, -2, 10, 6],    # y=0, x=1
    [-6, 4, 10, 8], [-2, 2, 6, 10],    # y=1, x=0
    [-2, 4, 14, 8], [2, 2, 10, 10],    # y=1, x=1
    [-12, 0, 20, 8], [-4, -4, 12, 12],  # level 1
]


def test_toy_anchors_exact():
    anchors = generate_anchors(TOY_SHAPES, TOY_STRIDES, TOY_SCALES, TOY_RATIOS)
    assert anchors.dtype == np.float32
    np.testing.assert_array_equal(anchors, np.asarray(TOY_EXPECTED, np.float32))
    assert anchors_per_level(TOY_SHAPES, TOY_STRIDES, TOY_SCALES, TOY_RATIOS) == [8, 2]


def test_published_sizes_over_p2_p6():
    cfg = Config()
    anchors = generate_anchors(cfg.feature_shapes, FPN_STRIDES, cfg.anchor_scales, cfg.anchor_ratios)
    counts = anchors_per_level(cfg.feature_shapes, FPN_STRIDES, cfg.anchor_scales, cfg.anchor_ratios)
    assert len(anchors) == sum(counts) == cfg.num_anchors
    start = 0
    for count, stride, expected_size in zip(counts, FPN_STRIDES, (32, 64, 128, 256, 512)):
        level = anchors[start:start + count].astype(np.float64)
        start += count
        w = level[:, 2] - level[:, 0]
        h = level[:, 3] - level[:, 1]
        np.testing.assert_allclose(np.sqrt(w * h), expected_size, rtol=1e-5)
        np.testing.assert_allclose(h[:3] / w[:3], [0.5, 1.0, 2.0], rtol=1e-5)
        # first location's centre is half a stride from the corner
        np.testing.assert_allclose(0.5 * (level[0, :2] + level[0, 2:]), [stride / 2, stride / 2], rtol=1e-6)


def test_mismatched_levels_message():
    with pytest.raises(ValueError, match=r"2 feature shapes but 1 strides"):
        generate_anchors(TOY_SHAPES, (4,), TOY_SCALES, TOY_RATIOS)
    with pytest.raises(ValueError, match=r"scales and ratios must be positive"):
        generate_anchors(TOY_SHAPES, TOY_STRIDES, TOY_SCALES, (0.0,))
