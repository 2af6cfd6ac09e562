"""Pictures of detections: overlay, colour splash, cut-out and per-pixel class map.

All functions are pure: they take an RGB ``uint8`` image ``[H, W, 3]`` and detections in the
same (original) pixels -- binary masks ``[K, H, W]`` u8, boxes ``[K, 4]`` ``x1, y1, x2, y2``,
contiguous labels ``[K]`` and scores ``[K]`` -- and return new arrays; nothing is written to
disk here (``predict.py`` does that; note OpenCV writes BGR(A), so convert before saving).
"""

from __future__ import annotations

import colorsys
from typing import Optional, Sequence

import cv2
import numpy as np

# Overlay: weight of the instance colour over the image under a mask.
OVERLAY_ALPHA = 0.5
BOX_THICKNESS = 2
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.45
FONT_THICKNESS = 1
TEXT_PAD = 2
# Number of distinct colours of the instance / class palettes (colours repeat after this).
PALETTE_SIZE = 64
# ITU-R BT.601 luma weights (R, G, B), the usual RGB -> grey conversion.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
BACKGROUND_LABEL = 0


def palette(count: int = PALETTE_SIZE) -> np.ndarray:
    """Distinct bright RGB colours, deterministic.

    Args:
        count: number of colours.

    Returns:
        [count, 3] u8 RGB. Hues are spread by the golden ratio so neighbours differ.
    """
    golden = 0.618033988749895
    colours = []
    for i in range(count):
        hue = (i * golden) % 1.0
        value = 1.0 if i % 2 == 0 else 0.8
        r, g, b = colorsys.hsv_to_rgb(hue, 0.85, value)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return np.asarray(colours, dtype=np.uint8)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be [H, W, 3] uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    return image


def _check_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[1:] != (height, width):
        raise ValueError(f"masks must be [K, {height}, {width}], got shape {masks.shape}")
    return masks.astype(bool)


def to_grey(image: np.ndarray) -> np.ndarray:
    """RGB -> grey replicated to three channels (R = G = B), [H, W, 3] u8."""
    image = _check_image(image)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return np.repeat(grey[:, :, None], 3, axis=2)


def colour_splash(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Detected objects in colour on a greyscale background.

    Args:
        image: [H, W, 3] u8 RGB.
        masks: [K, H, W] binary masks (K may be 0: the whole image turns grey).

    Returns:
        [H, W, 3] u8: the original colour where any mask is set, grey (R = G = B) elsewhere.
    """
    image = _check_image(image)
    masks = _check_masks(masks, image.shape[0], image.shape[1])
    union = masks.any(axis=0) if masks.shape[0] else np.zeros(image.shape[:2], dtype=bool)
    return np.where(union[:, :, None], image, to_grey(image))


def cut_out(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The detected objects with a transparent background.

    Args:
        image: [H, W, 3] u8 RGB.
        masks: [K, H, W] binary masks.

    Returns:
        [H, W, 4] u8 RGBA: RGB of the image, alpha 255 where any mask is set and 0 elsewhere.
    """
    image = _check_image(image)
    masks = _check_masks(masks, image.shape[0], image.shape[1])
    union = masks.any(axis=0) if masks.shape[0] else np.zeros(image.shape[:2], dtype=bool)
    alpha = union.astype(np.uint8) * 255
    return np.concatenate([image, alpha[:, :, None]], axis=2)


def class_map(masks: np.ndarray, labels: Sequence[int], scores: Optional[Sequence[float]] = None,
              height: Optional[int] = None, width: Optional[int] = None) -> np.ndarray:
    """Semantic view of instance masks: the label index of every pixel.

    Args:
        masks: [K, H, W] binary masks.
        labels: [K] contiguous labels (1..num_classes-1; must fit in uint8).
        scores: [K]; where masks overlap the highest-scoring instance wins (default: the later
            instance wins).
        height, width: image size, needed only when K = 0 and masks carry no size.

    Returns:
        [H, W] u8, 0 (background) where no mask is set.
    """
    masks = np.asarray(masks)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if masks.ndim != 3:
        if masks.size == 0 and height is not None and width is not None:
            masks = np.zeros((0, height, width), dtype=np.uint8)
        else:
            raise ValueError(f"masks must be [K, H, W], got shape {masks.shape}")
    if labels.shape[0] != masks.shape[0]:
        raise ValueError(f"{masks.shape[0]} masks but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"labels must be in 0..255 for a uint8 class map, got {labels.min()}..{labels.max()}")
    out = np.full(masks.shape[1:], BACKGROUND_LABEL, dtype=np.uint8)
    order = np.arange(len(labels)) if scores is None else np.argsort(np.asarray(scores), kind="stable")
    for k in order:  # ascending score: the best instance is painted last
        out[masks[k].astype(bool)] = labels[k]
    return out


def colour_class_map(label_map: np.ndarray, num_classes: Optional[int] = None) -> np.ndarray:
    """Colour version of :func:`class_map`: class c gets palette colour c, background black.

    Args:
        label_map: [H, W] u8 label indices.
        num_classes: palette size (default: enough for the largest label).

    Returns:
        [H, W, 3] u8 RGB.
    """
    label_map = np.asarray(label_map)
    count = max(int(label_map.max(initial=0)) + 1, num_classes or 0, 2)
    colours = palette(count)
    colours[BACKGROUND_LABEL] = 0
    return colours[label_map]


def overlay(image: np.ndarray, masks: np.ndarray, boxes: np.ndarray, labels: Sequence[int],
            scores: Sequence[float], class_names: Sequence[str], alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Instance masks blended in colour, boxes and ``name score`` captions drawn on the image.

    Args:
        image: [H, W, 3] u8 RGB.
        masks: [K, H, W] binary masks.
        boxes: [K, 4] x1, y1, x2, y2 pixels.
        labels: [K] contiguous labels indexing ``class_names`` (index 0 = background).
        scores: [K] confidences.
        class_names: names by label, e.g. ``config.coco_classes``.
        alpha: colour weight under a mask.

    Returns:
        [H, W, 3] u8 RGB; instance k is drawn in ``palette()[k % PALETTE_SIZE]``.
    """
    image = _check_image(image)
    height, width = image.shape[:2]
    masks = _check_masks(masks, height, width)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if not masks.shape[0] == boxes.shape[0] == labels.shape[0] == scores.shape[0]:
        raise ValueError(f"counts differ: {masks.shape[0]} masks, {boxes.shape[0]} boxes, "
                         f"{labels.shape[0]} labels, {scores.shape[0]} scores")
    colours = palette()
    out = image.astype(np.float32)
    for k in range(masks.shape[0]):
        colour = colours[k % PALETTE_SIZE].astype(np.float32)
        out[masks[k]] = out[masks[k]] * (1.0 - alpha) + colour * alpha
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    for k in range(boxes.shape[0]):
        colour = tuple(int(c) for c in colours[k % PALETTE_SIZE])
        x1, y1, x2, y2 = (int(round(float(v))) for v in boxes[k])
        cv2.rectangle(out, (x1, y1), (max(x2 - 1, x1), max(y2 - 1, y1)), colour, BOX_THICKNESS)
        label = int(labels[k])
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        text = f"{name} {scores[k]:.2f}"
        (tw, th), baseline = cv2.getTextSize(text, FONT, FONT_SCALE, FONT_THICKNESS)
        top = y1 - th - baseline - 2 * TEXT_PAD
        if top < 0:  # no room above the box: put the caption inside it
            top = y1
        cv2.rectangle(out, (x1, top), (x1 + tw + 2 * TEXT_PAD, top + th + baseline + 2 * TEXT_PAD), colour, -1)
        cv2.putText(out, text, (x1 + TEXT_PAD, top + th + TEXT_PAD), FONT, FONT_SCALE, (255, 255, 255),
                    FONT_THICKNESS, cv2.LINE_AA)
    return out
