"""COCO-format instance-segmentation data for training and evaluation.

:class:`COCOSubDataset` reads one split of a COCO-format folder restricted to the classes of
``config.coco_classes[1:]`` (matched by name) and returns raw items in original-image pixels;
:func:`create_new_dataset` wraps it in a ``mindspore.dataset.GeneratorDataset`` whose workers
decode, rasterise the masks and preprocess (src/transforms.py), then batches with static shapes
(the batch contract of src/batch.py).

Everything cheap is checked when the dataset is built (JSON structure, category names, image
ids, polygons, boxes, image files exist) so that bad input fails at once with a one-line
:class:`DatasetError`; image decoding and mask rasterisation happen lazily per item.
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
from src import transforms

LOGGER = logging.getLogger(__name__)

# Image id of the padding items that complete the last evaluation batch (the evaluator skips it).
PAD_IMAGE_ID = -1
# Columns of one raw item (annos rows are x1, y1, x2, y2, label, iscrowd).
ANNO_COLUMNS = 6
MIN_POLYGON_POINTS = 3


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
    segmentations: List[Any]  # COCO segmentation of each row of annos
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


def _check_segmentation(ann_file: str, ann: Dict[str, Any]) -> None:
    segm = ann.get("segmentation")
    ann_id = ann["id"]
    if isinstance(segm, list):
        if not segm:
            raise DatasetError(f"{ann_file}: annotation {ann_id} (image {ann['image_id']}) has an "
                               f"empty polygon list")
        for poly in segm:
            if not isinstance(poly, list) or len(poly) < 2 * MIN_POLYGON_POINTS:
                points = len(poly) // 2 if isinstance(poly, list) else 0
                raise DatasetError(f"{ann_file}: annotation {ann_id} (image {ann['image_id']}) has a "
                                   f"polygon with {points} points (need at least {MIN_POLYGON_POINTS})")
    elif isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            raise DatasetError(f"{ann_file}: annotation {ann_id} (image {ann['image_id']}) has an RLE "
                               f"segmentation without 'counts'/'size'")
    else:
        raise DatasetError(f"{ann_file}: annotation {ann_id} (image {ann['image_id']}) has no "
                           f"polygon or RLE segmentation")


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
        images = {img["id"]: img for img in data["images"]}
        per_image: Dict[int, List[Dict[str, Any]]] = {img_id: [] for img_id in images}
        for ann in data["annotations"]:
            if ann["image_id"] not in images:
                raise DatasetError(f"{self.ann_file}: annotation {ann['id']} refers to image id "
                                   f"{ann['image_id']}, which is not in 'images'")
            if ann["category_id"] in self.cat_id_to_label:
                _check_segmentation(self.ann_file, ann)
                per_image[ann["image_id"]].append(ann)

        counts = {"zero_area": 0, "clipped": 0, "too_many": 0, "no_instance": 0}
        most = 0
        records = []
        for img_id in sorted(images):
            info = images[img_id]
            rows, segms, ann_ids = self._image_rows(info, per_image[img_id], counts)
            n_real = sum(1 for r in rows if r[5] == 0)
            if self.is_training and n_real == 0:
                counts["no_instance"] += 1
                continue
            limit = self.config.max_instance_count
            if len(rows) > limit:
                counts["too_many"] += 1
                most = max(most, len(rows))
                rows, segms, ann_ids = rows[:limit], segms[:limit], ann_ids[:limit]
            path = os.path.join(self.image_dir, info["file_name"])
            if not os.path.isfile(path):
                raise DatasetError(f"{path}: image file not found (image id {img_id})")
            annos = np.array(rows, np.float32).reshape(-1, ANNO_COLUMNS)
            records.append(_ImageRecord(img_id, path, int(info["height"]), int(info["width"]),
                                        annos, segms, ann_ids))
        if counts["zero_area"]:
            LOGGER.warning("%s: dropped %d annotations with a zero-area box", self.ann_file,
                           counts["zero_area"])
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

    def _image_rows(self, info: Dict[str, Any], anns: List[Dict[str, Any]], counts: Dict[str, int]):
        """Rows (x1, y1, x2, y2, label, iscrowd) of one image: real by area desc, then crowd."""
        h, w = float(info["height"]), float(info["width"])
        kept = []
        for ann in anns:
            bbox = ann["bbox"]
            if not isinstance(bbox, list) or len(bbox) != 4:
                raise DatasetError(f"{self.ann_file}: annotation {ann['id']} (image {info['id']}) has "
                                   f"bbox {bbox!r}; expected [x, y, w, h]")
            x, y, bw, bh = (float(v) for v in bbox)
            if not all(math.isfinite(v) for v in (x, y, bw, bh)) or bw <= 0 or bh <= 0:
                counts["zero_area"] += 1
                continue
            x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + bw, w), min(y + bh, h)
            if (x1, y1, x2, y2) != (x, y, x + bw, y + bh):
                counts["clipped"] += 1
            if x2 - x1 <= 0 or y2 - y1 <= 0:
                counts["zero_area"] += 1
                continue
            crowd = 1 if ann.get("iscrowd", 0) else 0
            area = float(ann.get("area") or (x2 - x1) * (y2 - y1))
            row = [x1, y1, x2, y2, float(self.cat_id_to_label[ann["category_id"]]), float(crowd)]
            kept.append((crowd, -area, ann["id"], row, ann["segmentation"]))
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


class _TrainSource:
    """Random-access source for GeneratorDataset: decode + rasterise + preprocess in the worker."""

    def __init__(self, dataset: COCOSubDataset, config: Config):
        self.dataset = dataset
        self.config = config
        self._calls = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        cfg = self.config
        index = int(index)
        # A fresh stream per (seed, item, call) so flips differ between epochs but a run in one
        # process is reproducible.
        rng = np.random.default_rng([cfg.seed, index, self._calls])
        self._calls += 1
        img = self.dataset.decode(index)
        annos, masks = self.dataset.annotations(index)
        flip = bool(rng.random() < cfg.flip_ratio)
        return transforms.preprocess_train(
            img, annos, masks, cfg.img_height, cfg.img_width, cfg.max_instance_count,
            cfg.img_mean, cfg.img_std, flip, cfg.keep_ratio)


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
        is_training: training columns TRAIN_COLUMNS (shuffled, random flip, drop_remainder) or
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
        source: Any = _TrainSource(dataset, cfg)
        columns: Sequence[str] = TRAIN_COLUMNS
        do_shuffle = True if shuffle is None else shuffle
    else:
        source = _EvalSource(dataset, cfg, batch_size)
        columns = EVAL_COLUMNS
        do_shuffle = False if shuffle is None else shuffle
    pipeline = ds.GeneratorDataset(source, column_names=list(columns), shuffle=do_shuffle,
                                   num_parallel_workers=workers,
                                   python_multiprocessing=workers > 1,
                                   num_shards=num_shards if num_shards > 1 else None,
                                   shard_id=shard_id if num_shards > 1 else None)
    # Eval items are padded to a multiple of batch_size, so no partial batch exists either way.
    return pipeline.batch(batch_size, drop_remainder=True)
