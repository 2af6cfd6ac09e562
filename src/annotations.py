"""Reading and cleaning COCO annotation files: what one annotation may contain, checked once.

:func:`load_coco_json` reads a COCO annotation file and checks its structure and its ids;
:func:`clean_instance` turns one annotation into a box and a compressed RLE, dropping or
repairing the defects common in real exports (polygon parts with < 3 points, an odd number of
coordinates, values that are not finite numbers (NaN, Infinity, null) or coordinates far outside
the image, zero-area boxes, empty masks, boxes far from their mask), each reported to a
:class:`DefectLog` that counts them (or raises with ``strict_annotations``); :func:`rasterize`
decodes a segmentation to a pixel mask.

:func:`read_annotations` is the one reader of an annotation file: training (src/dataset.py),
evaluation (which scores against :meth:`CleanAnnotations.to_coco`, the same cleaned and counted
instances training uses), the inspector and the importers all read through it. Every coordinate,
size and area is checked for finite, bounded values here, before pycocotools sees it (a
coordinate of 1e9 crashes its polygon rasteriser; a NaN makes it allocate without end).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from pycocotools import mask as mask_utils

from src.image_header import QUARTER_TURN_ORIENTATIONS, orient_array, orient_points

MIN_POLYGON_POINTS = 3
# Columns of one cleaned instance row: x1, y1, x2, y2, label, iscrowd.
ANNO_COLUMNS = 6
# A box whose IoU with its mask's extent is below this is replaced by that extent.
BOX_MASK_MIN_IOU = 0.5
# Annotation ids quoted per kind of defect in the summary warning.
DEFECT_EXAMPLES = 3
# Coordinates may reach this many image sides outside the image (clipped later); farther ones
# (e.g. 1e9, which crashes pycocotools' polygon rasteriser) are defects.
COORDINATE_MARGIN_SIDES = 1.0
# Largest image side accepted from an annotation file (JPEG's own limit).
MAX_IMAGE_SIDE = 65535
# Kinds of annotation defect, in the order of the summary: key -> what the count means.
DEFECT_KINDS = {
    "unknown_image": "annotations of unknown image ids dropped",
    "unknown_category": "annotations of unknown category ids dropped",
    "polygon_part": f"polygon parts with < {MIN_POLYGON_POINTS} points, an odd coordinate count or values "
                    f"that are not numbers dropped",
    "non_finite": "polygon parts or boxes with a value that is not a finite number (NaN, Infinity, null) dropped",
    "out_of_range": "polygon parts or boxes with coordinates more than one image side outside the image dropped",
    "flat_polygon": "flat polygon lists [x, y, ...] read as one polygon",
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
    for k, info in enumerate(data["images"]):
        info["height"] = _image_side(ann_file, k, info, "height")
        info["width"] = _image_side(ann_file, k, info, "width")
    return data


def _check_unique_ids(ann_file: str, data: Dict[str, Any]) -> None:
    """An image listed twice (same id, or same file under two ids), a reused annotation id or a
    category table with a repeated id or name would be trained on twice, mix two objects' masks
    or lose instances silently; DatasetError names both entries."""
    for key, field_name in (("images", "id"), ("images", "file_name"), ("annotations", "id"),
                            ("categories", "id"), ("categories", "name")):
        first_index: Dict[Any, int] = {}
        for k, entry in enumerate(data[key]):
            value = entry[field_name]
            if not isinstance(value, (int, str)):  # e.g. a list: no hashable id to compare
                raise DatasetError(f"{ann_file}: {key}[{k}] has {field_name} {value!r}; expected a number "
                                   f"or a string")
            if value in first_index:
                j = first_index[value]
                first = data[key][j]
                if key == "categories":
                    what = (f"category name '{value}' is used twice, under category ids {first['id']} and "
                            f"{entry['id']}" if field_name == "name" else
                            f"category id {value} is used twice, for '{first['name']}' and '{entry['name']}'")
                elif field_name == "file_name":
                    what = f"image file '{value}' is listed twice, under image ids {first['id']} and {entry['id']}"
                else:
                    what = f"{key[:-1]} id {value} is used twice"
                raise DatasetError(f"{ann_file}: {what} ({key}[{j}] and {key}[{k}])")
            first_index[value] = k


def _image_side(ann_file: str, index: int, info: Dict[str, Any], key: str) -> int:
    """``info[key]`` (height or width) as an int in 1..MAX_IMAGE_SIDE; a whole number written as a
    string or a float is accepted, anything else is a DatasetError naming the image."""
    value = info[key]
    number: Optional[float] = None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    if number is None or not math.isfinite(number) or number != int(number) or not 1 <= number <= MAX_IMAGE_SIDE:
        raise DatasetError(f"{ann_file}: images[{index}] (id {info['id']}, {info['file_name']}) has {key} "
                           f"{value!r}; expected a whole number of pixels from 1 to {MAX_IMAGE_SIDE}")
    return int(number)


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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_number_or_null(value: Any) -> bool:
    """A number, or JSON's null (what JavaScript exporters write for NaN and Infinity)."""
    return value is None or _is_number(value)


def _not_finite(value: Any) -> bool:
    """A NaN or infinite number, or None: JSON's null, which JavaScript writes for NaN and Infinity."""
    return value is None or (_is_number(value) and not math.isfinite(value))


def _in_range(values: Sequence[float], height: int, width: int) -> bool:
    """All finite, x within COORDINATE_MARGIN_SIDES image widths of the image, y likewise."""
    margin_x, margin_y = COORDINATE_MARGIN_SIDES * width, COORDINATE_MARGIN_SIDES * height
    xs, ys = values[0::2], values[1::2]
    return (all(math.isfinite(v) for v in values)
            and all(-margin_x <= x <= width + margin_x for x in xs)
            and all(-margin_y <= y <= height + margin_y for y in ys))


def _clean_polygons(segm: List[Any], where: str, ann_id: Any, height: int, width: int,
                    defects: DefectLog) -> Optional[List[List[float]]]:
    if segm and all(_is_number_or_null(v) for v in segm):  # [x, y, x, y, ...]: one polygon, unnested
        defects.found("flat_polygon", ann_id, f"{where} has a flat polygon list instead of a list of polygons")
        segm = [segm]
    parts = []
    for poly in segm:
        if not (isinstance(poly, list) and all(_is_number_or_null(v) for v in poly)):
            defects.found("polygon_part", ann_id, f"{where} has a polygon part that is not a list of numbers")
        elif non_finite := [v for v in poly if _not_finite(v)]:
            defects.found("non_finite", ann_id, f"{where} has a polygon coordinate that is not a finite number "
                                                f"({json.dumps(non_finite[0])})")
        elif len(poly) % 2:
            defects.found("polygon_part", ann_id, f"{where} has a polygon with an odd number of "
                                                  f"coordinates ({len(poly)})")
        elif len(poly) < 2 * MIN_POLYGON_POINTS:
            defects.found("polygon_part", ann_id, f"{where} has a polygon with {len(poly) // 2} "
                                                  f"points (need at least {MIN_POLYGON_POINTS})")
        elif not _in_range(poly, height, width):
            defects.found("out_of_range", ann_id, f"{where} has a polygon coordinate more than one image side "
                                                  f"outside the {width}x{height} image")
        else:
            parts.append([float(v) for v in poly])
    if not parts:
        defects.found("no_segmentation", ann_id, f"{where} has " + ("an empty polygon list" if not segm
                                                                    else "no polygon part left"))
        return None
    return parts


def _clean_rle(segm: Dict[str, Any], where: str, ann_id: Any, height: int, width: int,
               defects: DefectLog) -> Optional[Dict[str, Any]]:
    size, counts = segm.get("size"), segm.get("counts")
    if counts is None or size is None:
        defects.found("no_segmentation", ann_id, f"{where} has an RLE segmentation without 'counts'/'size'")
        return None
    if not (isinstance(size, list) and len(size) == 2 and all(_is_number(v) for v in size)
            and [int(v) for v in size] == [height, width]):
        defects.found("no_segmentation", ann_id, f"{where} has an RLE of size {size!r}, not the image size "
                                                 f"[{height}, {width}]")
        return None
    if isinstance(counts, list):
        if not (all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)
                and sum(counts) == height * width):
            defects.found("no_segmentation", ann_id, f"{where} has RLE counts that are not whole numbers "
                                                     f"adding up to {height}x{width} pixels")
            return None
    elif not isinstance(counts, (str, bytes)):
        defects.found("no_segmentation", ann_id, f"{where} has RLE counts {type(counts).__name__}")
        return None
    elif _compressed_rle_total(counts) != height * width:
        defects.found("no_segmentation", ann_id, f"{where} has compressed RLE counts that do not cover "
                                                 f"exactly the {width}x{height} image")
        return None
    return {"size": [height, width], "counts": counts}


def _compressed_rle_total(counts: Any) -> Optional[int]:
    """Pixels covered by a compressed RLE string (pycocotools' format: runs in 5-bit groups of
    characters from '0', the runs after the second stored as differences to the run two back),
    or None if a run is negative or the string is malformed. pycocotools' decoder trusts the
    total: runs past the image write past its buffer."""
    text = counts.decode("ascii", "replace") if isinstance(counts, bytes) else counts
    runs: List[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                return None
            code = ord(text[pos]) - 48
            if not 0 <= code < 64:
                return None
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            pos += 1
            shift += 5
            if not more and code & 0x10:
                value -= 1 << shift  # sign bit of the last group
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            return None
        runs.append(value)
    return sum(runs)


def _clean_segmentation(ann: Dict[str, Any], height: int, width: int, defects: DefectLog) -> Optional[Any]:
    """The usable part of an annotation's segmentation, or None (each problem goes to ``defects``).

    Polygon parts with fewer than MIN_POLYGON_POINTS points, an odd number of coordinates,
    non-numeric values, values that are not finite numbers (NaN, Infinity, null) or coordinates
    more than COORDINATE_MARGIN_SIDES image sides outside the image are dropped; a flat list of
    numbers is read as one polygon; an RLE needs 'counts' and the image's 'size' (uncompressed counts must
    cover exactly the image).
    """
    segm = ann.get("segmentation")
    where = f"annotation {ann['id']} (image {ann['image_id']})"
    if isinstance(segm, list):
        return _clean_polygons(segm, where, ann["id"], height, width, defects)
    if isinstance(segm, dict):
        return _clean_rle(segm, where, ann["id"], height, width, defects)
    defects.found("no_segmentation", ann["id"], f"{where} has no polygon or RLE segmentation")
    return None


def to_rle(segmentation: Any, height: int, width: int) -> Dict[str, Any]:
    """COCO polygon list / uncompressed RLE / compressed RLE -> compressed RLE (bytes counts).

    Only for segmentations already checked by :func:`clean_instance` (pycocotools trusts its
    input: a polygon coordinate of 1e9 crashes it).

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


def _box_values(bbox: Any, where: str, defects: DefectLog) -> Tuple[float, float, float, float]:
    """``bbox``'s four values as floats (numeric strings read, null read as NaN).

    Raises:
        DatasetError: not a list of 4 numbers, numeric strings or nulls.
    """
    if (not isinstance(bbox, list) or len(bbox) != 4
            or not all(_is_number_or_null(v) or isinstance(v, str) for v in bbox)):
        raise DatasetError(f"{defects.ann_file}: {where} has bbox {bbox!r}; expected [x, y, w, h]")
    try:
        x, y, bw, bh = (math.nan if v is None else float(v) for v in bbox)
    except ValueError as e:
        raise DatasetError(f"{defects.ann_file}: {where} has bbox {bbox!r}; expected [x, y, w, h] "
                           f"numbers") from e
    return x, y, bw, bh


def clean_instance(ann: Dict[str, Any], height: int, width: int, defects: DefectLog
                   ) -> Optional[Tuple[Tuple[float, float, float, float], Dict[str, Any]]]:
    """The box and mask of one annotation of a ``height x width`` image, or None if unusable.

    The box is clipped to the image (counted in ``defects.clipped_boxes``); one whose IoU with its
    mask's extent is below BOX_MASK_MIN_IOU is replaced by that extent. Boxes with a value that is
    not a finite number (NaN, Infinity, null) or far outside the image, zero-area boxes, unusable
    segmentations and empty masks drop the annotation. Each defect goes to ``defects``.

    Args:
        ann: one entry of the file's ``annotations`` (with ``id``, ``image_id``, ``bbox``).
        height, width: the image size from the file's ``images``.
        defects: the file's DefectLog (its ``ann_file`` names the file in errors).

    Returns:
        ``((x1, y1, x2, y2) in original-image pixels, compressed RLE)``, or None.

    Raises:
        DatasetError: ``bbox`` is not a list of 4 numbers.
    """
    where = f"annotation {ann['id']} (image {ann['image_id']})"
    bbox = ann["bbox"]
    x, y, bw, bh = _box_values(bbox, where, defects)
    if not all(math.isfinite(v) for v in (x, y, bw, bh)):
        defects.found("non_finite", ann["id"], f"{where} has bbox {json.dumps(bbox)} with a value that is not a "
                                               f"finite number")
        return None
    if not _in_range([x, y, x + bw, y + bh], height, width):
        defects.found("out_of_range", ann["id"], f"{where} has bbox {bbox} reaching more than one image side "
                                                 f"outside the {width}x{height} image")
        return None
    h, w = float(height), float(width)
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + bw, w), min(y + bh, h)
    if bw <= 0 or bh <= 0 or x2 - x1 <= 0 or y2 - y1 <= 0:
        defects.found("zero_area_box", ann["id"], f"{where} has a zero-area box {bbox} "
                                                  f"(inside the {width}x{height} image)")
        return None
    if (x1, y1, x2, y2) != (x, y, x + bw, y + bh):
        defects.clipped_boxes += 1
    segm = _clean_segmentation(ann, height, width, defects)
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


# ---------------------------------------------------------------------------------------------
# The one reader: a file -> cleaned, counted instances per image
# ---------------------------------------------------------------------------------------------

@dataclass
class CleanImage:
    """One image of a cleaned annotation file.

    Attributes:
        info: ``{"id", "file_name", "height", "width"}`` (sizes as ints).
        rows: [n, ANNO_COLUMNS] f32 (x1, y1, x2, y2, label, iscrowd) in image pixels: real
            instances by area (the file's if usable, else the box's; largest first), then crowd regions (ties by annotation id).
        rles: the compressed RLE (bytes counts) of each row.
        ann_ids: the annotation id of each row.
    """

    info: Dict[str, Any]
    rows: np.ndarray
    rles: List[Dict[str, Any]]
    ann_ids: List[Any]

    @property
    def num_instances(self) -> int:
        """Real (non-crowd) instances."""
        return int((self.rows[:, 5] == 0).sum())


@dataclass
class CleanAnnotations:
    """What :func:`read_annotations` returns: every image of the file with its cleaned instances.

    Attributes:
        ann_file: the file read.
        class_names: the classes read, label 1.. in this order.
        label_to_cat_id: label -> the file's category id.
        images: one CleanImage per image of the file, by image id.
        defects: the file's DefectLog (counts of what was dropped or repaired).
    """

    ann_file: str
    class_names: List[str]
    label_to_cat_id: Dict[int, Any]
    images: List[CleanImage]
    defects: DefectLog

    def to_coco(self, images: Optional[Sequence[CleanImage]] = None) -> Dict[str, Any]:
        """A COCO annotation dict pycocotools reads (JSON-serialisable) of ``images`` (default all).

        Boxes are the cleaned ``[x, y, w, h]``, segmentations compressed RLE (str counts),
        ``area`` the mask area, ``iscrowd`` 0/1; categories are the read classes with their ids.
        """
        annotations = []
        for image in self.images if images is None else images:
            for row, rle, ann_id in zip(image.rows, image.rles, image.ann_ids):
                x1, y1, x2, y2, label, crowd = (float(v) for v in row)
                counts = rle["counts"]
                annotations.append({
                    "id": ann_id, "image_id": image.info["id"],
                    "category_id": self.label_to_cat_id[int(label)],
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(mask_utils.area(rle)),
                    "iscrowd": int(crowd),
                    "segmentation": {"size": [int(v) for v in rle["size"]],
                                     "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}})
        return {"images": [dict(image.info) for image in (self.images if images is None else images)],
                "annotations": annotations,
                "categories": [{"id": cat_id, "name": name}
                               for name, cat_id in zip(self.class_names, self._cat_ids())]}

    def _cat_ids(self) -> List[Any]:
        return [self.label_to_cat_id[label] for label in range(1, len(self.class_names) + 1)]


def defect_text(counts: Dict[str, int]) -> str:
    """``"2 zero-area boxes dropped; ..."`` for the non-zero counts, or ``"none"``."""
    parts = [f"{counts[kind]} {DEFECT_KINDS[kind]}" for kind in DEFECT_KINDS if counts.get(kind)]
    return "; ".join(parts) or "none"


def read_annotations(ann_file: str, class_names: Optional[Sequence[str]] = None,
                     strict: bool = False) -> CleanAnnotations:
    """Read and clean a COCO annotation file: the one reader of training, evaluation and tools.

    Args:
        ann_file: COCO JSON path.
        class_names: classes to keep, matched by category name, label 1.. in this order; None
            keeps every category of the file in its order.
        strict: defects are DatasetErrors instead of being dropped/repaired and counted.

    Returns:
        CleanAnnotations with every image of the file (also those without instances).

    Raises:
        DatasetError: structure, ids, category table, image sizes or a requested class absent.
    """
    data = load_coco_json(ann_file)
    name_to_cat = {cat["name"]: cat["id"] for cat in data["categories"]}
    names = list(name_to_cat) if class_names is None else list(class_names)
    absent = [name for name in names if name not in name_to_cat]
    if absent:
        raise DatasetError(f"{ann_file}: category '{absent[0]}' is not in the file; "
                           f"available: {', '.join(sorted(name_to_cat))}")
    label_to_cat_id = {label: name_to_cat[name] for label, name in enumerate(names, 1)}
    cat_id_to_label = {cat_id: label for label, cat_id in label_to_cat_id.items()}
    defects = DefectLog(ann_file, strict)
    images = {img["id"]: img for img in data["images"]}
    known_cats = set(name_to_cat.values())
    per_image: Dict[Any, List[Dict[str, Any]]] = {img_id: [] for img_id in images}
    for ann in data["annotations"]:
        if ann["image_id"] not in images:
            defects.found("unknown_image", ann["id"], f"annotation {ann['id']} refers to image id "
                                                      f"{ann['image_id']}, which is not in 'images'")
        elif ann["category_id"] not in known_cats:
            defects.found("unknown_category", ann["id"],
                          f"annotation {ann['id']} (image {ann['image_id']}) has category id "
                          f"{ann['category_id']}, which is not in 'categories'")
        elif ann["category_id"] in cat_id_to_label:
            per_image[ann["image_id"]].append(ann)
    cleaned = []
    for img_id in sorted(images, key=lambda i: (str(type(i)), i)):
        info = images[img_id]
        height, width = info["height"], info["width"]
        kept = []
        for ann in per_image[img_id]:
            instance = clean_instance(ann, height, width, defects)
            if instance is None:
                continue
            box, rle = instance
            crowd = 1 if ann.get("iscrowd", 0) else 0
            row = [*box, float(cat_id_to_label[ann["category_id"]]), float(crowd)]
            area = ann.get("area")
            if not (_is_number(area) and math.isfinite(area) and area > 0):
                area = (box[2] - box[0]) * (box[3] - box[1])
            kept.append((crowd, -float(area), ann["id"], row, rle))
        kept.sort(key=lambda t: t[:3])
        cleaned.append(CleanImage(
            {"id": img_id, "file_name": info["file_name"], "height": height, "width": width},
            np.array([k[3] for k in kept], np.float32).reshape(-1, ANNO_COLUMNS),
            [k[4] for k in kept], [k[2] for k in kept]))
    return CleanAnnotations(ann_file, names, label_to_cat_id, cleaned, defects)


def reorient_image(image: CleanImage, orientation: int) -> CleanImage:
    """``image`` annotated on the stored pixels of a photo with EXIF ``orientation`` -> the same
    instances on the upright image (what a viewer shows and OpenCV decodes; src/image_header.py)."""
    height, width = image.info["height"], image.info["width"]
    rows = image.rows.copy()
    rles = []
    for k, rle in enumerate(image.rles):
        corners = orient_points(rows[k, :4].reshape(2, 2).astype(np.float64), orientation, height, width)
        rows[k, :2], rows[k, 2:4] = corners.min(axis=0), corners.max(axis=0)
        mask = orient_array(mask_utils.decode(rle), orientation)
        rles.append(mask_utils.encode(np.asfortranarray(mask)))
    upright = dict(image.info)
    if orientation in QUARTER_TURN_ORIENTATIONS:
        upright["height"], upright["width"] = width, height
    return CleanImage(upright, rows, rles, list(image.ann_ids))
