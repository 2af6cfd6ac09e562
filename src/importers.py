"""Turn other annotation sources into a self-contained COCO-format folder.

Sub-commands::

    # cut one category out of a COCO 2017 download (images are copied)
    python -m src.importers coco-subset --coco_dir /data/coco2017 --category book \
        --num_images 180 --out FineTune/coco_book [--splits train2017 val2017] [--seed 0]

    # convert a VGG Image Annotator (VIA) 2.x project with polygon regions
    python -m src.importers via --via_json project.json --image_dir images/ \
        --out FineTune/my_set --category balloon [--split train2017]

    # corrected annotations back from an annotation tool, and new images into a training set
    # (src/corrections.py)
    python -m src.importers coco-tool --coco_json instances_default.json --image_dir images/ --out NEW
    python -m src.importers labelme --json_dir labelme/ --out NEW [--classes book,disc]
    python -m src.importers merge --into FineTune/my_set --add NEW [--split train2017]

The output folder has ``<split>/`` images and ``annotations/instances_<split>.json`` as
:class:`src.dataset.COCOSubDataset` expects.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np

from src import corrections
from src.annotations import DatasetError, MIN_POLYGON_POINTS, load_coco_json, read_json
from src.config import COCO_INSTANCE_SET, COCO_SPLITS
from src.engine.runtime import EXIT_BAD_INPUT, EXIT_OK

LOGGER = logging.getLogger(__name__)

DEFAULT_SPLITS = COCO_SPLITS
DEFAULT_VIA_CATEGORY_ID = 1


def _write_json(data: Dict[str, Any], path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, sort_keys=True, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------
# COCO subset
# ---------------------------------------------------------------------------------------------

def coco_subset(coco_dir: str, category: str, num_images: int, out_dir: str,
                splits: Sequence[str] = DEFAULT_SPLITS, seed: Optional[int] = None) -> Dict[str, int]:
    """Copy up to ``num_images`` images per split that contain ``category`` into ``out_dir``.

    Args:
        coco_dir: COCO root with ``<split>/`` images and ``annotations/instances_<split>.json``.
        category: category name (e.g. ``book``).
        num_images: images per split; fewer if the split has fewer.
        out_dir: output root.
        splits: split names.
        seed: None takes the images with the smallest ids; an int draws a random sample.

    Returns:
        {split: number of images written}.
    """
    if num_images <= 0:
        raise DatasetError(f"--num_images must be positive, got {num_images}")
    written = {}
    for split in splits:
        ann_file = os.path.join(coco_dir, COCO_INSTANCE_SET.format(split))
        data = load_coco_json(ann_file)
        cats = [c for c in data["categories"] if c["name"] == category]
        if not cats:
            names = sorted({c["name"] for c in data["categories"]})
            raise DatasetError(f"{ann_file}: category '{category}' is not in the file; available: "
                               f"{', '.join(names)}")
        cat_id = cats[0]["id"]
        anns = [a for a in data["annotations"] if a["category_id"] == cat_id]
        with_cat = sorted({a["image_id"] for a in anns})
        if seed is None:
            chosen = with_cat[:num_images]
        else:
            chosen = sorted(random.Random(seed).sample(with_cat, min(num_images, len(with_cat))))
        if not chosen:
            raise DatasetError(f"{ann_file}: no image contains category '{category}'")
        chosen_set = set(chosen)
        images = [img for img in data["images"] if img["id"] in chosen_set]
        images.sort(key=lambda img: img["id"])
        dst_dir = os.path.join(out_dir, split)
        os.makedirs(dst_dir, exist_ok=True)
        for img in images:
            src = os.path.join(coco_dir, split, img["file_name"])
            if not os.path.isfile(src):
                raise DatasetError(f"{src}: image file not found (image id {img['id']})")
            shutil.copy2(src, os.path.join(dst_dir, img["file_name"]))
        subset = {
            "info": data.get("info", {}), "licenses": data.get("licenses", []),
            "images": images,
            "annotations": sorted((a for a in anns if a["image_id"] in chosen_set), key=lambda a: a["id"]),
            "categories": cats[:1]}
        _write_json(subset, os.path.join(out_dir, COCO_INSTANCE_SET.format(split)))
        LOGGER.info("%s: %d images, %d '%s' annotations -> %s", split, len(images),
                    len(subset["annotations"]), category, out_dir)
        written[split] = len(images)
    return written


# ---------------------------------------------------------------------------------------------
# VIA
# ---------------------------------------------------------------------------------------------

def _via_entries(via_json: str) -> List[Dict[str, Any]]:
    """The per-image entries of a VIA project (2.x ``_via_img_metadata``) or export (flat)."""
    data = read_json(via_json, "VIA file")
    if not isinstance(data, dict):
        raise DatasetError(f"{via_json}: not a VIA project (top level is a {type(data).__name__})")
    table = data.get("_via_img_metadata", data)
    if not isinstance(table, dict):
        raise DatasetError(f"{via_json}: not a VIA project ('_via_img_metadata' is not an object)")
    entries = []
    for key, entry in table.items():
        if not isinstance(entry, dict) or "filename" not in entry or "regions" not in entry:
            raise DatasetError(f"{via_json}: not a VIA project (entry '{key}' has no 'filename'/'regions')")
        entries.append(entry)
    if not entries:
        raise DatasetError(f"{via_json}: the VIA project has no images")
    return entries


def _via_polygon(via_json: str, filename: str, index: int, shape: Dict[str, Any]) -> List[float]:
    """Flat COCO polygon [x0, y0, x1, y1, ...] of one VIA region."""
    kind = shape.get("name")
    if kind in ("polygon", "polyline"):
        xs, ys = shape.get("all_points_x", []), shape.get("all_points_y", [])
        if len(xs) != len(ys):
            raise DatasetError(f"{via_json}: {filename} region {index}: all_points_x has {len(xs)} "
                               f"values but all_points_y has {len(ys)}")
        if len(xs) < MIN_POLYGON_POINTS:
            raise DatasetError(f"{via_json}: {filename} region {index}: polygon with {len(xs)} points "
                               f"(need at least {MIN_POLYGON_POINTS})")
        # VIA stores image coordinates of the clicked vertices; they are used as they are.
        return [float(v) for xy in zip(xs, ys) for v in xy]
    if kind == "rect":
        x, y, w, h = (float(shape[k]) for k in ("x", "y", "width", "height"))
        return [x, y, x + w, y, x + w, y + h, x, y + h]
    raise DatasetError(f"{via_json}: {filename} region {index}: unsupported shape '{kind}' "
                       f"(polygon and rect are supported)")


def via_to_coco(via_json: str, image_dir: str, out_dir: str, category: str,
                split: str = DEFAULT_SPLITS[0], category_id: int = DEFAULT_VIA_CATEGORY_ID) -> int:
    """Convert a VIA project into ``out_dir/<split>/`` + ``annotations/instances_<split>.json``.

    Every region becomes one instance of ``category``. Images are copied; their size is read
    from the file (VIA's ``size`` is the file size in bytes).

    Returns:
        Number of annotations written.
    """
    entries = _via_entries(via_json)
    dst_dir = os.path.join(out_dir, split)
    os.makedirs(dst_dir, exist_ok=True)
    images, annotations = [], []
    for image_id, entry in enumerate(sorted(entries, key=lambda e: e["filename"]), start=1):
        filename = entry["filename"]
        src = os.path.join(image_dir, filename)
        if not os.path.isfile(src):
            raise DatasetError(f"{src}: image file not found (listed in {via_json})")
        img = cv2.imread(src, cv2.IMREAD_UNCHANGED)
        if img is None:
            raise DatasetError(f"{src}: corrupt or unreadable image")
        height, width = img.shape[:2]
        shutil.copy2(src, os.path.join(dst_dir, filename))
        images.append({"id": image_id, "file_name": filename, "height": height, "width": width})
        regions = entry["regions"]
        region_list = list(regions.values()) if isinstance(regions, dict) else list(regions)  # VIA 1.x: dict
        for index, region in enumerate(region_list):
            poly = _via_polygon(via_json, filename, index, region.get("shape_attributes", {}))
            pts = np.array(poly, np.float64).reshape(-1, 2)
            pts[:, 0] = np.clip(pts[:, 0], 0, width)
            pts[:, 1] = np.clip(pts[:, 1], 0, height)
            x1, y1 = pts.min(axis=0)
            x2, y2 = pts.max(axis=0)
            area = 0.5 * abs(float(np.dot(pts[:, 0], np.roll(pts[:, 1], 1))
                                   - np.dot(pts[:, 1], np.roll(pts[:, 0], 1))))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "area": area,
                "iscrowd": 0, "segmentation": [[float(v) for v in pts.ravel()]]})
    data = {"info": {"description": f"converted from {os.path.basename(via_json)}"}, "licenses": [],
            "images": images, "annotations": annotations,
            "categories": [{"id": category_id, "name": category, "supercategory": category}]}
    _write_json(data, os.path.join(out_dir, COCO_INSTANCE_SET.format(split)))
    LOGGER.info("%s: %d images, %d regions -> %s", via_json, len(images), len(annotations), out_dir)
    return len(annotations)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Import annotations into a COCO-format folder.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_coco = sub.add_parser("coco-subset", help="copy the images of one category out of COCO")
    p_coco.add_argument("--coco_dir", required=True)
    p_coco.add_argument("--category", required=True)
    p_coco.add_argument("--num_images", type=int, required=True, help="images per split")
    p_coco.add_argument("--out", required=True)
    p_coco.add_argument("--splits", nargs="+", default=list(DEFAULT_SPLITS))
    p_coco.add_argument("--seed", type=int, default=None,
                        help="draw a random sample (default: the images with the smallest ids)")
    p_via = sub.add_parser("via", help="convert a VGG Image Annotator 2.x project")
    p_via.add_argument("--via_json", required=True)
    p_via.add_argument("--image_dir", required=True)
    p_via.add_argument("--out", required=True)
    p_via.add_argument("--category", required=True)
    p_via.add_argument("--category_id", type=int, default=DEFAULT_VIA_CATEGORY_ID)
    p_via.add_argument("--split", default=DEFAULT_SPLITS[0])
    corrections.add_commands(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command in corrections.COMMANDS:
            corrections.run_command(args)
        elif args.command == "coco-subset":
            coco_subset(args.coco_dir, args.category, args.num_images, args.out, args.splits, args.seed)
        else:
            via_to_coco(args.via_json, args.image_dir, args.out, args.category, args.split, args.category_id)
    except DatasetError as e:
        LOGGER.error("%s", e)
        return EXIT_BAD_INPUT
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
