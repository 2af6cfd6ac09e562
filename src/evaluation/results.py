"""Network detections -> original image -> COCO results.

The network's inference call (``net(image, image_shape)``) returns fixed-size tensors in input
pixels (see ``src/batch.py``): ``boxes [B,K,4]``, ``scores [B,K]``, ``labels [B,K]``,
``valid [B,K]`` and 28x28 mask probabilities ``masks [B,K,28,28]``. Per image this module

1. maps boxes back to the original image (undo the keep-ratio resize, the bottom/right padding
   and, for completeness, a horizontal flip) -- :func:`boxes_to_original_image`;
2. pastes each 28x28 probability mask into the original image at its box and thresholds it --
   :func:`paste_masks`;
3. writes COCO results (``bbox`` ``[x, y, w, h]`` in original pixels, ``score``, the annotation
   file's own ``category_id``, ``segmentation`` as compressed RLE with ``counts`` as ``str``) --
   :func:`detections_to_coco` (takes full-size binary masks) and :func:`predictions_to_coco`
   (takes the network's outputs).

Boxes are ``[x1, y1, x2, y2]`` float pixels in continuous coordinates (a box covering pixel
columns 0..9 has ``x1 = 0, x2 = 10``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from pycocotools import mask as mask_utils

from src.maskrcnn.numerics import MASK_PASTES, get_numerics
from src.transforms import clip_boxes

# image_shape columns: (resized_h, resized_w, scale_h, scale_w).
_RESIZED_H, _RESIZED_W, _SCALE_H, _SCALE_W = range(4)
# Digits kept for box coordinates and scores in the results JSON.
_JSON_DECIMALS = 3


class EvaluationError(ValueError):
    """Predictions or ground truth handed to the evaluator are inconsistent."""


@dataclass
class Detections:
    """Detections of one image in original-image pixels.

    Attributes:
        boxes: [K, 4] f32, x1, y1, x2, y2 in original pixels, clipped to the image.
        scores: [K] f32.
        labels: [K] i32, contiguous labels 1..num_classes-1.
        masks: [K, H, W] u8 binary masks of the original image size (H, W).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def select(self, keep: np.ndarray) -> "Detections":
        """The detections where the boolean/index array ``keep`` selects."""
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep], self.masks[keep])


def to_numpy(value) -> np.ndarray:
    """NumPy view of a NumPy array, list or MindSpore Tensor (e.g. one network output)."""
    if hasattr(value, "asnumpy"):
        return value.asnumpy()
    return np.asarray(value)


# ---------------------------------------------------------------------------------------------
# Geometry: input pixels -> original pixels, mask paste-back
# ---------------------------------------------------------------------------------------------

def boxes_to_original_image(boxes: np.ndarray, image_shape: Sequence[float], orig_h: int, orig_w: int,
                            flipped: bool = False) -> np.ndarray:
    """Map boxes from network-input pixels back to the original image.

    The inverse of the input preprocessing (``src.transforms.scale_boxes`` after the keep-ratio
    resize, then an optional flip); used for every prediction.

    Args:
        boxes: [K, 4] x1, y1, x2, y2 in input pixels (after resize, flip and padding; padding is
            at the bottom/right so it does not move coordinates).
        image_shape: [4] (resized_h, resized_w, scale_h, scale_w), scale = input px per original px.
        orig_h, orig_w: original image size.
        flipped: the input image was flipped horizontally after the resize.

    Returns:
        [K, 4] f32 boxes in original pixels, clipped to [0, orig_w] x [0, orig_h].
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    resized_w = float(image_shape[_RESIZED_W])
    scale_h, scale_w = float(image_shape[_SCALE_H]), float(image_shape[_SCALE_W])
    if scale_h <= 0 or scale_w <= 0:
        raise EvaluationError(f"image_shape {list(image_shape)} has a non-positive scale")
    if flipped:
        x1 = resized_w - boxes[:, 2]
        x2 = resized_w - boxes[:, 0]
        boxes[:, 0], boxes[:, 2] = x1, x2
    boxes[:, [0, 2]] /= scale_w
    boxes[:, [1, 3]] /= scale_h
    return clip_boxes(boxes, orig_h, orig_w)


def _interp_matrix(start: float, length: float, first: int, count: int, size: int) -> np.ndarray:
    """Bilinear weights [count, size] sampling a ``size``-cell mask laid over [start, start+length].

    Row j gives the weights of the mask cells for the pixel whose centre is ``first + j + 0.5``;
    cells are sampled at their centres (half-pixel convention) with edge values held outside
    the outermost centres. Pixels whose centre lies outside the box get an all-zero row.
    """
    centres = first + np.arange(count, dtype=np.float64) + 0.5
    pos = (centres - start) / length * size - 0.5
    inside = (centres >= start) & (centres < start + length)
    pos = np.clip(pos, 0.0, size - 1.0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, size - 1)
    frac = pos - lo
    weights = np.zeros((count, size), dtype=np.float64)
    rows = np.arange(count)
    weights[rows, lo] += 1.0 - frac
    weights[rows, hi] += frac
    weights[~inside] = 0.0
    return weights


def _resize_bilinear(mask: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """``mask`` [m, n] resized to [out_h, out_w] by bilinear interpolation with half-pixel
    centres, positions clamped to the outermost cells (OpenCV's ``INTER_LINEAR`` and torch's
    ``interpolate(mode="bilinear", align_corners=False)``)."""
    ry = _interp_matrix(0.0, float(out_h), 0, out_h, mask.shape[0])
    rx = _interp_matrix(0.0, float(out_w), 0, out_w, mask.shape[1])
    return ry @ mask.astype(np.float64) @ rx.T


def _integer_box_paste(mask: np.ndarray, box: np.ndarray, height: int, width: int, thr: float,
                       convention: str) -> Optional[Tuple[slice, slice, np.ndarray]]:
    """Where and what a torchvision / model-zoo paste writes for one mask (see ``paste_masks``).

    Returns:
        (rows, cols, binary block) or None when nothing is written.
    """
    if convention == "torchvision":
        # paste_masks_in_image: one zero cell around the mask, the box grown by (M + 2) / M about
        # its centre in float32 and truncated towards zero, the image clipped afterwards.
        size = mask.shape[0]
        mask = np.pad(mask, 1)
        box = np.asarray(box, np.float32)
        scale = np.float32((size + 2) / size)
        half_w = (box[2] - box[0]) * np.float32(0.5) * scale
        half_h = (box[3] - box[1]) * np.float32(0.5) * scale
        centre_x = (box[2] + box[0]) * np.float32(0.5)
        centre_y = (box[3] + box[1]) * np.float32(0.5)
        x1, x2 = int(centre_x - half_w), int(centre_x + half_w)
        y1, y2 = int(centre_y - half_h), int(centre_y + half_h)
        box_w, box_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        block = _resize_bilinear(mask, box_h, box_w) > thr
        c0, c1 = max(x1, 0), min(x2 + 1, width)
        r0, r1 = max(y1, 0), min(y2 + 1, height)
        if c1 <= c0 or r1 <= r0:
            return None
        return slice(r0, r1), slice(c0, c1), block[r0 - y1:r1 - y1, c0 - x1:c1 - x1]
    # model zoo (get_seg_masks): the box truncated to integers, x2 - x1 + 1 wide, cut at the image.
    x1, y1, x2, y2 = (int(v) for v in np.asarray(box, np.float32))
    box_w = max(min(max(x2 - x1 + 1, 1), width - x1), 1)
    box_h = max(min(max(y2 - y1 + 1, 1), height - y1), 1)
    block = _resize_bilinear(mask, box_h, box_w) > thr
    rows, cols = slice(y1, min(y1 + box_h, height)), slice(x1, min(x1 + box_w, width))
    return rows, cols, block[:rows.stop - y1, :cols.stop - x1]


def paste_masks(masks: np.ndarray, boxes: np.ndarray, height: int, width: int, thr: float,
                flipped: bool = False, convention: str = "native") -> np.ndarray:
    """Paste per-box mask probabilities into a full image and threshold them.

    ``convention`` (the numerics preset's ``mask_paste``, ``src/maskrcnn/numerics.py``):

    - ``"native"``: each M x M mask is stretched over its float box by bilinear interpolation
      evaluated at the pixel centres inside the box (one small separable product
      ``Ry @ mask @ Rx^T`` per mask, so the cost is proportional to the box area, not the image
      area); pixels outside the box are 0; foreground where ``>= thr``.
    - ``"torchvision"``: ``paste_masks_in_image``: the mask padded by one zero cell (so its
      border maps outside the box), the box grown by (M + 2) / M about its centre and truncated
      to integers, the (M + 2)-cell mask resized (bilinear, half-pixel centres) to
      ``x2 - x1 + 1`` by ``y2 - y1 + 1`` pixels at ``(x1, y1)``; foreground where ``> thr``.
      A 10x10 box of ones covers 11x11 = 121 pixels (100 under ``"native"``).
    - ``"zoo"``: the model zoo's ``get_seg_masks``: the box truncated to integers, the M x M mask
      resized (bilinear, half-pixel centres, as OpenCV) to ``x2 - x1 + 1`` by ``y2 - y1 + 1``
      pixels at ``(x1, y1)``, cut at the image; foreground where ``> thr``.

    Args:
        masks: [K, M, M] f32 probabilities (M = ``Config.mask_out_size``, 28 by default).
        boxes: [K, 4] x1, y1, x2, y2 in the pixels of the target image.
        height, width: size of the target (original) image.
        thr: a pixel is foreground where the interpolated probability >= thr (``native``),
            > thr (the others).
        flipped: the masks were predicted on a horizontally flipped image; they are mirrored
            before pasting (``boxes`` must already be in unflipped coordinates, as returned by
            :func:`boxes_to_original_image` with ``flipped=True``).
        convention: ``"native"``, ``"torchvision"`` or ``"zoo"`` (above).

    Returns:
        [K, height, width] u8 binary masks. Each mask is stored Fortran-contiguous
        (``out.transpose(1, 2, 0)`` is a Fortran-ordered [H, W, K] array, which is what the
        pycocotools RLE encoder wants), so encoding does not copy.
    """
    masks = np.asarray(masks, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2]:
        raise EvaluationError(f"masks must be [K, M, M], got shape {masks.shape}")
    if masks.shape[0] != boxes.shape[0]:
        raise EvaluationError(f"{masks.shape[0]} masks but {boxes.shape[0]} boxes")
    num, size = masks.shape[0], masks.shape[1]
    out_hwk = np.zeros((height, width, num), dtype=np.uint8, order="F")
    out = out_hwk.transpose(2, 0, 1)
    if convention not in MASK_PASTES:
        raise EvaluationError(f"mask paste convention must be one of {MASK_PASTES}, got {convention!r}")
    if flipped:
        masks = masks[:, :, ::-1]
    for k in range(num):
        if convention != "native":
            if all(map(math.isfinite, boxes[k])):
                pasted = _integer_box_paste(masks[k], boxes[k], height, width, thr, convention)
                if pasted is not None:
                    out[k, pasted[0], pasted[1]] = pasted[2]
            continue
        x1, y1, x2, y2 = boxes[k]
        box_w, box_h = x2 - x1, y2 - y1
        if not (box_w > 0 and box_h > 0) or not all(map(math.isfinite, boxes[k])):
            continue
        c0, c1 = max(int(math.floor(x1)), 0), min(int(math.ceil(x2)), width)
        r0, r1 = max(int(math.floor(y1)), 0), min(int(math.ceil(y2)), height)
        if c1 <= c0 or r1 <= r0:
            continue
        rx = _interp_matrix(x1, box_w, c0, c1 - c0, size)
        ry = _interp_matrix(y1, box_h, r0, r1 - r0, size)
        prob = ry @ masks[k].astype(np.float64) @ rx.T
        out[k, r0:r1, c0:c1] = prob >= thr
    return out


# ---------------------------------------------------------------------------------------------
# COCO results
# ---------------------------------------------------------------------------------------------

def encode_masks(masks: np.ndarray) -> List[Dict[str, object]]:
    """Compressed RLE of binary masks, JSON-serialisable.

    Args:
        masks: [K, H, W] u8 binary masks.

    Returns:
        K dicts ``{"size": [H, W], "counts": str}``.
    """
    masks = np.asarray(masks, dtype=np.uint8)
    if masks.ndim != 3:
        raise EvaluationError(f"masks must be [K, H, W], got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def detections_to_coco(image_id: int, detections: Detections, label_to_cat_id: Mapping[int, int],
                       box_plus_one: bool = False) -> List[Dict[str, object]]:
    """COCO result dicts of one image from detections in original pixels.

    This is the one results writer: :func:`predictions_to_coco` calls it with pasted 28x28
    masks, and it can equally be called with full-resolution masks.

    Args:
        image_id: COCO image id.
        detections: boxes [K,4] x1,y1,x2,y2 original px, scores [K], labels [K] (contiguous),
            masks [K,H,W] u8.
        label_to_cat_id: contiguous label -> the annotation file's category id.
        box_plus_one: write ``w = x2 - x1 + 1``, ``h = y2 - y1 + 1`` (the model zoo's results,
            numerics ``box_plus_one``) instead of ``x2 - x1``, ``y2 - y1``.

    Returns:
        K dicts with ``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score`` and
        ``segmentation`` (RLE with str counts).

    Raises:
        EvaluationError: a label has no category id.
    """
    results = []
    rles = encode_masks(detections.masks)
    for box, score, label, rle in zip(detections.boxes, detections.scores, detections.labels, rles):
        label = int(label)
        if label not in label_to_cat_id:
            raise EvaluationError(f"image {image_id}: predicted label {label} has no category id "
                                  f"(known labels {sorted(label_to_cat_id)})")
        x1, y1, x2, y2 = (float(v) for v in box)
        if box_plus_one:
            x2, y2 = x2 + 1.0, y2 + 1.0
        results.append({
            "image_id": int(image_id),
            "category_id": int(label_to_cat_id[label]),
            "bbox": [round(x1, _JSON_DECIMALS), round(y1, _JSON_DECIMALS),
                     round(x2 - x1, _JSON_DECIMALS), round(y2 - y1, _JSON_DECIMALS)],
            "score": round(float(score), 5),
            "segmentation": rle,
        })
    return results


def predictions_to_original(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, valid: np.ndarray,
                            masks: np.ndarray, image_shape: Sequence[float], orig_h: int, orig_w: int,
                            mask_thr: float, flipped: bool = False, mask_paste: str = "native") -> Detections:
    """One image's network predictions -> :class:`Detections` in original pixels.

    Args:
        boxes: [K, 4] input pixels; scores: [K]; labels: [K] i32; valid: [K] bool;
        masks: [K, 28, 28] probabilities (see ``src/batch.py``).
        image_shape: [4] (resized_h, resized_w, scale_h, scale_w).
        orig_h, orig_w: original image size.
        mask_thr: probability threshold for the pasted masks.
        flipped: the input image was flipped horizontally.
        mask_paste: paste convention (:func:`paste_masks`).

    Returns:
        Detections of the valid entries with label >= 1, masks [K', orig_h, orig_w] u8.
    """
    valid = np.asarray(valid).astype(bool).reshape(-1)
    labels = np.asarray(labels).astype(np.int32).reshape(-1)
    keep = valid & (labels > 0)
    boxes_o = boxes_to_original_image(np.asarray(boxes)[keep], image_shape, orig_h, orig_w, flipped)
    masks_k = np.asarray(masks, dtype=np.float32)[keep]
    pasted = paste_masks(masks_k, boxes_o, orig_h, orig_w, mask_thr, flipped=flipped, convention=mask_paste)
    return Detections(boxes_o, np.asarray(scores, dtype=np.float32).reshape(-1)[keep], labels[keep], pasted)


def predictions_to_coco(image_id: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                        valid: np.ndarray, masks: np.ndarray, image_shape: Sequence[float], orig_h: int,
                        orig_w: int, label_to_cat_id: Mapping[int, int], mask_thr: float,
                        flipped: bool = False, numerics: str = "native") -> List[Dict[str, object]]:
    """COCO results of one image straight from the network's outputs.

    Args: as :func:`predictions_to_original` plus ``image_id``, ``label_to_cat_id`` and
    ``numerics``, the preset whose mask paste and COCO box width are used.

    Returns:
        list of COCO result dicts (see :func:`detections_to_coco`).
    """
    conventions = get_numerics(numerics)
    detections = predictions_to_original(boxes, scores, labels, valid, masks, image_shape,
                                         orig_h, orig_w, mask_thr, flipped, conventions.mask_paste)
    return detections_to_coco(image_id, detections, label_to_cat_id, conventions.box_plus_one)
