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

from src.annotations import (CleanAnnotations, CleanImage, DatasetError, rasterize, read_annotations,
                             reorient_image)
from src.batch import EVAL_COLUMNS, TRAIN_COLUMNS
from src.config import Config, resolve_path
from src.data_sources import EpochSampler, EvalSource, TrainSource
from src.image_header import ImageHeaderError, jpeg_is_complete, read_image_geometry

LOGGER = logging.getLogger(__name__)

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
    """One split, restricted to ``config.coco_classes[1:]``, read by src/annotations.py.

    The split's files are ``config.train_ann_file``/``train_image_dir`` (``val_*``) when set,
    else the COCO layout ``<root>/<split>/`` and ``<root>/<instance_set with the split>``.

    Args:
        coco_root: the COCO-format root, folder with ``<split>/`` images and ``annotations/``
            (None: config.coco_root).
        is_training: split = ``config.train_data_type`` (images without an instance of the chosen
            classes are skipped and counted unless ``keep_empty_images``) or
            ``config.val_data_type`` (all images kept).
        config: the run's Config.

    Attributes:
        label_to_cat_id: contiguous label 1.. (order of coco_classes[1:]) -> file category id.
        cat_id_to_label: the inverse.
        class_names: coco_classes[1:].
        image_ids: COCO image ids in item order.
        coco: pycocotools COCO object of the cleaned annotations of the kept images (what
            evaluation scores against; :attr:`cleaned_coco` is the same as a dict).
        root: the COCO-format root (absolute).
        image_dir: the split's image folder.
        ann_file: the split's annotation file.
        uncut_rows: image id -> [n, 6] f32 rows of every kept image before the
            max_instance_count cut (real instances by area desc, then crowd regions).
        defect_counts: kind (a key of src.annotations.DEFECT_KINDS) -> annotations dropped or
            repaired.
        image_counts: ``unreadable`` (skipped: cannot be decoded), ``no_instance`` (training
            images without instance skipped), ``turned`` (annotations of the stored pixels of an
            EXIF-rotated photo turned upright).

    Images are what a viewer shows (EXIF orientation applied, src/image_header.py). An
    annotation file may give a photo's upright size or, where the two differ, its stored size (its
    annotations are then turned upright with the image); any other size is an error.

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
        self.class_names = list(self.config.coco_classes[1:])
        clean = read_annotations(self.ann_file, self.class_names, self.config.strict_annotations)
        self.label_to_cat_id = dict(clean.label_to_cat_id)
        self.cat_id_to_label = {cat_id: label for label, cat_id in self.label_to_cat_id.items()}
        self._unreadable_seen: set = set()  # files found undecodable in this process (one warning each)
        kept = self._kept_images(clean)
        self._records = self._build_records(clean, kept)
        self.image_ids = [rec.image_id for rec in self._records]
        self.cleaned_coco = clean.to_coco(kept)
        self.coco = COCO()
        self.coco.dataset = self.cleaned_coco
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()

    # -- building -------------------------------------------------------------------------------
    def _kept_images(self, clean: CleanAnnotations) -> List[CleanImage]:
        """The images of the split that are used: files checked (and decoded with check_images /
        strict_images), annotations turned upright where needed; counts in image_counts."""
        counts = {"no_instance": 0, "unreadable": 0, "turned": 0}
        unreadable_example = None
        kept = []
        verify = self.config.check_images or self.config.strict_images
        for image in clean.images:
            if self.is_training and image.num_instances == 0 and not self.config.keep_empty_images:
                counts["no_instance"] += 1
                continue
            info = image.info
            path = os.path.join(self.image_dir, info["file_name"])
            turn = self._check_image_file(path, info["id"], info["height"], info["width"])
            if turn != 1:
                image = reorient_image(image, turn)
                counts["turned"] += 1
            if verify and self._decoded(path, info["id"], image.info["height"], image.info["width"]) is None:
                if self.config.strict_images:
                    raise DatasetError(f"{path}: cannot be decoded, cut off or corrupt (image id {info['id']}; "
                                       f"strict_images is true)")
                counts["unreadable"] += 1
                unreadable_example = unreadable_example or path
                continue
            kept.append(image)
        self.image_counts = counts
        if counts["turned"]:
            LOGGER.warning("%s: %d images are EXIF-rotated photos annotated on their stored pixels; their "
                           "annotations were turned upright with the image", self.ann_file, counts["turned"])
        if counts["unreadable"]:
            LOGGER.warning("%s: skipped %d images that cannot be decoded (cut off or corrupt, e.g. %s); "
                           "strict_images: true makes this an error", self.ann_file, counts["unreadable"],
                           unreadable_example)
        if counts["no_instance"]:
            LOGGER.info("%s: skipped %d training images with no instance of %s (keep_empty_images: true "
                        "trains on them as negatives)", self.ann_file, counts["no_instance"], self.class_names)
        return kept

    def _build_records(self, clean: CleanAnnotations, kept: List[CleanImage]) -> List[_ImageRecord]:
        defects = clean.defects
        self.defect_counts = dict(defects.counts)
        summary = defects.summary(self.split)
        if summary:
            LOGGER.warning("%s", summary)
        if defects.clipped_boxes:
            LOGGER.warning("%s: clipped %d boxes that reached outside their image", self.ann_file,
                           defects.clipped_boxes)
        limit = self.config.max_instance_count
        too_many = [len(image.rows) for image in kept if len(image.rows) > limit]
        if too_many:
            LOGGER.warning("%s: %d images have more than max_instance_count=%d instances (up to %d); "
                           "the largest were kept", self.ann_file, len(too_many), limit, max(too_many))
        # Rows [n, 6] of every kept image before the max_instance_count cut (src/inspect_data.py).
        self.uncut_rows: Dict[int, np.ndarray] = {image.info["id"]: image.rows for image in kept}
        records = [_ImageRecord(image.info["id"], os.path.join(self.image_dir, image.info["file_name"]),
                                image.info["height"], image.info["width"], image.rows[:limit].copy(),
                                image.rles[:limit], image.ann_ids[:limit]) for image in kept]
        if not records:
            raise DatasetError(f"{self.ann_file}: no images left for split '{self.split}' with classes "
                               f"{self.class_names} ({len(clean.images)} images in the file)")
        return records

    @staticmethod
    def _check_image_file(path: str, img_id: int, height: int, width: int) -> int:
        """Exists, has an image header OpenCV can read and the size the JSON gives, upright or
        (where it differs) stored. Returns the EXIF orientation to turn the annotations by: 1 when
        they are upright already."""
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: image file not found (image id {img_id})")
        try:
            geometry = read_image_geometry(path)
        except (OSError, ImageHeaderError) as e:
            raise DatasetError(f"{path}: corrupt or unreadable image (image id {img_id}): {e}") from e
        if geometry is None or geometry.upright_size == (height, width):
            return 1
        stored = (geometry.stored_height, geometry.stored_width)
        if stored == (height, width):
            return geometry.orientation
        upright_h, upright_w = geometry.upright_size
        turned = (f" as shown (stored {stored[0]}x{stored[1]}, EXIF orientation {geometry.orientation})"
                  if geometry.orientation != 1 else "")
        raise DatasetError(f"{path}: image is {upright_h}x{upright_w}{turned} but the annotation file says "
                           f"{height}x{width} (image id {img_id})")

    @staticmethod
    def _decoded(path: str, img_id: int, height: int, width: int, raw: Optional[np.ndarray] = None
                 ) -> Optional[np.ndarray]:
        """The BGR image (EXIF orientation applied) of a complete, decodable file of the expected
        size; None if it cannot be decoded (cut off or corrupt).

        Raises:
            DatasetError: the file cannot be read, or decodes to another size than the JSON's.
        """
        try:
            raw = np.fromfile(path, dtype=np.uint8) if raw is None else raw
        except OSError as e:
            raise DatasetError(f"{path}: cannot read image file (image id {img_id}): {e}") from e
        if not raw.size or not jpeg_is_complete(raw.tobytes()):
            return None
        img = cv2.imdecode(raw, cv2.IMREAD_COLOR)
        if img is not None and img.shape[:2] != (height, width):
            raise DatasetError(f"{path}: image is {img.shape[0]}x{img.shape[1]} but the annotation "
                               f"file says {height}x{width} (image id {img_id})")
        return img

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
        """Decode item ``index`` to RGB [h, w, 3] uint8 (EXIF orientation applied), checking its
        size against the JSON; DatasetError if it cannot be decoded."""
        rec = self._records[index]
        raw = self.read_bytes(index) if raw is None else raw
        img = self._decoded(rec.path, rec.image_id, rec.height, rec.width, raw)
        if img is None:
            raise DatasetError(f"{rec.path}: corrupt or unreadable image (image id {rec.image_id})")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def decode_usable(self, index: int) -> Tuple[int, np.ndarray]:
        """(index, RGB image) of item ``index``, or of the next item that decodes when it cannot
        be decoded (cut off or corrupt; one warning per file and process). With strict_images
        (every image was decoded at build time) a failure is a DatasetError."""
        for offset in range(len(self._records)):
            item = (index + offset) % len(self._records)
            try:
                return item, self.decode(item)
            except DatasetError as e:
                if self.config.strict_images:
                    raise
                path = self._records[item].path
                if path not in self._unreadable_seen:
                    self._unreadable_seen.add(path)
                    LOGGER.warning("%s; skipped, the next image is used instead (check_images: true finds "
                                   "such files when the dataset is built)", e)
        raise DatasetError(f"{self.ann_file}: none of the {len(self._records)} images of split '{self.split}' "
                           f"can be decoded")

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
