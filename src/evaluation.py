"""Evaluation apart from inference: network predictions -> COCO results -> COCOeval metrics.

The network's inference call (``net(image, image_shape)``) returns fixed-size tensors in input
pixels (see ``src/batch.py``): ``boxes [B,K,4]``, ``scores [B,K]``, ``labels [B,K]``,
``valid [B,K]`` and 28x28 mask probabilities ``masks [B,K,28,28]``. This module

1. maps boxes back to the original image (undo the keep-ratio resize, the bottom/right padding
   and, for completeness, a horizontal flip) -- :func:`boxes_to_original_image`;
2. pastes each 28x28 probability mask into the original image at its box and thresholds it --
   :func:`paste_masks`;
3. writes COCO results (``bbox`` ``[x, y, w, h]`` in original pixels, ``score``, the annotation
   file's own ``category_id``, ``segmentation`` as compressed RLE with ``counts`` as ``str``) --
   :func:`detections_to_coco` (takes full-size binary masks) and :func:`predictions_to_coco`
   (takes the network's outputs);
4. accumulates results over a dataset and runs pycocotools ``COCOeval`` for ``bbox`` and
   ``segm`` restricted to the configured classes and the evaluated images --
   :class:`COCOEvaluator`.

Boxes are ``[x1, y1, x2, y2]`` float pixels in continuous coordinates (a box covering pixel
columns 0..9 has ``x1 = 0, x2 = 10``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from mindspore.train.callback import Callback
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from src.batch import MASK_OUT_SIZE, PREDICTION_NAMES
from src.coco_summary import COCO_MAX_DETS, max_dets_setting
from src.coco_summary import summarize as summarize_coco_stats

logger = logging.getLogger(__name__)

IOU_TYPES = ("bbox", "segm")
# Names of the 12 numbers of COCOeval.stats, in its order.
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                   "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# Image id of a padding image in the last partial eval batch (see create_new_dataset).
PADDING_IMAGE_ID = -1
# image_shape columns: (resized_h, resized_w, scale_h, scale_w).
_RESIZED_H, _RESIZED_W, _SCALE_H, _SCALE_W = range(4)
# Digits kept for box coordinates and scores in the results JSON.
_JSON_DECIMALS = 3
# Detections per image scored by COCOeval unless the config says otherwise (test_max_per_img).
DEFAULT_MAX_DETS = COCO_MAX_DETS[-1]


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


# ---------------------------------------------------------------------------------------------
# Geometry: input pixels -> original pixels, mask paste-back
# ---------------------------------------------------------------------------------------------

def boxes_to_original_image(boxes: np.ndarray, image_shape: Sequence[float], orig_h: int, orig_w: int,
                            flipped: bool = False) -> np.ndarray:
    """Map boxes from network-input pixels back to the original image.

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
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0.0, float(orig_w))
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0.0, float(orig_h))
    return boxes


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


def paste_masks(masks: np.ndarray, boxes: np.ndarray, height: int, width: int, thr: float,
                flipped: bool = False) -> np.ndarray:
    """Paste per-box mask probabilities into a full image and threshold them.

    Each M x M mask is stretched over its box by bilinear interpolation evaluated at the pixel
    centres inside the box (one small separable product ``Ry @ mask @ Rx^T`` per mask, so the
    cost is proportional to the box area, not the image area); pixels outside the box are 0.

    Args:
        masks: [K, M, M] f32 probabilities (M = 28 from the mask head).
        boxes: [K, 4] x1, y1, x2, y2 in the pixels of the target image.
        height, width: size of the target (original) image.
        thr: a pixel is foreground where the interpolated probability >= thr.
        flipped: the masks were predicted on a horizontally flipped image; they are mirrored
            before pasting (``boxes`` must already be in unflipped coordinates, as returned by
            :func:`boxes_to_original_image` with ``flipped=True``).

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
    if flipped:
        masks = masks[:, :, ::-1]
    for k in range(num):
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


def detections_to_coco(image_id: int, detections: Detections,
                       label_to_cat_id: Mapping[int, int]) -> List[Dict[str, object]]:
    """COCO result dicts of one image from detections in original pixels.

    This is the one results writer: :func:`predictions_to_coco` calls it with pasted 28x28
    masks, and it can equally be called with full-resolution masks.

    Args:
        image_id: COCO image id.
        detections: boxes [K,4] x1,y1,x2,y2 original px, scores [K], labels [K] (contiguous),
            masks [K,H,W] u8.
        label_to_cat_id: contiguous label -> the annotation file's category id.

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
                            mask_thr: float, flipped: bool = False) -> Detections:
    """One image's network predictions -> :class:`Detections` in original pixels.

    Args:
        boxes: [K, 4] input pixels; scores: [K]; labels: [K] i32; valid: [K] bool;
        masks: [K, 28, 28] probabilities (see ``src/batch.py``).
        image_shape: [4] (resized_h, resized_w, scale_h, scale_w).
        orig_h, orig_w: original image size.
        mask_thr: probability threshold for the pasted masks.
        flipped: the input image was flipped horizontally.

    Returns:
        Detections of the valid entries with label >= 1, masks [K', orig_h, orig_w] u8.
    """
    valid = np.asarray(valid).astype(bool).reshape(-1)
    labels = np.asarray(labels).astype(np.int32).reshape(-1)
    keep = valid & (labels > 0)
    boxes_o = boxes_to_original_image(np.asarray(boxes)[keep], image_shape, orig_h, orig_w, flipped)
    masks_k = np.asarray(masks, dtype=np.float32)[keep]
    pasted = paste_masks(masks_k, boxes_o, orig_h, orig_w, mask_thr, flipped=flipped)
    return Detections(boxes_o, np.asarray(scores, dtype=np.float32).reshape(-1)[keep], labels[keep], pasted)


def predictions_to_coco(image_id: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                        valid: np.ndarray, masks: np.ndarray, image_shape: Sequence[float], orig_h: int,
                        orig_w: int, label_to_cat_id: Mapping[int, int], mask_thr: float,
                        flipped: bool = False) -> List[Dict[str, object]]:
    """COCO results of one image straight from the network's outputs.

    Args: as :func:`predictions_to_original` plus ``image_id`` and ``label_to_cat_id``.

    Returns:
        list of COCO result dicts (see :func:`detections_to_coco`).
    """
    detections = predictions_to_original(boxes, scores, labels, valid, masks, image_shape,
                                         orig_h, orig_w, mask_thr, flipped)
    return detections_to_coco(image_id, detections, label_to_cat_id)


# ---------------------------------------------------------------------------------------------
# COCOeval
# ---------------------------------------------------------------------------------------------

def _quiet(func, *args):
    """Run a pycocotools call, sending what it prints to the debug log instead of stdout."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        value = func(*args)
    for line in buffer.getvalue().splitlines():
        logger.debug("pycocotools: %s", line)
    return value


def _results_coco(coco_gt: COCO, results: List[Dict[str, object]], iou_type: str) -> COCO:
    """A COCO object holding ``results`` as annotations (like COCO.loadRes, empty lists allowed).

    The area of a segm result is its mask area (so area ranges S/M/L follow the mask), of a
    bbox result its box area. The input dicts are not modified.
    """
    anns = []
    for index, res in enumerate(results, start=1):
        ann = dict(res)
        if iou_type == "segm":
            ann["area"] = float(mask_utils.area(res["segmentation"]))
        else:
            ann.pop("segmentation", None)
            ann["area"] = float(res["bbox"][2] * res["bbox"][3])
        ann["id"] = index
        ann["iscrowd"] = 0
        anns.append(ann)
    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset["images"]),
                       "categories": list(coco_gt.dataset["categories"]),
                       "annotations": anns}
    _quiet(coco_dt.createIndex)
    return coco_dt


def _per_class_ap(coco_eval: COCOeval) -> Dict[int, Optional[float]]:
    """AP@[.5:.95] per category id (area all, largest maxDets); None for a class without GT."""
    precision = coco_eval.eval["precision"]  # [T, R, K, A, M]
    per_class = {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        per_class[int(cat_id)] = float(values.mean()) if values.size else None
    return per_class


def run_cocoeval(coco_gt: COCO, results: List[Dict[str, object]], cat_ids: Sequence[int],
                 image_ids: Sequence[int], iou_type: str, max_dets: int = DEFAULT_MAX_DETS,
                 iou_thrs: Optional[Sequence[float]] = None) -> COCOeval:
    """An evaluated and accumulated ``COCOeval`` (see :func:`coco_evaluate` for the arguments).

    ``max_dets`` detections per image are scored (maxDets [1, 10, max_dets]); ``iou_thrs``
    replaces COCO's IoU thresholds .50:.05:.95 when given (the error analysis uses 0.1).
    """
    if iou_type not in IOU_TYPES:
        raise EvaluationError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    coco_dt = _results_coco(coco_gt, results, iou_type)
    coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
    coco_eval.params.catIds = sorted(int(c) for c in cat_ids)
    coco_eval.params.imgIds = sorted(int(i) for i in image_ids)
    try:
        coco_eval.params.maxDets = max_dets_setting(max_dets)
    except ValueError as e:
        raise EvaluationError(f"test_max_per_img: {e}") from e
    if iou_thrs is not None:
        coco_eval.params.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
    _quiet(coco_eval.evaluate)
    _quiet(coco_eval.accumulate)
    return coco_eval


def coco_evaluate(coco_gt: COCO, results: List[Dict[str, object]], cat_ids: Sequence[int],
                  image_ids: Sequence[int], iou_type: str,
                  max_dets: int = DEFAULT_MAX_DETS) -> Tuple[Dict[str, object], str]:
    """Run COCOeval on ``results`` for one IoU type.

    Args:
        coco_gt: ground truth.
        results: COCO result dicts (see :func:`detections_to_coco`).
        cat_ids: category ids to evaluate (the configured classes).
        image_ids: image ids to evaluate.
        iou_type: "bbox" or "segm".
        max_dets: detections per image that are scored (``config.test_max_per_img``); the
            AP entries and AR100/ARs/ARm/ARl use this many (COCO's own summary uses 100).

    Returns:
        (metrics, summary): metrics has the 12 COCO stats by name (AP, AP50, ..., ARl; -1 where
        COCO has no ground truth for the area range) and ``per_class`` {cat_id: AP or None};
        summary is the 12-line text in COCOeval.summarize's format.
    """
    coco_eval = run_cocoeval(coco_gt, results, cat_ids, image_ids, iou_type, max_dets)
    stats, summary = summarize_coco_stats(coco_eval)
    metrics: Dict[str, object] = {name: float(v) for name, v in zip(COCO_STAT_NAMES, stats)}
    metrics["per_class"] = _per_class_ap(coco_eval)
    return metrics, summary


def format_per_class_table(metrics: Mapping[str, Mapping[str, object]], class_names: Mapping[int, str]) -> str:
    """A text table: one row per class with its bbox and segm AP (percent), ``-`` without GT.

    Args:
        metrics: the dict returned by :meth:`COCOEvaluator.evaluate`.
        class_names: category id -> name.
    """
    width = max([len("class")] + [len(n) for n in class_names.values()])
    lines = [f"{'class':<{width}}  {'cat_id':>6}  {'bbox AP':>7}  {'segm AP':>7}"]
    for cat_id, name in class_names.items():
        cells = []
        for iou_type in IOU_TYPES:
            value = metrics[iou_type]["per_class"].get(name)
            cells.append(f"{100.0 * value:7.2f}" if value is not None else f"{'-':>7}")
        lines.append(f"{name:<{width}}  {cat_id:>6}  {cells[0]}  {cells[1]}")
    return "\n".join(lines)


class COCOEvaluator:
    """Accumulates predictions batch by batch and computes COCO bbox + segm metrics.

    Args:
        coco_gt: pycocotools COCO object with the ground truth (e.g. ``COCOSubDataset.coco``).
        cat_ids: the configured classes' category ids in contiguous-label order
            (``cat_ids[i - 1]`` is the category of label i); only these are evaluated.
        image_ids: the evaluated image ids (all images of the split, also those without
            instances). Predictions for other ids are an error.
        mask_thr: threshold of the pasted mask probabilities (``config.mask_thr``).
        label_to_cat_id: optional explicit label -> category id map (defaults to the
            ``cat_ids`` order).
        max_dets: detections per image COCOeval scores (``config.test_max_per_img``).
    """

    def __init__(self, coco_gt: COCO, cat_ids: Sequence[int], image_ids: Sequence[int],
                 mask_thr: float = 0.5, label_to_cat_id: Optional[Mapping[int, int]] = None,
                 max_dets: int = DEFAULT_MAX_DETS):
        self.coco_gt = coco_gt
        self.max_dets = int(max_dets)
        self.cat_ids = [int(c) for c in cat_ids]
        unknown = [c for c in self.cat_ids if c not in coco_gt.cats]
        if unknown:
            raise EvaluationError(f"category ids {unknown} are not in the ground-truth file")
        self.image_ids = [int(i) for i in image_ids]
        missing = [i for i in self.image_ids if i not in coco_gt.imgs]
        if missing:
            raise EvaluationError(f"image ids {missing[:10]} are not in the ground-truth file")
        self.mask_thr = float(mask_thr)
        if label_to_cat_id is None:
            label_to_cat_id = {label: cat for label, cat in enumerate(self.cat_ids, start=1)}
        self.label_to_cat_id = {int(k): int(v) for k, v in label_to_cat_id.items()}
        self.class_names = {c: coco_gt.cats[c]["name"] for c in self.cat_ids}
        self._image_set = set(self.image_ids)
        self.results: List[Dict[str, object]] = []
        self.seen_image_ids: set = set()

    def reset(self) -> None:
        """Forget all accumulated results."""
        self.results = []
        self.seen_image_ids = set()

    def _check_image_id(self, image_id: int) -> None:
        if image_id not in self._image_set:
            raise EvaluationError(f"image id {image_id} is not one of the evaluated images")

    def process(self, batch_predictions: Sequence[np.ndarray], image_ids: Sequence[int],
                image_shapes: np.ndarray) -> None:
        """Add one batch of network predictions.

        Args:
            batch_predictions: (boxes [B,K,4], scores [B,K], labels [B,K], valid [B,K],
                masks [B,K,28,28]) as NumPy arrays or MindSpore Tensors (order of
                ``src.batch.PREDICTION_NAMES``).
            image_ids: [B] COCO image ids; -1 marks a padding image, which is skipped.
            image_shapes: [B, 4] (resized_h, resized_w, scale_h, scale_w).
        """
        if len(batch_predictions) != len(PREDICTION_NAMES):
            raise EvaluationError(f"expected {len(PREDICTION_NAMES)} prediction arrays "
                                  f"{PREDICTION_NAMES}, got {len(batch_predictions)}")
        boxes, scores, labels, valid, masks = (_to_numpy(p) for p in batch_predictions)
        image_ids = _to_numpy(image_ids).reshape(-1)
        image_shapes = _to_numpy(image_shapes).reshape(-1, 4)
        if masks.shape[-1] != MASK_OUT_SIZE:
            logger.debug("masks of side %d (not %d)", masks.shape[-1], MASK_OUT_SIZE)
        for b, image_id in enumerate(image_ids):
            image_id = int(image_id)
            if image_id == PADDING_IMAGE_ID:
                continue
            self._check_image_id(image_id)
            info = self.coco_gt.imgs[image_id]
            self.results.extend(predictions_to_coco(
                image_id, boxes[b], scores[b], labels[b], valid[b], masks[b], image_shapes[b],
                int(info["height"]), int(info["width"]), self.label_to_cat_id, self.mask_thr))
            self.seen_image_ids.add(image_id)

    def add_results(self, image_id: int, results: Iterable[Dict[str, object]]) -> None:
        """Add ready COCO result dicts of one image (e.g. from :func:`detections_to_coco`)."""
        image_id = int(image_id)
        self._check_image_id(image_id)
        for res in results:
            if int(res["image_id"]) != image_id:
                raise EvaluationError(f"result for image {res['image_id']} added as image {image_id}")
            self.results.append(res)
        self.seen_image_ids.add(image_id)

    def evaluate(self) -> Dict[str, object]:
        """COCO metrics of everything processed since the last reset.

        Returns:
            {"bbox": {AP, AP50, AP75, APs, APm, APl, AR1, ..., "per_class": {name: AP}},
             "segm": {...}, "num_images": int, "num_detections": int}. AP values are fractions
            (0..1); a class without ground truth in the evaluated images has AP None. With no
            detections at all every AP is 0.
        """
        not_seen = self._image_set - self.seen_image_ids
        if not_seen:
            logger.warning("%d of %d evaluated images received no predictions (e.g. image %d)",
                           len(not_seen), len(self.image_ids), min(not_seen))
        if not self.results:
            logger.warning("no detections at all: every AP is 0")
        metrics: Dict[str, object] = {}
        for iou_type in IOU_TYPES:
            stats, summary = coco_evaluate(self.coco_gt, self.results, self.cat_ids, self.image_ids, iou_type,
                                           self.max_dets)
            stats["per_class"] = {self.class_names[c]: ap for c, ap in stats["per_class"].items()}
            metrics[iou_type] = stats
            logger.info("COCO %s metrics:\n%s", iou_type, summary)
        metrics["num_images"] = len(self.image_ids)
        metrics["num_detections"] = len(self.results)
        metrics["max_dets"] = self.max_dets
        logger.info("per-class AP:\n%s", format_per_class_table(metrics, self.class_names))
        return metrics


def _to_numpy(value) -> np.ndarray:
    """NumPy view of a NumPy array, list or MindSpore Tensor."""
    if hasattr(value, "asnumpy"):
        return value.asnumpy()
    return np.asarray(value)


# ---------------------------------------------------------------------------------------------
# Inference loop
# ---------------------------------------------------------------------------------------------

def run_inference(net, dataset, progress: bool = True, max_batches: Optional[int] = None
                  ) -> Iterator[Tuple[Tuple[np.ndarray, ...], np.ndarray, np.ndarray]]:
    """Run the network over an eval dataset and yield its predictions batch by batch.

    Args:
        net: the network in inference mode (``net.set_train(False)`` is called here);
            ``net(image, image_shape)`` returns (boxes, scores, labels, valid, masks).
        dataset: a ``mindspore.dataset.Dataset`` with columns image, image_shape, image_id
            (``create_new_dataset(..., is_training=False)``); image_id -1 marks padding.
        progress: show a tqdm progress bar (on stderr).
        max_batches: stop after this many batches (None = all).

    Yields:
        (predictions as a tuple of 5 NumPy arrays, image_ids [B] i32, image_shapes [B, 4] f32).
    """
    import mindspore as ms  # heavy import kept out of module import time
    from tqdm import tqdm

    net.set_train(False)
    total = dataset.get_dataset_size()
    if max_batches is not None:
        total = min(total, max_batches)
    iterator = dataset.create_dict_iterator(num_epochs=1, output_numpy=True)
    with tqdm(total=total, desc="inference", unit="batch", disable=not progress) as bar:
        for index, batch in enumerate(iterator):
            if max_batches is not None and index >= max_batches:
                break
            image_shape = np.asarray(batch["image_shape"], dtype=np.float32)
            outputs = net(ms.Tensor(batch["image"]), ms.Tensor(image_shape))
            predictions = tuple(_to_numpy(o) for o in outputs)
            yield predictions, np.asarray(batch["image_id"]).reshape(-1), image_shape
            bar.update(1)


def evaluate_model(net, dataset, evaluator: COCOEvaluator, progress: bool = True,
                   max_batches: Optional[int] = None) -> Dict[str, object]:
    """Reset ``evaluator``, run ``net`` over ``dataset`` and return ``evaluator.evaluate()``."""
    evaluator.reset()
    for predictions, image_ids, image_shapes in run_inference(net, dataset, progress, max_batches):
        evaluator.process(predictions, image_ids, image_shapes)
    return evaluator.evaluate()


# ---------------------------------------------------------------------------------------------
# Checkpoint for inference, the eval split, and evaluation during training
# ---------------------------------------------------------------------------------------------

def load_inference_checkpoint(net, ckpt_path: str):
    """Load a whole-model checkpoint for inference; anything that does not fit is an error.

    Unlike fine-tuning (``src.checkpoint.load_pretrained`` skips class-dependent layers with a
    different class count, and a backbone-only file leaves the heads at initialisation), inference
    needs every parameter from the file.

    Args:
        net: ``Mask_Rcnn_Resnet50`` built from the config.
        ckpt_path: ``.ckpt`` file written by train.py (or a converted model-zoo Mask R-CNN).

    Returns:
        the ``LoadReport`` of ``load_pretrained``.

    Raises:
        src.checkpoint.CheckpointError: one line naming the file and listing the mismatches.
    """
    from src.checkpoint.io import CheckpointError
    from src.checkpoint.load import load_pretrained

    report = load_pretrained(net, ckpt_path)
    if report.skipped:
        num_classes = getattr(net, "num_classes", None)
        raise CheckpointError(
            f"{ckpt_path}: does not fit the config ({num_classes} classes incl. background); "
            f"class-dependent layers differ: " + "; ".join(str(s) for s in report.skipped)
            + " -- set coco_classes to the classes the checkpoint was trained on")
    if report.left_at_init:
        raise CheckpointError(
            f"{ckpt_path}: holds only a {report.kind} checkpoint; {len(report.left_at_init)} parameters "
            f"of the heads would stay randomly initialised (e.g. {report.left_at_init[0]}); "
            f"evaluate a checkpoint written by train.py")
    return report


def build_eval_split(config, data_root: Optional[str] = None, batch_size: Optional[int] = None,
                     num_parallel_workers: Optional[int] = None):
    """The eval dataset and an evaluator over the whole val split.

    Args:
        config: the run's Config; ``config.val_data_type`` is the split.
        data_root: COCO-format root (default ``config.coco_root``).
        batch_size: default ``config.batch_size``.
        num_parallel_workers: default ``config.num_parallel_workers``.

    Returns:
        (dataset with columns image, image_shape, image_id; COCOEvaluator; COCOSubDataset).
    """
    from src.dataset import COCOSubDataset, create_new_dataset

    root = data_root if data_root is not None else config.coco_root
    sub = COCOSubDataset(root, is_training=False, config=config)
    cat_ids = [sub.label_to_cat_id[label] for label in sorted(sub.label_to_cat_id)]
    evaluator = COCOEvaluator(sub.coco, cat_ids, sub.image_ids, config.mask_thr, sub.label_to_cat_id,
                              max_dets=config.test_max_per_img)
    dataset = create_new_dataset(root, batch_size or config.batch_size, is_training=False,
                                 num_parallel_workers=num_parallel_workers or config.num_parallel_workers,
                                 config=config)
    return dataset, evaluator, sub


# File in the checkpoint folder collecting one JSON line of metrics per evaluation in training.
EVAL_HISTORY_FILE = "eval_metrics.jsonl"
BEST_CKPT_NAME = "best.ckpt"
# Folder in the checkpoint folder with the report page of the best checkpoint (src/report.py).
BEST_REPORT_DIR = "best_report"


class EvalCallback(Callback):
    """Evaluate on the val split every ``interval`` epochs during training; keep the best model.

    Appends ``{"epoch", "bbox_AP", "segm_AP", ...}`` to ``ckpt_dir/eval_metrics.jsonl`` and saves
    ``ckpt_dir/best.ckpt`` (with ``save_fn(net, path)``) whenever segm AP improves, together with
    the report page of that evaluation in ``ckpt_dir/best_report/report.html``.

    Args:
        net: the ``Mask_Rcnn_Resnet50`` being trained (switched to inference for the evaluation
            and back to training after it).
        config: the run's Config.
        ckpt_dir: folder of the run's checkpoints.
        interval: epochs between evaluations (>= 1).
        save_fn: ``save_fn(net, path)``, e.g. ``src.checkpoint.save_checkpoint_atomic``.
    """

    def __init__(self, net, config, ckpt_dir: str, interval: int, save_fn):
        super().__init__()
        if interval < 1:
            raise ValueError(f"EvalCallback: interval must be >= 1, got {interval}")
        self.net = net
        self.config = config
        self.ckpt_dir = ckpt_dir
        self.interval = int(interval)
        self.save_fn = save_fn
        self.best_segm_ap = -math.inf
        self._split = None

    def on_train_epoch_end(self, run_context) -> None:
        import json
        import os

        epoch = int(run_context.original_args().cur_epoch_num)
        if epoch % self.interval:
            return
        if self._split is None:
            self._split = build_eval_split(self.config, num_parallel_workers=1)
        dataset, evaluator, sub = self._split
        try:
            metrics = evaluate_model(self.net, dataset, evaluator, progress=False)
        finally:
            self.net.set_train(True)
        record = {"epoch": epoch}
        for iou_type in IOU_TYPES:
            for name in ("AP", "AP50", "AP75"):
                record[f"{iou_type}_{name}"] = metrics[iou_type][name]
        with open(os.path.join(self.ckpt_dir, EVAL_HISTORY_FILE), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        logger.info("epoch %d: bbox AP %.4f, segm AP %.4f", epoch, record["bbox_AP"], record["segm_AP"])
        if record["segm_AP"] > self.best_segm_ap:
            self.best_segm_ap = record["segm_AP"]
            path = os.path.join(self.ckpt_dir, BEST_CKPT_NAME)
            self.save_fn(self.net, path)
            logger.info("new best segm AP %.4f: saved %s", self.best_segm_ap, path)
            from src.report import write_report

            report = write_report(os.path.join(self.ckpt_dir, BEST_REPORT_DIR), evaluator, metrics, sub.image_dir,
                                  info={"checkpoint": path, "epoch": epoch})
            logger.info("report of the best checkpoint: %s", report)
