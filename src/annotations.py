"""Reading and cleaning COCO annotation files: what one annotation may contain, checked once.

:func:`load_coco_json` reads a COCO annotation file and checks its structure and its ids;
:func:`clean_instance` turns one annotation into a box and a compressed RLE, dropping or
repairing the defects common in real exports (polygon parts with < 3 points or an odd number of
coordinates, zero-area boxes, empty masks, boxes far from their mask), each reported to a
:class:`DefectLog` that counts them (or raises with ``strict_annotations``);
:func:`rasterize` decodes a segmentation to a pixel mask. src/dataset.py builds items from these;
src/importers.py and src/report.py read annotation files with them.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from pycocotools import mask as mask_utils

MIN_POLYGON_POINTS = 3
# A box whose IoU with its mask's extent is below this is replaced by that extent.
BOX_MASK_MIN_IOU = 0.5
# Annotation ids quoted per kind of defect in the summary warning.
DEFECT_EXAMPLES = 3
# Kinds of annotation defect, in the order of the summary: key -> what the count means.
DEFECT_KINDS = {
    "unknown_image": "annotations of unknown image ids dropped",
    "unknown_category": "annotations of unknown category ids dropped",
    "polygon_part": f"polygon parts with < {MIN_POLYGON_POINTS} points or an odd coordinate count dropped",
    "no_segmentation": "annotations without a usable polygon/RLE dropped",
    "zero_area_box": "zero-area boxes dropped",
    "empty_mask": "empty masks dropped",
    "box_from_mask": f"boxes replaced by their mask's extent (IoU < {BOX_MASK_MIN_IOU})",
}


class DatasetError(ValueError):
    """Bad dataset input; the message names the file, image id or annotation id."""


def read_json(path: str, what: str) -> Any:
    """Parse a JSON file; DatasetError "<path>: <what> not found" or "<path>: not valid JSON"."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: {what} not found") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from e


def load_coco_json(ann_file: str) -> Dict[str, Any]:
    """Read a COCO annotation file, checking its structure; DatasetError names what is wrong."""
    data = read_json(ann_file, "annotation file")
    if not isinstance(data, dict):
        raise DatasetError(f"{ann_file}: not a COCO annotation file (top level is a "
                           f"{type(data).__name__}, expected an object)")
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if missing:
        raise DatasetError(f"{ann_file}: not a COCO annotation file (no list '{missing[0]}')")
    for key, fields in (("images", ("id", "file_name", "height", "width")),
                        ("annotations", ("id", "image_id", "category_id", "bbox")),
                        ("categories", ("id", "name"))):
        for k, entry in enumerate(data[key]):
            if not isinstance(entry, dict) or any(f not in entry for f in fields):
                lacking = [f for f in fields if not isinstance(entry, dict) or f not in entry]
                raise DatasetError(f"{ann_file}: not a COCO annotation file ({key}[{k}] has no "
                                   f"'{lacking[0]}')")
    _check_unique_ids(ann_file, data)
    return data


def _check_unique_ids(ann_file: str, data: Dict[str, Any]) -> None:
    """An image listed twice (same id, or same file under two ids) or a reused annotation id
    would be trained on twice or mix two objects' masks; DatasetError names both entries."""
    for key, field_name in (("images", "id"), ("images", "file_name"), ("annotations", "id")):
        first_index: Dict[Any, int] = {}
        for k, entry in enumerate(data[key]):
            value = entry[field_name]
            if not isinstance(value, (int, str)):  # e.g. a list: no hashable id to compare
                raise DatasetError(f"{ann_file}: {key}[{k}] has {field_name} {value!r}; expected a number "
                                   f"or a string")
            if value in first_index:
                j = first_index[value]
                what = (f"image file '{value}' is listed twice, under image ids {data[key][j]['id']} and "
                        f"{entry['id']}" if field_name == "file_name" else f"{key[:-1]} id {value} is used twice")
                raise DatasetError(f"{ann_file}: {what} ({key}[{j}] and {key}[{k}])")
            first_index[value] = k


class DefectLog:
    """Annotation defects of one file: counted with a few example ids, or an error when strict.

    Attributes:
        counts: kind (a key of DEFECT_KINDS) -> annotations dropped or repaired.
        clipped_boxes: boxes that reached outside their image and were clipped to it (allowed
            even when strict; reported apart from the summary).
    """

    def __init__(self, ann_file: str, strict: bool):
        self.ann_file = ann_file
        self.strict = strict
        self.counts = {kind: 0 for kind in DEFECT_KINDS}
        self.examples: Dict[str, List[int]] = {kind: [] for kind in DEFECT_KINDS}
        self.clipped_boxes = 0

    def found(self, kind: str, ann_id: Any, what: str) -> None:
        """Record one defect; ``what`` completes "<file>: " into the strict error message."""
        if self.strict:
            raise DatasetError(f"{self.ann_file}: {what} (strict_annotations is true)")
        self.counts[kind] += 1
        if len(self.examples[kind]) < DEFECT_EXAMPLES:
            self.examples[kind].append(ann_id)

    def summary(self, split: str) -> Optional[str]:
        """One line with every non-zero count and example annotation ids, or None."""
        parts = [f"{self.counts[kind]} {text} (e.g. annotation {', '.join(map(str, self.examples[kind]))})"
                 for kind, text in DEFECT_KINDS.items() if self.counts[kind]]
        if not parts:
            return None
        return (f"{self.ann_file}: split '{split}': " + "; ".join(parts)
                + ". Set strict_annotations: true to make these errors.")


def _clean_segmentation(ann: Dict[str, Any], defects: DefectLog) -> Optional[Any]:
    """The usable part of an annotation's segmentation, or None (each problem goes to ``defects``).

    Polygon parts with fewer than MIN_POLYGON_POINTS points, an odd number of coordinates or
    non-numeric values are dropped; an RLE needs 'counts' and 'size'.
    """
    segm = ann.get("segmentation")
    where = f"annotation {ann['id']} (image {ann['image_id']})"
    if isinstance(segm, list):
        parts = []
        for poly in segm:
            numeric = isinstance(poly, list) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in poly)
            if not numeric:
                defects.found("polygon_part", ann["id"], f"{where} has a polygon part that is not a list "
                                                         f"of numbers")
            elif len(poly) % 2:
                defects.found("polygon_part", ann["id"], f"{where} has a polygon with an odd number of "
                                                         f"coordinates ({len(poly)})")
            elif len(poly) < 2 * MIN_POLYGON_POINTS:
                defects.found("polygon_part", ann["id"], f"{where} has a polygon with {len(poly) // 2} "
                                                         f"points (need at least {MIN_POLYGON_POINTS})")
            else:
                parts.append(poly)
        if not parts:
            if not segm:
                defects.found("no_segmentation", ann["id"], f"{where} has an empty polygon list")
            else:
                defects.found("no_segmentation", ann["id"], f"{where} has no polygon part left")
            return None
        return parts
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            defects.found("no_segmentation", ann["id"], f"{where} has an RLE segmentation without "
                                                        f"'counts'/'size'")
            return None
        return segm
    defects.found("no_segmentation", ann["id"], f"{where} has no polygon or RLE segmentation")
    return None


def to_rle(segmentation: Any, height: int, width: int) -> Dict[str, Any]:
    """COCO polygon list / uncompressed RLE / compressed RLE -> compressed RLE (bytes counts).

    Raises:
        ValueError: an RLE whose size is not ``[height, width]``, or one pycocotools rejects.
    """
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    size = [int(v) for v in segmentation["size"]]
    if size != [height, width]:
        raise ValueError(f"RLE size {size[0]}x{size[1]} is not the image size {height}x{width}")
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    counts = segmentation["counts"]
    return {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def rasterize(segmentation: Any, height: int, width: int) -> np.ndarray:
    """COCO polygon list / uncompressed RLE / compressed RLE -> [height, width] uint8 mask.

    Raises:
        ValueError: as :func:`to_rle`.
    """
    return mask_utils.decode(to_rle(segmentation, height, width))


def _iou_xyxy(a: Sequence[float], b: Sequence[float]) -> float:
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def clean_instance(ann: Dict[str, Any], height: int, width: int, defects: DefectLog
                   ) -> Optional[Tuple[Tuple[float, float, float, float], Dict[str, Any]]]:
    """The box and mask of one annotation of a ``height x width`` image, or None if unusable.

    The box is clipped to the image (counted in ``defects.clipped_boxes``); one whose IoU with its mask's extent is below
    BOX_MASK_MIN_IOU is replaced by that extent. Zero-area boxes, unusable segmentations and
    empty masks drop the annotation. Each defect goes to ``defects``.

    Args:
        ann: one entry of the file's ``annotations`` (with ``id``, ``image_id``, ``bbox``).
        height, width: the image size from the file's ``images``.
        defects: the file's DefectLog (its ``ann_file`` names the file in errors).

    Returns:
        ``((x1, y1, x2, y2) in original-image pixels, compressed RLE)``, or None.

    Raises:
        DatasetError: ``bbox`` is not a list of 4 values.
    """
    where = f"annotation {ann['id']} (image {ann['image_id']})"
    bbox = ann["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise DatasetError(f"{defects.ann_file}: {where} has bbox {bbox!r}; expected [x, y, w, h]")
    h, w = float(height), float(width)
    x, y, bw, bh = (float(v) for v in bbox)
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + bw, w), min(y + bh, h)
    if (not all(math.isfinite(v) for v in (x, y, bw, bh)) or bw <= 0 or bh <= 0
            or x2 - x1 <= 0 or y2 - y1 <= 0):
        defects.found("zero_area_box", ann["id"], f"{where} has a zero-area box {bbox} "
                                                  f"(inside the {width}x{height} image)")
        return None
    if (x1, y1, x2, y2) != (x, y, x + bw, y + bh):
        defects.clipped_boxes += 1
    segm = _clean_segmentation(ann, defects)
    if segm is None:
        return None
    try:
        rle = to_rle(segm, height, width)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        defects.found("no_segmentation", ann["id"], f"{where} has a segmentation that cannot "
                                                    f"be rasterised: {e}")
        return None
    if float(mask_utils.area(rle)) <= 0:
        defects.found("empty_mask", ann["id"], f"{where} has an empty mask")
        return None
    mx, my, mw, mh = (float(v) for v in mask_utils.toBbox(rle))
    mask_box = (mx, my, mx + mw, my + mh)
    iou = _iou_xyxy((x1, y1, x2, y2), mask_box)
    if iou < BOX_MASK_MIN_IOU:
        defects.found("box_from_mask", ann["id"],
                      f"{where} has bbox {bbox} far from its mask's extent "
                      f"{[round(v, 1) for v in (mx, my, mw, mh)]} (IoU {iou:.2f})")
        x1, y1, x2, y2 = mask_box
    return (x1, y1, x2, y2), rle
