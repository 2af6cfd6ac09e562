"""Image / box / mask preprocessing with NumPy and OpenCV (what mmcv did in the tutorial).

Conventions: images are RGB ``[H, W, 3]`` uint8 until normalised; boxes are ``[N, 4]`` float32
``[x1, y1, x2, y2]`` in continuous pixel coordinates (a box over pixel columns 0..9 has x1 = 0,
x2 = 10); masks are ``[N, H, W]`` uint8 with 1 on the object's pixels.

Training order: keep-ratio rescale -> random horizontal flip -> normalise -> pad bottom/right to
the network input; boxes and masks follow every geometric step so they stay on the object.
The training pipeline runs the augmentation list of src/augment.py (built on these functions)
and then :func:`pack_train`; :func:`preprocess_train` is the plain resize + flip + pack.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from src.batch import CROWD_LABEL


def fit_scale(height: int, width: int, out_h: float, out_w: float, keep_ratio: bool = True,
              resize_to: Sequence[float] = ()) -> Tuple[float, float]:
    """Resize factors (scale_h, scale_w) that fit a ``height x width`` image into ``out_h x out_w``.

    Keep-ratio: the largest common factor that fits; else the stretch to exactly the target.
    With ``resize_to = (short, long)`` (config ``resize_to``, keep-ratio only) the target is a
    ``short x long`` box turned like the image instead (torchvision's ``min_size`` / ``max_size``:
    ``min(short / min(h, w), long / max(h, w))``). Before rounding to whole pixels (see
    :func:`scaled_size`).
    """
    if keep_ratio and resize_to:
        short, long = (float(v) for v in resize_to)
        out_h, out_w = (short, long) if height <= width else (long, short)
    if keep_ratio:
        scale = min(out_h / height, out_w / width)
        return scale, scale
    return out_h / height, out_w / width


def scaled_size(height: int, width: int, scale_h: float, scale_w: float, out_h: int, out_w: int
                ) -> Tuple[int, int]:
    """(new_h, new_w) of a ``height x width`` image resized by the factors: rounded to whole
    pixels, at least 1 and at most the input ``out_h x out_w``."""
    return (min(max(int(round(height * scale_h)), 1), out_h),
            min(max(int(round(width * scale_w)), 1), out_w))


def resized_size(image_shape: np.ndarray) -> Tuple[int, int]:
    """(resized_h, resized_w) of the image inside the padded input, from its ``image_shape`` [4]
    (resized_h, resized_w, scale_h, scale_w) of the batch contract (src/batch.py)."""
    return int(round(float(image_shape[0]))), int(round(float(image_shape[1])))


def rescale_keep_ratio(img: np.ndarray, out_h: int, out_w: int, resize_to: Sequence[float] = ()
                       ) -> Tuple[np.ndarray, float, float]:
    """Resize ``img`` as large as possible inside ``out_h x out_w`` keeping its aspect ratio.

    Args:
        img: [h, w, C] image.
        out_h, out_w: the network input size.
        resize_to: ``(short, long)`` box to fit instead, turned like the image (:func:`fit_scale`).

    Returns:
        (resized [h', w', C] with h' <= out_h, w' <= out_w, scale_h = h'/h, scale_w = w'/w)
    """
    h, w = img.shape[:2]
    scale_h, scale_w = fit_scale(h, w, out_h, out_w, keep_ratio=True, resize_to=resize_to)
    new_h, new_w = scaled_size(h, w, scale_h, scale_w, out_h, out_w)
    return resize_image(img, new_h, new_w), new_h / h, new_w / w


def rescale_stretch(img: np.ndarray, out_h: int, out_w: int) -> Tuple[np.ndarray, float, float]:
    """Resize ``img`` to exactly ``out_h x out_w`` (``keep_ratio: false``); same returns as above."""
    h, w = img.shape[:2]
    return resize_image(img, out_h, out_w), out_h / h, out_w / w


def resize_image(img: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """Resize an [h, w, C] image to [new_h, new_w, C]: area filter when shrinking, else bilinear."""
    if img.shape[:2] == (new_h, new_w):
        return img
    shrinking = new_h < img.shape[0] and new_w < img.shape[1]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(img, (new_w, new_h), interpolation=interp)


def resize_masks(masks: np.ndarray, new_h: int, new_w: int, out: Optional[np.ndarray] = None,
                 flip: bool = False) -> np.ndarray:
    """Nearest-neighbour resize of instance masks, one cv2 call per instance.

    INTER_NEAREST_EXACT samples at pixel centres like the bilinear image resize (plain
    INTER_NEAREST is shifted by up to half a source pixel towards the top-left).

    Args:
        masks: [N, h, w] uint8.
        new_h, new_w: target size.
        out: optional [>= N, >= new_h, >= new_w] uint8 buffer; the result is written to its
            top-left corner (so resize + pad is one copy).
        flip: also mirror left-right (same as :func:`flip_horizontal` after the resize).

    Returns:
        [N, new_h, new_w] uint8 (a view into ``out`` when given).
    """
    n = masks.shape[0]
    if out is None:
        out = np.zeros((n, new_h, new_w), np.uint8)
    target = out[:n, :new_h, :new_w]
    for k in range(n):
        resized = masks[k]
        if resized.shape != (new_h, new_w):
            resized = cv2.resize(resized, (new_w, new_h), interpolation=cv2.INTER_NEAREST_EXACT)
        target[k] = resized[:, ::-1] if flip else resized
    return target


def scale_boxes(boxes: np.ndarray, scale_h: float, scale_w: float) -> np.ndarray:
    """Boxes [N, 4] of the original image -> boxes in the resized image."""
    factors = np.array([scale_w, scale_h, scale_w, scale_h], np.float32)
    return (boxes.astype(np.float32) * factors).astype(np.float32)


def clip_boxes(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """Clip boxes [..., 4] (x1, y1, x2, y2) to a ``height x width`` image, in place; returns them."""
    boxes[..., 0::2] = np.clip(boxes[..., 0::2], 0, width)
    boxes[..., 1::2] = np.clip(boxes[..., 1::2], 0, height)
    return boxes


def resize_boxes(boxes: np.ndarray, scale_h: float, scale_w: float, new_h: int, new_w: int) -> np.ndarray:
    """Boxes [N, 4] of the original image -> float32 boxes of the ``new_h x new_w`` resized image,
    clipped to it."""
    return clip_boxes(scale_boxes(boxes, scale_h, scale_w), new_h, new_w)


def flip_horizontal(img: np.ndarray, boxes: np.ndarray, masks: np.ndarray
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mirror image, boxes and masks left-right.

    Args:
        img: [h, w, C] image (un-padded, so the mirror axis is the image's own centre).
        boxes: [N, 4] x1, y1, x2, y2 with 0 <= x <= w.
        masks: [N, h, w].

    Returns:
        (img, boxes, masks) flipped; x1' = w - x2, x2' = w - x1.
    """
    w = img.shape[1]
    flipped = boxes.astype(np.float32).copy()
    flipped[:, 0] = w - boxes[:, 2]
    flipped[:, 2] = w - boxes[:, 0]
    return img[:, ::-1], flipped, masks[:, :, ::-1]


def normalize_and_pad(img: np.ndarray, mean: Sequence[float], std: Sequence[float], h: int, w: int) -> np.ndarray:
    """Normalise an RGB image, (img - mean) / std per channel, into a zero-padded network input.

    The image sits at the top-left; the padding at the bottom/right is 0 (so it does not move
    coordinates).

    Args:
        img: [h', w', 3] uint8 RGB with h' <= h, w' <= w.
        mean, std: per RGB channel.
        h, w: the network input size.

    Returns:
        [3, h, w] float32.

    Raises:
        ValueError: the image is larger than h x w.
    """
    rows, cols = img.shape[:2]
    if rows > h or cols > w:
        raise ValueError(f"cannot pad an image of {(rows, cols)} to the smaller size {(h, w)}")
    out = np.zeros((3, h, w), np.float32)
    # Channel by channel into the padded planes: 5x faster than normalising HWC and transposing.
    for c in range(3):
        scale = np.float32(1.0 / std[c])
        out[c, :rows, :cols] = img[:, :, c].astype(np.float32) * scale - np.float32(mean[c]) * scale
    return out


def rescale(img: np.ndarray, out_h: int, out_w: int, keep_ratio: bool, resize_to: Sequence[float] = ()
            ) -> Tuple[np.ndarray, float, float]:
    """:func:`rescale_keep_ratio` or, with ``keep_ratio`` false, :func:`rescale_stretch`."""
    if keep_ratio:
        return rescale_keep_ratio(img, out_h, out_w, resize_to)
    return rescale_stretch(img, out_h, out_w)


def preprocess_train(img: np.ndarray, annos: np.ndarray, masks: np.ndarray, out_h: int, out_w: int,
                     max_instances: int, mean: Sequence[float], std: Sequence[float], flip: bool,
                     keep_ratio: bool = True):
    """One training sample -> the padded columns of the batch contract (src/batch.py).

    Args:
        img: [h, w, 3] uint8 RGB, original size.
        annos: [n, 6] float32 rows (x1, y1, x2, y2, label, iscrowd) in original pixels, real
            instances first then crowd regions; n <= max_instances.
        masks: [n, h, w] uint8.
        out_h, out_w: network input size.
        max_instances: N, the padded instance count.
        mean, std: RGB normalisation.
        flip: mirror left-right (the caller draws it with probability flip_ratio).
        keep_ratio: keep-ratio rescale (else stretch).

    Returns:
        image [3, H, W] f32, image_shape [4] f32 (resized_h, resized_w, scale_h, scale_w),
        box [N, 4] f32, label [N] i32 (crowd -> CROWD_LABEL, padding 0), instance_valid [N] i32,
        mask [N, H, W] u8.
    """
    n = annos.shape[0]
    if n > max_instances:
        raise ValueError(f"{n} instances exceed max_instances={max_instances}")
    resized, scale_h, scale_w = rescale(img, out_h, out_w, keep_ratio)
    new_h, new_w = resized.shape[:2]
    packed = annos.astype(np.float32).copy()
    boxes = resize_boxes(annos[:, :4], scale_h, scale_w, new_h, new_w)
    resized_masks = resize_masks(masks, new_h, new_w, flip=flip)
    if flip:
        resized, boxes, _ = flip_horizontal(resized, boxes, masks[:0])
    packed[:, :4] = boxes
    return pack_train(resized, packed, resized_masks, scale_h, scale_w, out_h, out_w, max_instances, mean, std)


def pack_train(img: np.ndarray, annos: np.ndarray, masks: np.ndarray, scale_h: float, scale_w: float,
               out_h: int, out_w: int, max_instances: int, mean: Sequence[float], std: Sequence[float]):
    """An augmented sample already inside the input size -> the padded columns of src/batch.py.

    Args:
        img: [h, w, 3] uint8 RGB with h <= out_h, w <= out_w (resized and augmented).
        annos: [n, 6] float32 rows (x1, y1, x2, y2, label, iscrowd) in input pixels, real
            instances first; rows beyond max_instances are dropped (the smallest / crowd ones).
        masks: [n, h, w] uint8.
        scale_h, scale_w: resize factor from the original image (input pixels per original pixel).
        out_h, out_w, max_instances, mean, std: as in :func:`preprocess_train`.

    Returns:
        image [3, H, W] f32, image_shape [4] f32, box [N, 4] f32, label [N] i32, instance_valid [N] i32,
        mask [N, H, W] u8, as :func:`preprocess_train`.
    """
    n = min(annos.shape[0], max_instances)
    new_h, new_w = img.shape[:2]
    if new_h > out_h or new_w > out_w:
        raise ValueError(f"augmented image {new_h}x{new_w} does not fit the input {out_h}x{out_w}")
    image = normalize_and_pad(img, mean, std, out_h, out_w)
    box = np.zeros((max_instances, 4), np.float32)
    box[:n] = annos[:n, :4]
    crowd = annos[:n, 5] > 0
    label = np.zeros((max_instances,), np.int32)
    label[:n] = np.where(crowd, CROWD_LABEL, annos[:n, 4]).astype(np.int32)
    instance_valid = np.zeros((max_instances,), np.int32)
    instance_valid[:n] = (~crowd).astype(np.int32)
    mask_out = np.zeros((max_instances, out_h, out_w), np.uint8)
    mask_out[:n, :new_h, :new_w] = masks[:n]
    image_shape = np.array([new_h, new_w, scale_h, scale_w], np.float32)
    return image, image_shape, box, label, instance_valid, mask_out


def preprocess_eval(img: np.ndarray, out_h: int, out_w: int, mean: Sequence[float], std: Sequence[float],
                    keep_ratio: bool = True, resize_to: Sequence[float] = ()) -> Tuple[np.ndarray, np.ndarray]:
    """One evaluation / inference image -> (image [3, H, W] f32, image_shape [4] f32).

    Same rescale (``resize_to``: :func:`fit_scale`) / normalise / pad as training, no flip.
    """
    resized, scale_h, scale_w = rescale(img, out_h, out_w, keep_ratio, resize_to)
    image = normalize_and_pad(resized, mean, std, out_h, out_w)
    image_shape = np.array([resized.shape[0], resized.shape[1], scale_h, scale_w], np.float32)
    return image, image_shape
