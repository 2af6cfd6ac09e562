"""COCO-format instance-segmentation data for training and evaluation.

:class:`COCOSubDataset` reads one split of a COCO-format folder restricted to the classes of
``config.coco_classes[1:]`` (matched by name) and returns raw items in original-image pixels;
:func:`create_new_dataset` wraps it in a ``mindspore.dataset.GeneratorDataset`` whose workers
decode, rasterise the masks and preprocess (the sources of src/data_sources.py), then batches
with static shapes (the batch contract of src/batch.py).

Everything cheap is checked when the dataset is built (JSON structure, category names, image
ids, polygons, boxes, masks, image files and their headers) so that bad input fails at once with
a one-line :class:`DatasetError`; image decoding and mask decoding happen lazily per item.

Annotation defects common in real exports (see src/annotations.py) are dropped or repaired and
counted in one warning per split, or are errors with ``strict_annotations: true``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import cv2
import numpy as np
from pycocotools.coco import COCO

from src.annotations import DatasetError, DefectLog, clean_instance, load_coco_json, rasterize
from src.batch import EVAL_COLUMNS, TRAIN_COLUMNS
from src.config import Config, resolve_path
from src.data_sources import EpochSampler, EvalSource, TrainSource
from src.image_header import ImageHeaderError, read_image_size

LOGGER = logging.getLogger(__name__)

# Columns of one raw item (annos rows are x1, y1, x2, y2, label, iscrowd).
ANNO_COLUMNS = 6

__all__ = ["COCOSubDataset", "DatasetError", "create_new_dataset"]


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


class COCOSubDataset:
    """One split of a COCO-format folder, restricted to ``config.coco_classes[1:]``.

    Args:
        coco_root: the COCO-format root, folder with ``<split>/`` images and ``annotations/``
            (None: config.coco_root).
        is_training: split = ``config.train_data_type`` (images without an instance of the chosen
            classes are skipped and counted) or ``config.val_data_type`` (all images kept).
        config: the run's Config.

    Attributes:
        label_to_cat_id: contiguous label 1.. (order of coco_classes[1:]) -> file category id.
        cat_id_to_label: the inverse.
        class_names: coco_classes[1:].
        image_ids: COCO image ids in item order.
        coco: the pycocotools COCO object of the whole file.
        root: the COCO-format root (absolute).
        image_dir: the split's image folder ``<root>/<split>``.
        ann_file: the split's annotation file ``<root>/<instance_set with the split>``.
        uncut_rows: image id -> [n, 6] f32 rows of every kept image before the
            max_instance_count cut (real instances by area desc, then crowd regions).
        defect_counts: kind (a key of src.annotations.DEFECT_KINDS) -> annotations dropped or
            repaired.

    ``ds[i]`` -> ``(img bytes [L] u8, annos [n, 6] f32 (x1, y1, x2, y2, label, iscrowd),
    mask [n, h, w] u8, mask_shape [2] i32 (h, w))`` in original-image pixels, with at most
    ``config.max_instance_count`` rows: real instances (largest first), then crowd regions.
    """

    def __init__(self, coco_root: Optional[str], is_training: bool, config: Config):
        self.config = config
        self.is_training = is_training
        self.split = self.config.train_data_type if is_training else self.config.val_data_type
        self.root = resolve_path(coco_root if coco_root is not None else self.config.coco_root)
        self.image_dir, self.ann_file = self.config.split_paths(self.split, self.root)
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
        defects = DefectLog(self.ann_file, self.config.strict_annotations)
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

        counts = {"too_many": 0, "no_instance": 0}
        most = 0
        records = []
        # Rows [n, 6] of every kept image before the max_instance_count cut (src/inspect_data.py).
        self.uncut_rows: Dict[int, np.ndarray] = {}
        for img_id in sorted(images):
            info = images[img_id]
            rows, segms, ann_ids = self._image_rows(info, per_image[img_id], defects)
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
        if defects.clipped_boxes:
            LOGGER.warning("%s: clipped %d boxes that reached outside their image", self.ann_file,
                           defects.clipped_boxes)
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

    def _image_rows(self, info: Dict[str, Any], anns: List[Dict[str, Any]], defects: DefectLog):
        """Rows (x1, y1, x2, y2, label, iscrowd), compressed RLEs and annotation ids of one image:
        real instances by area desc, then crowd regions (ties by annotation id)."""
        kept = []
        for ann in anns:
            instance = clean_instance(ann, int(info["height"]), int(info["width"]), defects)
            if instance is None:
                continue
            (x1, y1, x2, y2), rle = instance
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


def create_new_dataset(dataset_root: Optional[str], batch_size: int, is_training: bool,
                       num_parallel_workers: Optional[int], config: Config, shuffle: Optional[bool] = None, num_shards: int = 1, shard_id: int = 0,
                       start_step: int = 0):
    """Build the MindSpore input pipeline.

    Args:
        dataset_root: the COCO-format root (folder with ``<split>/`` and ``annotations/``); None
            means ``config.coco_root``.
        batch_size: images per batch.
        is_training: training columns TRAIN_COLUMNS (shuffled by EpochSampler, augmented with the
            list of src/augment.py, drop_remainder) or
            eval columns EVAL_COLUMNS (in order, last batch padded with image id PAD_IMAGE_ID).
        num_parallel_workers: worker processes (default config.num_parallel_workers); 1 runs in
            the main process.
        config: the run's Config.
        shuffle: override the default (True for training, False for eval).
        num_shards, shard_id: data-parallel training reads the ``shard_id``-th of ``num_shards``
            disjoint parts of the set.
        start_step: training: the global step a resumed run starts from (the order and the
            augmentation continue from there, see EpochSampler).

    Returns:
        mindspore.dataset.Dataset of batches with static shapes (see src/batch.py).
    """
    import mindspore.dataset as ds  # imported here: MindSpore is slow to import

    cfg = config
    workers = num_parallel_workers or cfg.num_parallel_workers
    if batch_size <= 0:
        raise DatasetError(f"batch_size must be positive, got {batch_size}")
    dataset = COCOSubDataset(dataset_root, is_training=is_training, config=cfg)
    if is_training:
        if len(dataset) < batch_size:
            raise DatasetError(f"{dataset.ann_file}: {len(dataset)} usable training images, fewer than "
                               f"batch_size={batch_size}")
        # The sampler shuffles and shards, and carries the epoch to the workers' augmentations.
        sampler = EpochSampler(len(dataset), cfg.seed, True if shuffle is None else shuffle,
                               num_shards, shard_id, start_step=start_step, batch_size=batch_size)
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
    source = EvalSource(dataset, dataset.config, batch_size)
    pipeline = ds.GeneratorDataset(source, column_names=list(EVAL_COLUMNS), shuffle=shuffle,
                                   num_parallel_workers=workers,
                                   python_multiprocessing=workers > 1,
                                   num_shards=num_shards if num_shards > 1 else None,
                                   shard_id=shard_id if num_shards > 1 else None)
    # Eval items are padded to a multiple of batch_size, so no partial batch exists either way.
    return pipeline.batch(batch_size, drop_remainder=True)
