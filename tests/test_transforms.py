"""src/transforms.py: exact values on tiny inputs; boxes and masks stay on the object (and map back
to the original image with src/evaluation/results.py)."""

import numpy as np
import pytest

from src import transforms
from src.batch import CROWD_LABEL
from src.evaluation.results import boxes_to_original_image

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]
RED = (250, 10, 10)
BLUE = (10, 10, 250)


def _denormalize(image_chw):
    return image_chw.transpose(1, 2, 0) * np.array(STD, np.float32) + np.array(MEAN, np.float32)


def _scene():
    """A 40x60 grey image with a red rectangle (rows 5..14, cols 8..27) and a blue one
    (rows 20..34, cols 40..54); annos in original pixels; plus a crowd region (rows 30..39,
    cols 0..9)."""
    img = np.full((40, 60, 3), 128, np.uint8)
    img[5:15, 8:28] = RED
    img[20:35, 40:55] = BLUE
    masks = np.zeros((3, 40, 60), np.uint8)
    masks[0, 5:15, 8:28] = 1
    masks[1, 20:35, 40:55] = 1
    masks[2, 30:40, 0:10] = 1
    annos = np.array([[8, 5, 28, 15, 1, 0], [40, 20, 55, 35, 2, 0], [0, 30, 10, 40, 1, 1]], np.float32)
    return img, annos, masks


def test_rescale_keep_ratio_exact_sizes():
    img = np.zeros((100, 200, 3), np.uint8)
    out, sh, sw = transforms.rescale_keep_ratio(img, 320, 320)
    assert out.shape == (160, 320, 3) and sh == pytest.approx(1.6) and sw == pytest.approx(1.6)
    tall = np.zeros((480, 240, 3), np.uint8)
    out, sh, sw = transforms.rescale_keep_ratio(tall, 768, 1280)
    assert out.shape == (768, 384, 3) and sh == pytest.approx(1.6) and sw == pytest.approx(1.6)
    wide = np.zeros((240, 480, 3), np.uint8)
    out, sh, sw = transforms.rescale_keep_ratio(wide, 768, 1280)
    assert out.shape == (640, 1280, 3) and sh == pytest.approx(640 / 240)


def test_rescale_stretch_exact_size():
    out, sh, sw = transforms.rescale_stretch(np.zeros((10, 20, 3), np.uint8), 32, 64)
    assert out.shape == (32, 64, 3) and (sh, sw) == (3.2, 3.2)


def test_fit_scale_scaled_size_and_resize_boxes_exact_values():
    # Keep-ratio: the smaller factor for both sides; stretch: one factor per side.
    assert transforms.fit_scale(100, 200, 320, 320) == (1.6, 1.6)
    assert transforms.fit_scale(100, 200, 320, 320, keep_ratio=False) == (3.2, 1.6)
    # Rounded to whole pixels, at least 1, at most the input.
    assert transforms.scaled_size(101, 3, 0.5, 0.1, 64, 64) == (50, 1)
    assert transforms.scaled_size(100, 100, 1.006, 1.0, 100, 100) == (100, 100)
    boxes = np.array([[10, 20, 90, 60], [-4, 0, 200, 50]], np.float32)
    resized = transforms.resize_boxes(boxes, 0.5, 0.25, 40, 30)
    assert resized.dtype == np.float32
    np.testing.assert_array_equal(resized, [[2.5, 10, 22.5, 30], [0, 0, 30, 25]])
    np.testing.assert_array_equal(boxes[1], [-4, 0, 200, 50])  # the input is not modified
    assert transforms.resized_size(np.array([39.9999, 30.0001, 0.5, 0.25], np.float32)) == (40, 30)


def test_resize_masks_nearest_exact():
    masks = np.array([[[1, 0], [0, 1]], [[0, 0], [1, 0]]], np.uint8)
    out = transforms.resize_masks(masks, 4, 4)
    expected0 = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], np.uint8)
    np.testing.assert_array_equal(out[0], expected0)
    np.testing.assert_array_equal(out[1], np.kron(masks[1], np.ones((2, 2), np.uint8)))


def test_resize_masks_single_empty_and_buffer():
    one = transforms.resize_masks(np.ones((1, 3, 3), np.uint8), 6, 5)
    assert one.shape == (1, 6, 5) and one.all()
    assert transforms.resize_masks(np.zeros((0, 3, 3), np.uint8), 6, 5).shape == (0, 6, 5)
    buf = np.zeros((4, 10, 10), np.uint8)
    view = transforms.resize_masks(np.ones((2, 3, 3), np.uint8), 6, 5, out=buf)
    assert view.shape == (2, 6, 5)
    assert buf[:2, :6, :5].all() and buf.sum() == 2 * 30


def test_flip_horizontal_exact():
    img = np.arange(2 * 5 * 1, dtype=np.uint8).reshape(2, 5, 1)
    boxes = np.array([[1, 0, 3, 2]], np.float32)
    masks = np.zeros((1, 2, 5), np.uint8)
    masks[0, :, 1:3] = 1
    f_img, f_boxes, f_masks = transforms.flip_horizontal(img, boxes, masks)
    np.testing.assert_array_equal(f_img[:, :, 0], img[:, ::-1, 0])
    np.testing.assert_array_equal(f_boxes, [[2, 0, 4, 2]])
    np.testing.assert_array_equal(f_masks[0, 0], [0, 0, 1, 1, 0])


def test_normalize_and_pad_exact():
    img = np.array([[[123.675 + 58.395, 116.28, 103.53 - 57.375]]], np.float32).round().astype(np.uint8)
    out = transforms.normalize_and_pad(img, MEAN, STD, 1, 1)
    expected = (img.astype(np.float32) - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    # atol: the input is computed as img * (1/std) - mean * (1/std) in float32.
    np.testing.assert_allclose(out.transpose(1, 2, 0), expected, rtol=1e-6, atol=1e-6)
    padded = transforms.normalize_and_pad(np.ones((2, 3, 3), np.uint8), MEAN, STD, 4, 5)
    assert padded.shape == (3, 4, 5) and np.count_nonzero(padded) == 18 and padded[:, :2, :3].all()
    np.testing.assert_allclose(padded[:, 0, 0], (1.0 - np.array(MEAN)) / np.array(STD), rtol=1e-5)
    with pytest.raises(ValueError, match="cannot pad"):
        transforms.normalize_and_pad(np.ones((6, 3, 3), np.uint8), MEAN, STD, 4, 5)


@pytest.mark.parametrize("flip", [False, True])
def test_preprocess_train_keeps_boxes_and_masks_on_the_object(flip):
    img, annos, masks = _scene()
    image, image_shape, box, label, instance_valid, mask = transforms.preprocess_train(
        img, annos, masks, 96, 128, max_instances=5, mean=MEAN, std=STD, flip=flip)
    assert image.shape == (3, 96, 128) and image.dtype == np.float32
    assert mask.shape == (5, 96, 128) and mask.dtype == np.uint8
    # 40x60 into 96x128: scale min(2.4, 2.133) -> 85x128.
    np.testing.assert_allclose(image_shape, [85, 128, 85 / 40, 128 / 60], rtol=1e-6)
    np.testing.assert_array_equal(label, [1, 2, CROWD_LABEL, 0, 0])
    np.testing.assert_array_equal(instance_valid, [1, 1, 0, 0, 0])
    assert not mask[3:].any() and not box[3:].any()
    # Padding is zero in the image (un-normalised 0 = padding) and in the masks.
    assert not image[:, 85:, :].any() and not mask[:, 85:, :].any()
    rgb = _denormalize(image)
    for k, colour in ((0, RED), (1, BLUE)):
        ys, xs = np.nonzero(mask[k])
        x1, y1, x2, y2 = box[k]
        # The box encloses the mask within 1 px and the mask fills the box within 1 px.
        assert xs.min() >= x1 - 1 and xs.max() + 1 <= x2 + 1 and ys.min() >= y1 - 1 and ys.max() + 1 <= y2 + 1
        assert abs(xs.min() - x1) <= 1 and abs(xs.max() + 1 - x2) <= 1
        assert abs(ys.min() - y1) <= 1 and abs(ys.max() + 1 - y2) <= 1
        # The mask is on the object's pixels: mask pixels nearer the grey background than the
        # object's colour are only blended corner pixels (a 1-px shift would put a whole row,
        # ~5% of the mask, there); most mask pixels are exactly the colour.
        under = rgb[mask[k].astype(bool)]
        to_obj = np.abs(under - np.array(colour)).sum(axis=1)
        to_bg = np.abs(under - 128.0).sum(axis=1)
        assert (to_obj >= to_bg).mean() < 0.01
        assert (to_obj < 6).mean() > 0.8
        # ... and the object's pixels outside the mask are only blended edge pixels.
        outside = rgb[~mask[k].astype(bool)]
        assert (np.abs(outside - np.array(colour)).sum(axis=1) < 6).sum() == 0
    expected_x1 = (128 - 28 * 128 / 60) if flip else 8 * 128 / 60
    assert box[0, 0] == pytest.approx(expected_x1, abs=1e-3)


def test_preprocess_train_rejects_too_many_instances():
    img, annos, masks = _scene()
    with pytest.raises(ValueError, match="3 instances exceed max_instances=2"):
        transforms.preprocess_train(img, annos, masks, 64, 64, 2, MEAN, STD, flip=False)


def test_preprocess_eval_and_inverse_helpers():
    img, annos, masks = _scene()
    image, image_shape = transforms.preprocess_eval(img, 96, 128, MEAN, STD)
    assert image.shape == (3, 96, 128)
    np.testing.assert_allclose(image_shape[:2], [85, 128])
    boxes_in = transforms.scale_boxes(annos[:, :4], image_shape[2], image_shape[3])
    back = boxes_to_original_image(boxes_in, image_shape, 40, 60)
    np.testing.assert_allclose(back, annos[:, :4], atol=1e-4)
    clipped = boxes_to_original_image(np.array([[-5, -5, 500, 500]], np.float32), [80, 120, 2.0, 2.0], 40, 60)
    np.testing.assert_array_equal(clipped, [[0, 0, 60, 40]])
    big = transforms.resize_masks(masks, 85, 128, out=np.zeros((3, 96, 128), np.uint8))
    # Undo pad + resize of the input-sized masks: crop to the resized size, resize back.
    padded = np.pad(big, ((0, 0), (0, 11), (0, 0)))
    new_h, new_w = int(round(float(image_shape[0]))), int(round(float(image_shape[1])))
    small = transforms.resize_masks(np.ascontiguousarray(padded[:, :new_h, :new_w]), 40, 60)
    assert small.shape == (3, 40, 60)
    # Upscaling 40x60 -> 85x128 and back by nearest sampling at pixel centres is lossless;
    # any mismatch (e.g. a one-pixel shift, ~1% of pixels here) is a bug.
    np.testing.assert_array_equal(small, masks)
