"""Shared test builders: small COCO sets on disk, photos with an EXIF orientation, tiny configs."""

import json
import os

import numpy as np

# EXIF orientation -> the one that undoes it (quarter turns 6 and 8 undo each other).
INVERSE_ORIENTATION = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}


def rect_ann(ann_id, image_id, cat_id, box, **extra):
    """A COCO annotation of the rectangle ``box`` = (x1, y1, x2, y2) as a polygon."""
    x1, y1, x2, y2 = box
    ann = {"id": ann_id, "image_id": image_id, "category_id": cat_id, "bbox": [x1, y1, x2 - x1, y2 - y1],
           "area": float((x2 - x1) * (y2 - y1)), "iscrowd": 0,
           "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]]}
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
