"""Deterministic generator of a small COCO-format instance-segmentation set.

The set needs no download and is learnable from scratch in a few minutes of CPU time: books
(warm-coloured quadrilaterals with spine stripes and a title block), discs (cool-coloured
ellipses) and triangles (green), plus a distractor category (``cross``) that is not in the
default class list, on textured low-contrast backgrounds. Objects occlude each other; the mask
of an occluded object is only its visible part (a polygon traced with ``cv2.findContours``, or
compressed RLE when the visible part is fragmented or has holes). A few crowd regions
(``iscrowd: 1``, uncompressed RLE) and a few images without objects are included.

Category ids are COCO-style and non-contiguous (``book`` = 84 as in COCO) so that the mapping
from file ids to contiguous labels is exercised.

Usage::

    python -m src.synthetic --out FineTune/synthetic --train 200 --val 50 --seed 0

The same seed gives byte-identical files (fixed JPEG quality, JSON with sorted keys).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from src.annotations import MIN_POLYGON_POINTS, rasterize
from src.config import COCO_INSTANCE_SET, COCO_SPLITS

LOGGER = logging.getLogger(__name__)

# (COCO id, name); the default recipe uses book, disc and triangle, ``cross`` is a distractor.
CATEGORIES: Tuple[Tuple[int, str], ...] = ((12, "cross"), (44, "disc"), (84, "book"), (90, "triangle"))
CATEGORY_ID = {name: cat_id for cat_id, name in CATEGORIES}
# Fill colours (RGB) of the "solid" style: one flat colour per category, used by tests to check
# that masks sit on the pixels of their object after every transform.
SOLID_COLORS: Dict[str, Tuple[int, int, int]] = {
    "book": (230, 40, 40), "disc": (40, 80, 240), "triangle": (40, 220, 60), "cross": (240, 220, 30)}
STYLES = ("textured", "solid")

SPLITS = COCO_SPLITS
# Image ids of a split start after this offset (train: 1.., val: 100001..), so ids are not 0-based
# positions.
IMAGE_ID_OFFSET = dict(zip(SPLITS, (0, 100000)))
JPEG_QUALITY = 92
MIN_SIDE, MAX_SIDE = 240, 480  # image side lengths in pixels
MIN_OBJECTS, MAX_OBJECTS = 1, 5
# Object size relative to the short image side.
MIN_REL_SIZE, MAX_REL_SIZE = 0.15, 0.5
# An occluded object keeps at least this fraction of its own area visible.
MIN_VISIBLE_FRACTION = 0.4
MIN_VISIBLE_PIXELS = 64
PLACEMENT_TRIES = 20
# Every EMPTY_EVERY-th image (position EMPTY_EVERY-1, 2*EMPTY_EVERY-1, ...) has no objects.
EMPTY_EVERY = 25
CROWD_PROBABILITY = 0.06
CROWD_MEMBERS = (5, 9)
# Contour points are pixel indices; +0.5 puts them on pixel centres in the continuous
# coordinates pycocotools rasterises in, so the decoded polygon never leaves the object.
PIXEL_CENTRE = 0.5


@dataclass
class _Instance:
    category: str
    full_mask: np.ndarray  # [H, W] bool, the object's pixels before occlusion
    iscrowd: int = 0


# ---------------------------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------------------------

def _background(rng: np.random.Generator, height: int, width: int, style: str) -> np.ndarray:
    """Muted gradient + noise, RGB uint8 [H, W, 3]."""
    base = rng.uniform(90, 160, size=3)
    tilt = rng.uniform(-40, 40, size=(2, 3))
    ys = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None, None]
    xs = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :, None]
    img = base[None, None, :] + ys * tilt[0] + xs * tilt[1]
    img = np.broadcast_to(img, (height, width, 3)).astype(np.float32)
    if style == "textured":
        coarse = rng.normal(0, 18, size=(height // 16 + 2, width // 16 + 2, 3)).astype(np.float32)
        img = img + cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        img = img + rng.normal(0, 6, size=(height, width, 3)).astype(np.float32)
    # Grey it a bit so that the saturated object colours stand out.
    grey = img.mean(axis=2, keepdims=True)
    img = 0.5 * img + 0.5 * grey
    return np.clip(img, 0, 255).astype(np.uint8)


def _object_color(rng: np.random.Generator, category: str, style: str) -> Tuple[int, int, int]:
    if style == "solid":
        return SOLID_COLORS[category]
    hue_ranges = {"book": (0, 20), "disc": (100, 125), "triangle": (45, 75), "cross": (25, 35)}
    lo, hi = hue_ranges[category]
    hsv = np.array([[[rng.integers(lo, hi), rng.integers(170, 256), rng.integers(170, 256)]]], np.uint8)
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


def _shape_points(rng: np.random.Generator, category: str, cx: float, cy: float,
                  size: float) -> np.ndarray:
    """Outline of one object as int32 points [K, 2] (x, y)."""
    angle = rng.uniform(0, 2 * np.pi)
    if category == "book":
        # A rectangle (aspect 1.3..1.8) seen in a mild perspective: a random quad.
        w = size / rng.uniform(1.3, 1.8)
        h = size
        corners = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
        corners = corners + rng.uniform(-0.08, 0.08, size=(4, 2)) * size
        rot = rng.uniform(-0.6, 0.6)
    elif category == "triangle":
        angles = angle + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.25, 0.25, size=3)
        corners = np.stack([np.cos(angles), np.sin(angles)], axis=1) * size * 0.58
        rot = 0.0
    elif category == "cross":
        a, b = size / 2, size / 6
        corners = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a],
                            [-b, b], [-a, b], [-a, -b], [-b, -b]])
        rot = angle
    else:
        raise ValueError(f"no polygon outline for category '{category}'")
    c, s = np.cos(rot), np.sin(rot)
    corners = corners @ np.array([[c, s], [-s, c]])
    return np.round(corners + [cx, cy]).astype(np.int32)


def _draw_object(rng: np.random.Generator, category: str, height: int, width: int, style: str,
                 scale: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one object on its own canvas.

    Returns:
        (full_mask [H, W] uint8 0/1, rgb [H, W, 3] uint8: the object's appearance where the mask is 1)
    """
    short = min(height, width)
    size = rng.uniform(MIN_REL_SIZE, MAX_REL_SIZE) * short * scale
    margin = size * 0.35
    cx = rng.uniform(margin, width - margin)
    cy = rng.uniform(margin, height - margin)
    color = _object_color(rng, category, style)
    mask = np.zeros((height, width), np.uint8)
    rgb = np.zeros((height, width, 3), np.uint8)
    if category == "disc":
        axes = (max(int(size / 2), 2), max(int(size / 2 * rng.uniform(0.6, 1.0)), 2))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, angle, 0, 360, 1, -1)
        rgb[:] = color
        if style == "textured":
            # A darker inner ring makes the disc read as a disc, not a blob.
            inner = (max(axes[0] // 2, 1), max(axes[1] // 2, 1))
            dark = tuple(int(v * 0.6) for v in color)
            cv2.ellipse(rgb, (int(cx), int(cy)), inner, angle, 0, 360, dark, max(int(size / 30), 1))
    else:
        pts = _shape_points(rng, category, cx, cy, size)
        cv2.fillPoly(mask, [pts], 1)
        rgb[:] = color
        if category == "book" and style == "textured":
            _book_texture(rng, rgb, pts, color, size)
    return mask, rgb


def _book_texture(rng: np.random.Generator, rgb: np.ndarray, pts: np.ndarray,
                  color: Tuple[int, int, int], size: float) -> None:
    """Spine stripes along one long edge and a light title block with 'text' lines."""
    p0, p1, p2, p3 = pts.astype(np.float32)
    dark = tuple(int(v * 0.45) for v in color)
    light = (235, 225, 200)
    thickness = max(int(size / 40), 1)
    # Spine stripes: lines parallel to the p0-p3 edge, close to it.
    for t in (0.06, 0.12, 0.18):
        a = p0 + (p1 - p0) * t
        b = p3 + (p2 - p3) * t
        cv2.line(rgb, tuple(int(v) for v in a), tuple(int(v) for v in b), dark, thickness)
    # Title block: a quad in the upper middle of the cover, with dark lines of "text".
    def at(u: float, v: float) -> np.ndarray:
        top = p0 + (p1 - p0) * u
        bottom = p3 + (p2 - p3) * u
        return top + (bottom - top) * v

    block = np.array([at(0.32, 0.15), at(0.88, 0.15), at(0.88, 0.42), at(0.32, 0.42)])
    cv2.fillPoly(rgb, [np.round(block).astype(np.int32)], light)
    n_lines = int(rng.integers(2, 4))
    for k in range(n_lines):
        v = 0.2 + 0.18 * (k + 0.5) / n_lines * 1.2
        u_end = rng.uniform(0.6, 0.84)
        a, b = at(0.36, v), at(u_end, v)
        cv2.line(rgb, tuple(int(x) for x in a), tuple(int(x) for x in b), dark, thickness)


# ---------------------------------------------------------------------------------------------
# annotations
# ---------------------------------------------------------------------------------------------

def _segmentation(visible: np.ndarray) -> Tuple[object, bool]:
    """Polygons of a visible region, or compressed RLE when it is fragmented / has holes.

    Returns:
        (segmentation as stored in the JSON, True if it is RLE)
    """
    contours, hierarchy = cv2.findContours(visible, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    has_hole = hierarchy is not None and bool((hierarchy[0][:, 3] >= 0).any())
    if len(contours) == 1 and not has_hole and len(contours[0]) >= MIN_POLYGON_POINTS:
        poly = (contours[0].reshape(-1, 2).astype(np.float64) + PIXEL_CENTRE).ravel()
        return [[round(float(v), 1) for v in poly]], False
    return _compressed_rle(visible), True


def _compressed_rle(mask: np.ndarray) -> Dict[str, object]:
    """COCO compressed RLE of an [H, W] uint8 mask, as stored in the JSON (ASCII counts)."""
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _uncompressed_rle(mask: np.ndarray) -> Dict[str, object]:
    """COCO uncompressed RLE (column-major run lengths starting with a run of 0s)."""
    flat = mask.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(r) for r in runs]}


def _bbox_of(mask: np.ndarray) -> List[float]:
    """COCO [x, y, w, h] of the pixels of ``mask`` (continuous coordinates, no +1 trick)."""
    ys, xs = np.nonzero(mask)
    x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]


def _make_image(rng: np.random.Generator, empty: bool, style: str, object_scale: float = 1.0
                ) -> Tuple[np.ndarray, List[Tuple[str, np.ndarray, int]]]:
    """One image and its annotations (objects ``object_scale`` times the usual size).

    Returns:
        (rgb [H, W, 3] uint8, [(category name, visible mask [H, W] uint8, iscrowd), ...])
    """
    width = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    height = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    img = _background(rng, height, width, style)
    if empty:
        return img, []
    names = [name for _, name in CATEGORIES]
    # The distractor is rarer than the three real classes.
    probs = np.array([0.1 if n == "cross" else 0.3 for n in names])
    owner = np.full((height, width), -1, np.int32)  # index of the instance visible at a pixel
    instances: List[_Instance] = []
    n_objects = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    for _ in range(n_objects):
        category = names[int(rng.choice(len(names), p=probs / probs.sum()))]
        for _try in range(PLACEMENT_TRIES):
            mask, rgb = _draw_object(rng, category, height, width, style, scale=object_scale)
            on = mask.astype(bool)
            if not on.any():
                continue
            ok = True
            for k, inst in enumerate(instances):
                still = np.count_nonzero((owner == k) & ~on)
                if still < MIN_VISIBLE_FRACTION * np.count_nonzero(inst.full_mask):
                    ok = False
                    break
            if ok:
                owner[on] = len(instances)
                img[on] = rgb[on]
                instances.append(_Instance(category, on))
                break
    annotations = [(inst.category, (owner == k).astype(np.uint8), 0) for k, inst in enumerate(instances)]
    if rng.random() < CROWD_PROBABILITY:
        # A crowd: several small discs of one class annotated as one region, drawn on top.
        category = names[1 + int(rng.integers(0, len(names) - 1))]
        crowd = np.zeros((height, width), np.uint8)
        for _ in range(int(rng.integers(*CROWD_MEMBERS))):
            mask, rgb = _draw_object(rng, "disc", height, width, style, scale=0.3 * object_scale)
            if category != "disc":
                rgb[:] = _object_color(rng, category, style)
            on = mask.astype(bool)
            img[on] = rgb[on]
            crowd |= mask
        # Objects under the crowd lose those pixels.
        annotations = [(c, m & (1 - crowd), z) for c, m, z in annotations]
        annotations.append((category, crowd, 1))
    annotations = [a for a in annotations if int(a[1].sum()) >= MIN_VISIBLE_PIXELS]
    return img, annotations


def generate_split(out_dir: str, split: str, num_images: int, seed: int, style: str = "textured",
                   first_ann_id: int = 1, object_scale: float = 1.0) -> Dict[str, object]:
    """Write ``num_images`` JPEGs to ``out_dir/split`` and return the split's COCO dict.

    Args:
        out_dir: dataset root; images go to ``out_dir/<split>/<image id, 12 digits>.jpg``.
        split: ``train2017`` or ``val2017`` (selects the image-id range and the random stream).
        num_images: number of images.
        seed: random seed; the same seed gives the same images and annotations.
        style: ``textured`` (default) or ``solid`` (flat colours of SOLID_COLORS, for tests).
        first_ann_id: id of the first annotation.
        object_scale: object size factor (e.g. 0.15 for a set of tiny objects); 1.0 gives the
            usual set, byte for byte.

    Returns:
        COCO dict with ``images``, ``annotations``, ``categories`` (boxes in [x, y, w, h]).
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got '{style}'")
    image_dir = os.path.join(out_dir, split)
    os.makedirs(image_dir, exist_ok=True)
    split_key = SPLITS.index(split) if split in SPLITS else len(SPLITS)
    images, annotations = [], []
    ann_id = first_ann_id
    for i in range(num_images):
        rng = np.random.default_rng([seed, split_key, i])
        empty = (i % EMPTY_EVERY) == EMPTY_EVERY - 1
        img, objects = _make_image(rng, empty, style, object_scale)
        image_id = IMAGE_ID_OFFSET.get(split, 0) + i + 1
        file_name = f"{image_id:012d}.jpg"
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode image {file_name}")
        with open(os.path.join(image_dir, file_name), "wb") as handle:
            handle.write(encoded.tobytes())
        height, width = img.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for category, visible, iscrowd in objects:
            if iscrowd:
                segmentation: object = _uncompressed_rle(visible)
                stored = visible
            else:
                segmentation, is_rle = _segmentation(visible)
                # Box and area describe the mask a reader decodes from the stored polygon (a
                # traced polygon drops 1-px slivers), so they agree exactly with it.
                stored = visible if is_rle else rasterize(segmentation, height, width)
                if stored.sum() < MIN_VISIBLE_PIXELS:
                    segmentation = _compressed_rle(visible)
                    stored = visible
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": CATEGORY_ID[category],
                "bbox": _bbox_of(stored), "area": float(stored.sum()), "iscrowd": iscrowd,
                "segmentation": segmentation})
            ann_id += 1
    categories = [{"id": cat_id, "name": name, "supercategory": "shape"} for cat_id, name in CATEGORIES]
    return {"info": {"description": "synthetic shapes (src/synthetic.py)", "seed": seed},
            "licenses": [], "images": images, "annotations": annotations, "categories": categories}


def write_json(data: Dict[str, object], path: str) -> None:
    """Write JSON deterministically (sorted keys, no whitespace variation)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, sort_keys=True, separators=(",", ":"))


def generate(out_dir: str, num_train: int, num_val: int, seed: int = 0, style: str = "textured",
             object_scale: float = 1.0) -> None:
    """Write the whole set: ``out_dir/{train2017,val2017}/*.jpg`` + ``annotations/instances_*.json``."""
    first_ann_id = 1
    for split, count in zip(SPLITS, (num_train, num_val)):
        data = generate_split(out_dir, split, count, seed, style, first_ann_id, object_scale)
        first_ann_id += len(data["annotations"])
        write_json(data, os.path.join(out_dir, COCO_INSTANCE_SET.format(split)))
        LOGGER.info("%s: %d images, %d annotations", split, count, len(data["annotations"]))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the synthetic COCO-format shapes set.")
    parser.add_argument("--out", required=True, help="output folder (dataset root)")
    parser.add_argument("--train", type=int, default=200, help="number of training images")
    parser.add_argument("--val", type=int, default=50, help="number of validation images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--style", choices=STYLES, default="textured",
                        help="'solid' draws each category in one flat colour (for tests)")
    parser.add_argument("--object_scale", type=float, default=1.0,
                        help="object size factor, e.g. 0.15 for tiny objects (1.0: the usual set)")
    args = parser.parse_args(argv)
    if args.train < 0 or args.val < 0:
        parser.error("--train and --val must not be negative")
    if args.object_scale <= 0:
        parser.error("--object_scale must be positive")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    generate(args.out, args.train, args.val, args.seed, args.style, args.object_scale)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
