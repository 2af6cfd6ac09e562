"""Builders shared by several test modules (tests/ is on sys.path through its conftest.py): small
COCO sets on disk, photos with an EXIF orientation, tiny configs, a toy network for the train step,
stand-in detections and networks (fixed detections; a dataset's ground truth), a TensorBoard
event-file reader."""

import json
import math
import os
import struct
from typing import Dict, List, Tuple

import cv2
import numpy as np
from mindspore import Parameter, Tensor, nn
from pycocotools import mask as mask_utils

from src.config import Config

RED, GREEN = (255, 0, 0), (0, 255, 0)


def dataset_config(root, **kw):
    """A small Config reading the hand-made set at ``root`` (classes book, disc; 64x96 input)."""
    values = dict(coco_root=str(root), coco_classes=["background", "book", "disc"],
                  max_instance_count=4, img_height=64, img_width=96, num_parallel_workers=1)
    values.update(kw)
    return Config().replace(**values)


def box_polygon(x1, y1, x2, y2):
    """The COCO polygon list of a box."""
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


def write_coco_set(root, images, annotations, categories=None, split="train2017", pixels=None):
    """Hand-made COCO set; ``pixels[image_id]`` = list of ((x1, y1, x2, y2), rgb) painted on grey."""
    os.makedirs(os.path.join(root, split), exist_ok=True)
    for img in images:
        canvas = np.full((img["height"], img["width"], 3), 128, np.uint8)
        for (x1, y1, x2, y2), rgb in (pixels or {}).get(img["id"], []):
            canvas[y1:y2, x1:x2] = rgb
        cv2.imwrite(os.path.join(root, split, img["file_name"]), canvas[:, :, ::-1])
    data = {"images": images, "annotations": annotations,
            "categories": categories or [{"id": 84, "name": "book"}, {"id": 44, "name": "disc"},
                                         {"id": 7, "name": "cup"}]}
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as handle:
        json.dump(data, handle)


def coco_annotation(ann_id, image_id, cat, box, crowd=0, segm=None):
    """A COCO annotation of box ``(x1, y1, x2, y2)``, its polygon unless ``segm`` is given
    (:func:`rect_ann` with the crowd flag and segmentation as arguments)."""
    extra = {"iscrowd": crowd} if segm is None else {"iscrowd": crowd, "segmentation": segm}
    return rect_ann(ann_id, image_id, cat, box, **extra)


def coco_image(image_id, h=40, w=60):
    """A COCO image entry ``<id>.png``."""
    return {"id": image_id, "file_name": f"{image_id}.png", "height": h, "width": w}


def rect_result(image_id, cat_id, x1, y1, x2, y2, score, height, width):
    """A COCO result dict whose box and mask are the rectangle ``(x1, y1, x2, y2)`` in a
    ``height x width`` image."""
    mask = np.zeros((height, width), np.uint8)
    mask[y1:y2, x1:x2] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    return {"image_id": image_id, "category_id": cat_id, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score,
            "segmentation": rle}


class ToyLosses(nn.Cell):
    """Five losses from one parameter vector w: loss_i = (i + 1) * sum(w * image[:4])^2 / 2."""

    def __init__(self):
        super().__init__()
        self.w = Parameter(Tensor(np.array([1.0, -2.0, 0.5, 3.0], np.float32)), name="w")

    def construct(self, image, image_shape, box, label, instance_valid, mask, sampling_step=None):
        x = image.reshape(-1)[:4]
        base = (self.w * x).sum() ** 2 / 2
        return tuple(base * (i + 1) for i in range(5))


def toy_batch(image_values):
    """The six training inputs for ToyLosses: a 1x1x2x2 image of ``image_values``, the rest zeros."""
    image = Tensor(np.array(image_values, np.float32).reshape(1, 1, 2, 2))
    zeros = Tensor(np.zeros((1, 4), np.float32))
    return image, zeros, Tensor(np.zeros((1, 1, 4), np.float32)), Tensor(np.zeros((1, 1), np.int32)), \
        Tensor(np.zeros((1, 1), np.int32)), Tensor(np.zeros((1, 1, 2, 2), np.uint8))


# EXIF orientation -> the one that undoes it (quarter turns 6 and 8 undo each other).
INVERSE_ORIENTATION = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}


def rect_ann(ann_id, image_id, cat_id, box, **extra):
    """A COCO annotation of the rectangle ``box`` = (x1, y1, x2, y2) as a polygon."""
    x1, y1, x2, y2 = box
    ann = {"id": ann_id, "image_id": image_id, "category_id": cat_id, "bbox": [x1, y1, x2 - x1, y2 - y1],
           "area": float((x2 - x1) * (y2 - y1)), "iscrowd": 0, "segmentation": box_polygon(*box)}
    ann.update(extra)
    return ann


def write_json(path, data):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    return str(path)


def painted(height, width, boxes_and_colours, background=(128, 128, 128)):
    """[h, w, 3] uint8 RGB of flat rectangles ((x1, y1, x2, y2), (r, g, b)) on a flat background."""
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = background
    for (x1, y1, x2, y2), rgb in boxes_and_colours:
        canvas[y1:y2, x1:x2] = rgb
    return canvas


def write_photo(path, upright_rgb, orientation=1, quality=95):
    """Save ``upright_rgb`` as a JPEG whose stored pixels are turned so that a viewer applying the
    EXIF ``orientation`` (written with Pillow) shows ``upright_rgb``. Returns the stored array."""
    from PIL import Image

    from src.image_header import orient_array

    stored = orient_array(upright_rgb, INVERSE_ORIENTATION[orientation])
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(stored).save(path, "JPEG", quality=quality, subsampling=0, exif=exif.tobytes())
    return stored


def tiny_config(**values):
    """A validated Config for 64x64 data tests (CPU, one worker)."""
    from src.config import Config

    base = dict(img_height=64, img_width=64, max_instance_count=4, num_parallel_workers=1, flip_ratio=0.0,
                coco_classes=["background", "book", "disc"])
    base.update(values)
    return Config().replace(**base)


def error_lines(text):
    """The ERROR log lines of a tool's stderr (what the user reads when a run is refused)."""
    return [line for line in text.splitlines() if " ERROR " in line]


class FixedDetectionsNet:
    """Stand-in for an inference network with a 64x64 input: three detections, labels 1, 2, 1 with
    scores .9, .6, .4, boxes inside the input, masks covering their boxes."""

    def set_train(self, mode):
        self.training = mode

    def __call__(self, image, image_shape):
        import mindspore as ms

        boxes = np.array([[[2, 2, 20, 20], [30, 30, 50, 50], [10, 30, 25, 60]]], np.float32)
        scores = np.array([[0.9, 0.6, 0.4]], np.float32)
        labels = np.array([[1, 2, 1]], np.int32)
        valid = np.ones((1, 3), bool)
        masks = np.ones((1, 3, 28, 28), np.float32)
        return tuple(ms.Tensor(a) for a in (boxes, scores, labels, valid, masks))


class GroundTruthNet:
    """Stands in for the network: returns each eval item's ground truth in the network's format.

    The eval pipeline yields items in order (batch 2, the last batch padded by repeating item 0),
    so call c covers items 2c and 2c+1. Boxes are mapped into input pixels with the scale the
    pipeline reports in image_shape; masks are the GT crops resized to 28x28.
    """

    def __init__(self, dataset, max_per_img):
        self.dataset = dataset
        self.max_per_img = max_per_img
        self.calls = 0
        self.training = None

    def set_train(self, mode):
        self.training = mode

    def __call__(self, image, image_shape):
        shapes = image_shape.asnumpy()
        batch = shapes.shape[0]
        k = self.max_per_img
        out = (np.zeros((batch, k, 4), np.float32), np.zeros((batch, k), np.float32),
               np.zeros((batch, k), np.int32), np.zeros((batch, k), bool), np.zeros((batch, k, 28, 28), np.float32))
        for b in range(batch):
            index = self.calls * batch + b
            index = index if index < len(self.dataset) else 0
            annos, masks = self.dataset.annotations(index)
            real = np.flatnonzero(annos[:, 5] == 0)[:k]
            scale = np.array([shapes[b, 3], shapes[b, 2], shapes[b, 3], shapes[b, 2]], np.float32)
            for j, a in enumerate(real):
                x1, y1, x2, y2 = annos[a, :4]
                crop = masks[a, int(y1):int(math.ceil(y2)), int(x1):int(math.ceil(x2))].astype(np.float32)
                out[4][b, j] = cv2.resize(crop, (28, 28), interpolation=cv2.INTER_LINEAR)
                out[0][b, j] = annos[a, :4] * scale
                out[1][b, j], out[2][b, j], out[3][b, j] = 1.0, int(annos[a, 4]), True
        self.calls += 1
        return out


def read_tensorboard_scalars(log_dir: str) -> Dict[str, List[Tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every scalar in the event files of ``log_dir``, in file order.

    Reads the record framing (length, length CRC, payload, payload CRC) and parses each payload with
    tensorboardX's own ``Event`` protocol buffer.
    """
    from tensorboardX.proto.event_pb2 import Event

    scalars: Dict[str, List[Tuple[int, float]]] = {}
    for name in sorted(os.listdir(log_dir)):
        if "tfevents" not in name:
            continue
        with open(os.path.join(log_dir, name), "rb") as handle:
            data = handle.read()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            payload = data[offset + 12:offset + 12 + length]
            offset += 12 + length + 4
            event = Event.FromString(payload)
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return scalars
