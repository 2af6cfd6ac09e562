"""Tests of src/viz/visualize.py: splash, cut-out, class map and overlay on tiny exact inputs."""

import numpy as np
import pytest

from src.viz.visualize import (PALETTE_SIZE, class_map, colour_class_map, colour_splash, cut_out, overlay, palette,
                           to_grey)

H, W = 12, 16


@pytest.fixture()
def image():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    img[0, 0] = (255, 0, 0)  # a saturated pixel whose grey value is known
    return img


@pytest.fixture()
def masks():
    m = np.zeros((2, H, W), np.uint8)
    m[0, 2:6, 3:9] = 1
    m[1, 4:10, 7:14] = 1  # overlaps the first one at rows 4..5, columns 7..8
    return m


def test_colour_splash_keeps_colour_under_masks_and_grey_elsewhere(image, masks):
    out = colour_splash(image, masks)
    union = masks.any(axis=0)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[union], image[union])
    outside = out[~union]
    np.testing.assert_array_equal(outside[:, 0], outside[:, 1])
    np.testing.assert_array_equal(outside[:, 1], outside[:, 2])
    # BT.601 luma of pure red is 0.299 * 255 = 76.2 -> 76.
    np.testing.assert_array_equal(out[0, 0], [76, 76, 76])
    # The image itself is not modified.
    assert not np.array_equal(image[~union][:, 0], image[~union][:, 1])


def test_colour_splash_without_detections_is_all_grey(image):
    out = colour_splash(image, np.zeros((0, H, W), np.uint8))
    np.testing.assert_array_equal(out, to_grey(image))


def test_cut_out_alpha_equals_mask_union(image, masks):
    out = cut_out(image, masks)
    assert out.shape == (H, W, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :, 3], masks.any(axis=0).astype(np.uint8) * 255)
    np.testing.assert_array_equal(out[:, :, :3], image)


def test_class_map_labels_under_masks_and_highest_score_wins(masks):
    labels = np.array([2, 5])
    out = class_map(masks, labels, scores=np.array([0.9, 0.3]))
    expected = np.zeros((H, W), np.uint8)
    expected[masks[1] == 1] = 5
    expected[masks[0] == 1] = 2  # the higher score wins the overlap
    np.testing.assert_array_equal(out, expected)
    swapped = class_map(masks, labels, scores=np.array([0.3, 0.9]))
    assert swapped[4, 7] == 5 and swapped[2, 3] == 2 and swapped[9, 13] == 5 and swapped[0, 0] == 0


def test_class_map_empty_and_bad_labels():
    out = class_map(np.zeros((0, 3, 4), np.uint8), np.zeros(0, np.int32))
    np.testing.assert_array_equal(out, np.zeros((3, 4), np.uint8))
    with pytest.raises(ValueError, match="2 masks but 1 labels"):
        class_map(np.zeros((2, 3, 4), np.uint8), [1])
    with pytest.raises(ValueError, match="labels must be in 0..255"):
        class_map(np.ones((1, 3, 4), np.uint8), [300])


def test_colour_class_map_uses_palette_and_black_background():
    label_map = np.array([[0, 1], [3, 1]], np.uint8)
    out = colour_class_map(label_map, num_classes=4)
    colours = palette(4)
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(out[0, 1], colours[1])
    np.testing.assert_array_equal(out[1, 0], colours[3])


def test_palette_is_deterministic_and_distinct():
    colours = palette()
    assert colours.shape == (PALETTE_SIZE, 3)
    np.testing.assert_array_equal(colours, palette())
    assert len({tuple(c) for c in colours}) == PALETTE_SIZE


def test_overlay_blends_mask_colour_and_draws_box():
    image = np.full((80, 100, 3), 100, np.uint8)
    m = np.zeros((1, 80, 100), np.uint8)
    m[0, 42:52, 32:42] = 1
    box = np.array([[30.0, 40.0, 44.0, 54.0]])
    out = overlay(image, m, box, [1], [0.87], ["background", "book"])
    colour = palette()[0].astype(np.float32)
    expected_inside = np.rint(100 * 0.5 + colour * 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out[47, 37], expected_inside)  # blended, away from box lines
    np.testing.assert_array_equal(out[53, 37], palette()[0])  # bottom box edge in the instance colour
    np.testing.assert_array_equal(out[70, 90], [100, 100, 100])  # far from everything: untouched
    np.testing.assert_array_equal(out[45, 10], [100, 100, 100])
    # The caption sits above the box: look only at rows above the box line (the 2-px line
    # drawn at y1 = 40 reaches row 39), where nothing but the caption can be drawn.
    above = out[:39]
    assert (above == palette()[0]).all(axis=2).any()  # the caption's filled background
    assert (above > 200).all(axis=2).sum() >= 20  # white text strokes on it
    other = overlay(image, m, box, [1], [0.12], ["background", "cat"])
    assert (other[:39] != above).any()  # the text spells the class name and score
    np.testing.assert_array_equal(other[42:], out[42:])  # ...and stays off the box's interior
    np.testing.assert_array_equal(image, np.full((80, 100, 3), 100, np.uint8))  # input untouched


def test_overlay_and_splash_reject_bad_shapes(image, masks):
    with pytest.raises(ValueError, match=r"masks must be \[K, 12, 16\]"):
        colour_splash(image, masks[:, :5])
    with pytest.raises(ValueError, match="image must be"):
        cut_out(image.astype(np.float32), masks)
    with pytest.raises(ValueError, match="counts differ: 2 masks, 1 boxes"):
        overlay(image, masks, np.zeros((1, 4)), [1, 1], [0.5, 0.5], ["background", "a"])
