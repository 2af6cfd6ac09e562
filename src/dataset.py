"""COCO-format instance-segmentation data for training and evaluation.

:class:`COCOSubDataset` reads one split of a COCO-format folder restricted to the classes of
``config.coco_classes[1:]`` (matched by name) and returns raw items in original-image pixels;
:func:`create_new_dataset` wraps it in a ``mindspore.dataset.GeneratorDataset`` whose workers
decode, rasterise the masks and preprocess (src/transforms.py), then batches with static shapes
(the batch contract of src/batch.py).

Everything cheap is checked when the dataset is built (JSON structure, category names, image
ids, polygons, boxes, masks, image files and their headers) so that bad input fails at once with
a one-line :class:`DatasetError`; image decoding and mask decoding happen lazily per item.

Annotation defects common in real exports (polygon parts with < 3 points or an odd number of
coordinates, zero-area boxes, empty masks, boxes far from their mask, annotations of unknown
images or categories) are dropped or repaired and counted in one warning per split, or are
errors with ``strict_annotations: true``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from src.batch import EVAL_COLUMNS, TRAIN_COLUMNS
from src.config import Config, load_config, resolve_path
from src import augment, transforms
from src.image_header import ImageHeaderError, read_image_size

LOGGER = logging.getLogger(__name__)

# Image id of the padding items that complete the last evaluation batch (the evaluator skips it).
PAD_IMAGE_ID = -1
# Columns of one raw item (annos rows are x1, y1, x2, y2, label, iscrowd).
ANNO_COLUMNS = 6
MIN_POLYGON_POINTS = 3
# A box whose IoU with its mask's extent is below this is replaced by that extent.
BOX_MASK_MIN_IOU = 0.5
# Annotation ids quoted per kind of defect in the summary warning.
DEFECT_EXAMPLES = 3
# Kinds of annotation defect, in the order of the summary: key -> what the count means.
DEFECT_KINDS = {
    "unknown_image": "annotations of unknown image ids dropped",
    "unknown_category": "annotations of unknown category ids dropped",
    "polygon_part": "polygon parts with < 3 points or an odd coordinate count dropped",
    "no_segmentation": "annotations without a usable polygon/RLE dropped",
    "zero_area_box": "zero-area boxes dropped",
    "empty_mask": "empty masks dropped",
    "box_from_mask": f"boxes replaced by their mask's extent (IoU < {BOX_MASK_MIN_IOU})",
}


class DatasetError(ValueError):
    """Bad dataset input; the message names the file, image id or annotation id."""


@dataclass
class _ImageRecord:
    """What one item needs, small enough to pickle to the workers."""

    image_id: int
    path: str
    height: int
    width: int
    annos: np.ndarray  # [n, 6] f32, real instances (largest first) then crowd regions
    segmentations: List[Any]  # compressed RLE (bytes counts) of each row of annos
    ann_ids: List[int]


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


class _DefectLog:
    """Annotation defects of one file: counted with a few example ids, or an error when strict."""

    def __init__(self, ann_file: str, strict: bool):
        self.ann_file = ann_file
        self.strict = strict
        self.counts = {kind: 0 for kind in DEFECT_KINDS}
        self.examples: Dict[str, List[int]] = {kind: [] for kind in DEFECT_KINDS}

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


def _clean_segmentation(ann: Dict[str, Any], defects: _DefectLog) -> Optional[Any]:
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


def _iou_xyxy(a: Sequence[float], b: Sequence[float]) -> float:
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def rasterize(segmentation: Any, height: int, width: int) -> np.ndarray:
    """COCO polygon list / uncompressed RLE / compressed RLE -> [height, width] uint8 mask."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
        if isinstance(rle["counts"], str):
            rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return mask_utils.decode(rle)


class COCOSubDataset:
    """One split of a COCO-format folder, restricted to ``config.coco_classes[1:]``.

    Args:
        coco_root: folder with ``<split>/`` images and ``annotations/`` (default config.coco_root).
        is_training: split = ``config.train_data_type`` (images without an instance of the chosen
            classes are skipped and counted) or ``config.val_data_type`` (all images kept).
        config: the run's Config (default: FineTune/default.yaml).

    Attributes:
        label_to_cat_id: contiguous label 1.. (order of coco_classes[1:]) -> file category id.
        cat_id_to_label: the inverse.
        class_names: coco_classes[1:].
        image_ids: COCO image ids in item order.
        coco: the pycocotools COCO object of the whole file.
        ann_file, image_dir: paths.
        uncut_rows: image id -> [n, 6] f32 rows of every kept image before the
            max_instance_count cut (real instances by area desc, then crowd regions).
        defect_counts: kind (a key of DEFECT_KINDS) -> annotations dropped or repaired.

    ``ds[i]`` -> ``(img bytes [L] u8, annos [n, 6] f32 (x1, y1, x2, y2, label, iscrowd),
    mask [n, h, w] u8, mask_shape [2] i32 (h, w))`` in original-image pixels, with at most
    ``config.max_instance_count`` rows: real instances (largest first), then crowd regions.
    """

    def __init__(self, coco_root: Optional[str] = None, is_training: bool = True,
                 config: Optional[Config] = None):
        self.config = config if config is not None else load_config()
        self.is_training = is_training
        root = resolve_path(coco_root if coco_root is not None else self.config.coco_root)
        split = self.config.train_data_type if is_training else self.config.val_data_type
        self.split = split
        self.image_dir = os.path.join(root, split)
        self.ann_file = os.path.join(root, self.config.instance_set.format(split))
        data = load_coco_json(self.ann_file)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()

        self.class_names = list(self.config.coco_classes[1:])
        name_to_cat = {}
        for cat in data["categories"]:
            name_to_cat.setdefault(cat["name"], cat["id"])
        absent = [name for name in self.class_names if name not in name_to_cat]
        if absent:
            raise DatasetError(f"{self.ann_file}: category '{absent[0]}' is not in the file; "
                               f"available: {', '.join(sorted(name_to_cat))}")
        self.label_to_cat_id = {label: name_to_cat[name] for label, name in enumerate(self.class_names, 1)}
        self.cat_id_to_label = {cat_id: label for label, cat_id in self.label_to_cat_id.items()}
        self._records = self._build_records(data)
        self.image_ids = [rec.image_id for rec in self._records]

    # -- building -------------------------------------------------------------------------------
    def _build_records(self, data: Dict[str, Any]) -> List[_ImageRecord]:
        defects = _DefectLog(self.ann_file, self.config.strict_annotations)
        images = {img["id"]: img for img in data["images"]}
        known_cats = {cat["id"] for cat in data["categories"]}
        per_image: Dict[int, List[Dict[str, Any]]] = {img_id: [] for img_id in images}
        for ann in data["annotations"]:
            if ann["image_id"] not in images:
                defects.found("unknown_image", ann["id"], f"annotation {ann['id']} refers to image id "
                                                          f"{ann['image_id']}, which is not in 'images'")
            elif ann["category_id"] not in known_cats:
                defects.found("unknown_category", ann["id"],
                              f"annotation {ann['id']} (image {ann['image_id']}) has category id "
                              f"{ann['category_id']}, which is not in 'categories'")
            elif ann["category_id"] in self.cat_id_to_label:
                per_image[ann["image_id"]].append(ann)

        counts = {"clipped": 0, "too_many": 0, "no_instance": 0}
        most = 0
        records = []
        # Rows [n, 6] of every kept image before the max_instance_count cut (src/inspect_data.py).
        self.uncut_rows: Dict[int, np.ndarray] = {}
        for img_id in sorted(images):
            info = images[img_id]
            rows, segms, ann_ids = self._image_rows(info, per_image[img_id], counts, defects)
            n_real = sum(1 for r in rows if r[5] == 0)
            if self.is_training and n_real == 0:
                counts["no_instance"] += 1
                continue
            self.uncut_rows[img_id] = np.array(rows, np.float32).reshape(-1, ANNO_COLUMNS)
            limit = self.config.max_instance_count
            if len(rows) > limit:
                counts["too_many"] += 1
                most = max(most, len(rows))
                rows, segms, ann_ids = rows[:limit], segms[:limit], ann_ids[:limit]
            path = os.path.join(self.image_dir, info["file_name"])
            self._check_image_file(path, img_id, int(info["height"]), int(info["width"]))
            annos = np.array(rows, np.float32).reshape(-1, ANNO_COLUMNS)
            records.append(_ImageRecord(img_id, path, int(info["height"]), int(info["width"]),
                                        annos, segms, ann_ids))
        summary = defects.summary(self.split)
        self.defect_counts = dict(defects.counts)
        if summary:
            LOGGER.warning("%s", summary)
        if counts["clipped"]:
            LOGGER.warning("%s: clipped %d boxes that reached outside their image", self.ann_file,
                           counts["clipped"])
        if counts["too_many"]:
            LOGGER.warning("%s: %d images have more than max_instance_count=%d instances (up to %d); "
                           "the largest were kept", self.ann_file, counts["too_many"],
                           self.config.max_instance_count, most)
        if counts["no_instance"]:
            LOGGER.info("%s: skipped %d training images with no instance of %s", self.ann_file,
                        counts["no_instance"], self.class_names)
        if not records:
            raise DatasetError(f"{self.ann_file}: no images left for split '{self.split}' with classes "
                               f"{self.class_names} ({len(images)} images in the file)")
        return records

    @staticmethod
    def _check_image_file(path: str, img_id: int, height: int, width: int) -> None:
        """Exists, has an image header OpenCV can read and the size the JSON gives."""
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: image file not found (image id {img_id})")
        try:
            size = read_image_size(path)
        except (OSError, ImageHeaderError) as e:
            raise DatasetError(f"{path}: corrupt or unreadable image (image id {img_id}): {e}") from e
        if size is not None and size != (height, width):
            raise DatasetError(f"{path}: image is {size[0]}x{size[1]} but the annotation file says "
                               f"{height}x{width} (image id {img_id})")

    def _image_rows(self, info: Dict[str, Any], anns: List[Dict[str, Any]], counts: Dict[str, int],
                    defects: _DefectLog):
        """Rows (x1, y1, x2, y2, label, iscrowd), compressed RLEs and annotation ids of one image:
        real instances by area desc, then crowd regions."""
        height, width = int(info["height"]), int(info["width"])
        h, w = float(height), float(width)
        kept = []
        for ann in anns:
            where = f"annotation {ann['id']} (image {info['id']})"
            bbox = ann["bbox"]
            if not isinstance(bbox, list) or len(bbox) != 4:
                raise DatasetError(f"{self.ann_file}: {where} has bbox {bbox!r}; expected [x, y, w, h]")
            x, y, bw, bh = (float(v) for v in bbox)
            x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + bw, w), min(y + bh, h)
            if (not all(math.isfinite(v) for v in (x, y, bw, bh)) or bw <= 0 or bh <= 0
                    or x2 - x1 <= 0 or y2 - y1 <= 0):
                defects.found("zero_area_box", ann["id"], f"{where} has a zero-area box {bbox} "
                                                          f"(inside the {width}x{height} image)")
                continue
            if (x1, y1, x2, y2) != (x, y, x + bw, y + bh):
                counts["clipped"] += 1
            segm = _clean_segmentation(ann, defects)
            if segm is None:
                continue
            try:
                rle = to_rle(segm, height, width)
            except (ValueError, TypeError, KeyError, IndexError) as e:
                defects.found("no_segmentation", ann["id"], f"{where} has a segmentation that cannot "
                                                            f"be rasterised: {e}")
                continue
            mask_area = float(mask_utils.area(rle))
            if mask_area <= 0:
                defects.found("empty_mask", ann["id"], f"{where} has an empty mask")
                continue
            mx, my, mw, mh = (float(v) for v in mask_utils.toBbox(rle))
            mask_box = (mx, my, mx + mw, my + mh)
            iou = _iou_xyxy((x1, y1, x2, y2), mask_box)
            if iou < BOX_MASK_MIN_IOU:
                defects.found("box_from_mask", ann["id"],
                              f"{where} has bbox {bbox} far from its mask's extent "
                              f"{[round(v, 1) for v in (mx, my, mw, mh)]} (IoU {iou:.2f})")
                x1, y1, x2, y2 = mask_box
            crowd = 1 if ann.get("iscrowd", 0) else 0
            area = float(ann.get("area") or (x2 - x1) * (y2 - y1))
            row = [x1, y1, x2, y2, float(self.cat_id_to_label[ann["category_id"]]), float(crowd)]
            kept.append((crowd, -area, ann["id"], row, rle))
        kept.sort(key=lambda t: t[:3])
        return [k[3] for k in kept], [k[4] for k in kept], [k[2] for k in kept]

    # -- items ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._records)

    def get_image_info(self, index: int) -> Dict[str, Any]:
        """dict(id, file_name, height, width) of item ``index``."""
        rec = self._records[index]
        return {"id": rec.image_id, "file_name": os.path.basename(rec.path),
                "height": rec.height, "width": rec.width}

    def read_bytes(self, index: int) -> np.ndarray:
        """The encoded image file of item ``index`` as [L] uint8."""
        rec = self._records[index]
        try:
            return np.fromfile(rec.path, dtype=np.uint8)
        except OSError as e:
            raise DatasetError(f"{rec.path}: cannot read image file (image id {rec.image_id}): {e}") from e

    def decode(self, index: int, raw: Optional[np.ndarray] = None) -> np.ndarray:
        """Decode item ``index`` to RGB [h, w, 3] uint8, checking its size against the JSON."""
        rec = self._records[index]
        raw = self.read_bytes(index) if raw is None else raw
        img = cv2.imdecode(raw, cv2.IMREAD_COLOR) if raw.size else None
        if img is None:
            raise DatasetError(f"{rec.path}: corrupt or unreadable image (image id {rec.image_id})")
        if img.shape[:2] != (rec.height, rec.width):
            raise DatasetError(f"{rec.path}: image is {img.shape[0]}x{img.shape[1]} but the annotation "
                               f"file says {rec.height}x{rec.width} (image id {rec.image_id})")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def annotations(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """(annos [n, 6] f32, masks [n, h, w] u8) of item ``index``, masks rasterised now."""
        rec = self._records[index]
        masks = np.zeros((len(rec.segmentations), rec.height, rec.width), np.uint8)
        for k, segm in enumerate(rec.segmentations):
            try:
                masks[k] = rasterize(segm, rec.height, rec.width)
            except (ValueError, TypeError, KeyError, IndexError) as e:
                raise DatasetError(f"{self.ann_file}: annotation {rec.ann_ids[k]} (image "
                                   f"{rec.image_id}) has a segmentation that cannot be rasterised: {e}"
                                   ) from e
        return rec.annos.copy(), masks

    def __getitem__(self, index: int):
        rec = self._records[index]
        annos, masks = self.annotations(index)
        return self.read_bytes(index), annos, masks, np.array([rec.height, rec.width], np.int32)


class EpochSampler:
    """Shuffled training order that tells the source the epoch of every item.

    Each pass yields ``epoch * len(dataset) + index`` for a permutation of this shard's indices
    drawn from ``(seed, epoch)``; the source splits that back into (epoch, index) and augments
    the item with ``augment.sample_rng(seed, epoch, index)``. So the order and the augmentation
    of every item depend only on the seed, never on which worker process handles it.

    Args:
        size: number of items of the whole dataset.
        seed: the run's seed.
        shuffle: permute the order each epoch (else 0..size-1).
        num_shards, shard_id: data-parallel training: this shard's share of each permutation
            (the permutation is padded by wrapping so that every shard has the same length).
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True, num_shards: int = 1, shard_id: int = 0):
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.num_shards = num_shards
        self.shard_id = shard_id
        self.epoch = 0

    def __len__(self) -> int:
        return int(math.ceil(self.size / self.num_shards))

    def __iter__(self):
        # A generator: MindSpore calls iter() while building the pipeline without consuming it,
        # so the epoch only advances when a pass really starts. Epochs count from the start of
        # this process (a resumed run starts again at epoch 0 of the augmentation streams).
        epoch = self.epoch
        self.epoch += 1
        order = (np.random.default_rng([self.seed, epoch]).permutation(self.size) if self.shuffle
                 else np.arange(self.size))
        padded = np.resize(order, len(self) * self.num_shards)
        for index in padded[self.shard_id::self.num_shards]:
            yield int(epoch * self.size + index)


class TrainSource:
    """Random-access source for GeneratorDataset: decode + rasterise + augment in the worker.

    Keys are ``epoch * len(dataset) + index`` (see :class:`EpochSampler`); a plain index is
    epoch 0.
    """

    def __init__(self, dataset: COCOSubDataset, config: Config):
        self.dataset = dataset
        self.config = config
        self.augmentations = augment.build_augmentations(config)

    def __len__(self) -> int:
        return len(self.dataset)

    def augmented(self, key: int) -> augment.Sample:
        """The augmented sample of key ``epoch * len + index`` (image inside the input size)."""
        epoch, index = divmod(int(key), len(self.dataset))
        rng = augment.sample_rng(self.config.seed, epoch, index)
        img = self.dataset.decode(index)
        annos, masks = self.dataset.annotations(index)
        return augment.apply_augmentations(self.augmentations, augment.Sample(img, annos, masks), rng)

    def __getitem__(self, key: int):
        cfg = self.config
        sample = self.augmented(key)
        return transforms.pack_train(sample.image, sample.annos, sample.masks, sample.scale_h, sample.scale_w,
                                     cfg.img_height, cfg.img_width, cfg.max_instance_count,
                                     cfg.img_mean, cfg.img_std)


class _EvalSource:
    """Eval items; indices past the end repeat item 0 with image id PAD_IMAGE_ID."""

    def __init__(self, dataset: COCOSubDataset, config: Config, batch_size: int):
        self.dataset = dataset
        self.config = config
        self.length = int(math.ceil(len(dataset) / batch_size)) * batch_size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        cfg = self.config
        index = int(index)
        real = index < len(self.dataset)
        item = index if real else 0
        image, image_shape = transforms.preprocess_eval(
            self.dataset.decode(item), cfg.img_height, cfg.img_width, cfg.img_mean, cfg.img_std,
            cfg.keep_ratio)
        image_id = self.dataset.image_ids[item] if real else PAD_IMAGE_ID
        return image, image_shape, np.array(image_id, np.int32)


def create_new_dataset(image_dir: Optional[str], batch_size: int, is_training: bool = True,
                       num_parallel_workers: Optional[int] = None, config: Optional[Config] = None,
                       shuffle: Optional[bool] = None, num_shards: int = 1, shard_id: int = 0):
    """Build the MindSpore input pipeline.

    Args:
        image_dir: the COCO-format root (folder with ``<split>/`` and ``annotations/``); None
            means ``config.coco_root``.
        batch_size: images per batch.
        is_training: training columns TRAIN_COLUMNS (shuffled by EpochSampler, augmented with the
            list of src/augment.py, drop_remainder) or
            eval columns EVAL_COLUMNS (in order, last batch padded with image id -1).
        num_parallel_workers: worker processes (default config.num_parallel_workers); 1 runs in
            the main process.
        config: the run's Config (default FineTune/default.yaml).
        shuffle: override the default (True for training, False for eval).
        num_shards, shard_id: data-parallel training reads the ``shard_id``-th of ``num_shards``
            disjoint parts of the set.

    Returns:
        mindspore.dataset.Dataset of batches with static shapes (see src/batch.py).
    """
    import mindspore.dataset as ds  # imported here: MindSpore is slow to import

    cfg = config if config is not None else load_config()
    workers = num_parallel_workers or cfg.num_parallel_workers
    if batch_size <= 0:
        raise DatasetError(f"batch_size must be positive, got {batch_size}")
    dataset = COCOSubDataset(image_dir, is_training=is_training, config=cfg)
    if is_training:
        if len(dataset) < batch_size:
            raise DatasetError(f"{dataset.ann_file}: {len(dataset)} usable training images, fewer than "
                               f"batch_size={batch_size}")
        # The sampler shuffles and shards, and carries the epoch to the workers' augmentations.
        sampler = EpochSampler(len(dataset), cfg.seed, True if shuffle is None else shuffle,
                               num_shards, shard_id)
        pipeline = ds.GeneratorDataset(TrainSource(dataset, cfg), column_names=list(TRAIN_COLUMNS),
                                       sampler=sampler, num_parallel_workers=workers,
                                       python_multiprocessing=workers > 1)
        return pipeline.batch(batch_size, drop_remainder=True)
    return create_eval_dataset(dataset, batch_size, workers, False if shuffle is None else shuffle,
                               num_shards, shard_id)


def create_eval_dataset(dataset: COCOSubDataset, batch_size: int, num_parallel_workers: Optional[int] = None,
                        shuffle: bool = False, num_shards: int = 1, shard_id: int = 0):
    """The eval pipeline over a split that is already read (so its annotation file is read once).

    Args:
        dataset: ``COCOSubDataset(..., is_training=False)``; its config gives the input size.
        batch_size: images per batch; the last batch is padded with image id PAD_IMAGE_ID.
        num_parallel_workers: worker processes (default config.num_parallel_workers); 1 runs in
            the main process.
        shuffle, num_shards, shard_id: as in :func:`create_new_dataset`.

    Returns:
        mindspore.dataset.Dataset of EVAL_COLUMNS batches (see src/batch.py).
    """
    import mindspore.dataset as ds  # imported here: MindSpore is slow to import

    if batch_size <= 0:
        raise DatasetError(f"batch_size must be positive, got {batch_size}")
    workers = num_parallel_workers or dataset.config.num_parallel_workers
    source = _EvalSource(dataset, dataset.config, batch_size)
    columns: Sequence[str] = EVAL_COLUMNS
    pipeline = ds.GeneratorDataset(source, column_names=list(columns), shuffle=shuffle,
                                   num_parallel_workers=workers,
                                   python_multiprocessing=workers > 1,
                                   num_shards=num_shards if num_shards > 1 else None,
                                   shard_id=shard_id if num_shards > 1 else None)
    # Eval items are padded to a multiple of batch_size, so no partial batch exists either way.
    return pipeline.batch(batch_size, drop_remainder=True)
