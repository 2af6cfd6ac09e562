"""Turn other annotation sources into a self-contained COCO-format folder.

Sub-commands::

    # cut one category out of a COCO 2017 download (images are copied)
    python -m src.importers coco-subset --coco_dir /data/coco2017 --category book \
        --num_images 180 --out FineTune/coco_book [--splits train2017 val2017] [--seed 0]

    # convert a VGG Image Annotator (VIA) 2.x project with polygon regions: one category, or
    # one per value of a region attribute
    python -m src.importers via --via_json project.json --image_dir images/ \
        --out FineTune/my_set (--category balloon | --class_attribute NAME) [--split train2017]

    # cut a seeded validation split out of one COCO export (stratified by class, images
    # without instances kept); writes OUT/train.json and OUT/val.json, images stay where they are
    python -m src.importers split --ann_file export.json --out DIR [--val_fraction 0.2] [--seed 0]

    # corrected annotations back from an annotation tool, and new images into a training set
    # (src/corrections.py)
    python -m src.importers coco-tool --coco_json instances_default.json --image_dir images/ --out NEW
    python -m src.importers labelme --json_dir labelme/ --out NEW [--classes book,disc]
    python -m src.importers merge --into FineTune/my_set --add NEW [--split train2017]

All but ``split`` write a folder with ``<split>/`` images and ``annotations/instances_<split>.json``
as :class:`src.dataset.COCOSubDataset` expects; ``split`` writes two annotation files for the
config keys ``train_ann_file`` / ``val_ann_file`` (with the export's image folder as
``train_image_dir`` / ``val_image_dir``). Images are what a viewer shows (EXIF orientation
applied, src/image_header.py): sizes are written upright, as annotation tools show the photos.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from src import corrections
from src.annotations import DatasetError, MIN_POLYGON_POINTS, load_coco_json, read_annotations, read_json
from src.config import COCO_INSTANCE_SET, COCO_SPLITS
from src.engine.runtime import EXIT_BAD_INPUT, EXIT_OK
from src.image_header import ImageHeaderError, read_image_size

LOGGER = logging.getLogger(__name__)

DEFAULT_SPLITS = COCO_SPLITS
DEFAULT_VIA_CATEGORY_ID = 1
DEFAULT_VAL_FRACTION = 0.2
SPLIT_FILES = ("train.json", "val.json")


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


def _upright_size(path: str) -> Tuple[int, int]:
    """(height, width) of an image as a viewer shows it (EXIF orientation applied)."""
    try:
        size = read_image_size(path)
    except (OSError, ImageHeaderError) as e:
        raise DatasetError(f"{path}: corrupt or unreadable image: {e}") from e
    if size is None:  # a format without a header reader: decode it (OpenCV turns it upright)
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise DatasetError(f"{path}: corrupt or unreadable image")
        size = img.shape[:2]
    return size


def _via_class(via_json: str, filename: str, index: int, region: Dict[str, Any], attribute: str) -> str:
    """The value of ``attribute`` in a region's attributes: text, or the one ticked checkbox."""
    value = region.get("region_attributes", {}).get(attribute)
    if isinstance(value, dict):  # checkboxes: {option: true}
        ticked = [k for k, v in value.items() if v]
        value = ticked[0] if len(ticked) == 1 else None
    if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value).strip() == "":
        raise DatasetError(f"{via_json}: {filename} region {index}: no single value of region attribute "
                           f"'{attribute}' (found {region.get('region_attributes', {}).get(attribute)!r})")
    return str(value).strip()


def via_to_coco(via_json: str, image_dir: str, out_dir: str, category: Optional[str],
                split: str = DEFAULT_SPLITS[0], category_id: int = DEFAULT_VIA_CATEGORY_ID,
                class_attribute: Optional[str] = None) -> int:
    """Convert a VIA project into ``out_dir/<split>/`` + ``annotations/instances_<split>.json``.

    Every region becomes one instance of ``category`` (id ``category_id``), or with
    ``class_attribute`` of the category named by that region attribute's value (one category
    per value, ids 1.. in sorted order of the names). Images are copied; their size is read from
    the file as a viewer shows it (VIA's ``size`` is the file size in bytes).

    Returns:
        Number of annotations written.
    """
    if (category is None) == (class_attribute is None):
        raise DatasetError("give either --category or --class_attribute")
    entries = _via_entries(via_json)
    dst_dir = os.path.join(out_dir, split)
    os.makedirs(dst_dir, exist_ok=True)
    images, regions_of_images = [], []
    for image_id, entry in enumerate(sorted(entries, key=lambda e: e["filename"]), start=1):
        filename = entry["filename"]
        src = os.path.join(image_dir, filename)
        if not os.path.isfile(src):
            raise DatasetError(f"{src}: image file not found (listed in {via_json})")
        height, width = _upright_size(src)
        shutil.copy2(src, os.path.join(dst_dir, filename))
        images.append({"id": image_id, "file_name": filename, "height": height, "width": width})
        regions = entry["regions"]
        region_list = list(regions.values()) if isinstance(regions, dict) else list(regions)  # VIA 1.x: dict
        regions_of_images.append(region_list)
    if class_attribute is None:
        categories = {category: category_id}
    else:
        names = sorted({_via_class(via_json, img["file_name"], k, region, class_attribute)
                        for img, region_list in zip(images, regions_of_images)
                        for k, region in enumerate(region_list)})
        categories = {name: cat_id for cat_id, name in enumerate(names, start=1)}
    annotations = []
    for img, region_list in zip(images, regions_of_images):
        height, width, filename = img["height"], img["width"], img["file_name"]
        for index, region in enumerate(region_list):
            poly = _via_polygon(via_json, filename, index, region.get("shape_attributes", {}))
            pts = np.array(poly, np.float64).reshape(-1, 2)
            if not np.isfinite(pts).all():
                raise DatasetError(f"{via_json}: {filename} region {index}: coordinates that are not finite")
            pts[:, 0] = np.clip(pts[:, 0], 0, width)
            pts[:, 1] = np.clip(pts[:, 1], 0, height)
            x1, y1 = pts.min(axis=0)
            x2, y2 = pts.max(axis=0)
            area = 0.5 * abs(float(np.dot(pts[:, 0], np.roll(pts[:, 1], 1))
                                   - np.dot(pts[:, 1], np.roll(pts[:, 0], 1))))
            name = category if class_attribute is None else _via_class(via_json, filename, index, region,
                                                                       class_attribute)
            annotations.append({
                "id": len(annotations) + 1, "image_id": img["id"], "category_id": categories[name],
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "area": area,
                "iscrowd": 0, "segmentation": [[float(v) for v in pts.ravel()]]})
    data = {"info": {"description": f"converted from {os.path.basename(via_json)}"}, "licenses": [],
            "images": images, "annotations": annotations,
            "categories": [{"id": cat_id, "name": name, "supercategory": name} for name, cat_id in categories.items()]}
    _write_json(data, os.path.join(out_dir, COCO_INSTANCE_SET.format(split)))
    LOGGER.info("%s: %d images, %d regions, %d categories -> %s", via_json, len(images), len(annotations),
                len(categories), out_dir)
    return len(annotations)


# ---------------------------------------------------------------------------------------------
# A validation split cut out of one export
# ---------------------------------------------------------------------------------------------

def split_export(ann_file: str, out_dir: str, val_fraction: float = DEFAULT_VAL_FRACTION,
                 seed: int = 0) -> Dict[str, int]:
    """Write ``out_dir/train.json`` and ``out_dir/val.json``: the export's images split in two.

    Stratified by class: each image belongs to the stratum of its rarest class (the class in
    the fewest images, read through src/annotations.py, so dropped annotations do not count),
    images without instances to a stratum of their own (they are kept); from each stratum,
    ``round(val_fraction * size)`` images drawn with ``seed`` go to val. The same file and seed
    give the same split. Both files keep the export's entries as they are (file names, ids,
    categories), so ``train_image_dir``/``val_image_dir`` are the export's image folder.

    Returns:
        {"train": images, "val": images}.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"--val_fraction must be between 0 and 1, got {val_fraction}")
    data = load_coco_json(ann_file)
    clean = read_annotations(ann_file)
    classes_of = {image.info["id"]: sorted({int(label) for label in image.rows[image.rows[:, 5] == 0, 4]})
                  for image in clean.images}
    images_with = {}
    for labels in classes_of.values():
        for label in labels:
            images_with[label] = images_with.get(label, 0) + 1
    strata: Dict[int, List[Any]] = {}
    for image_id, labels in classes_of.items():  # stratum 0: no instance
        rarest = min(labels, key=lambda label: (images_with[label], label)) if labels else 0
        strata.setdefault(rarest, []).append(image_id)
    rng = np.random.default_rng(seed)
    val_ids = set()
    for stratum in sorted(strata):
        members = sorted(strata[stratum], key=lambda i: (str(type(i)), i))
        order = rng.permutation(len(members))
        val_ids.update(members[k] for k in order[:int(round(val_fraction * len(members)))])
    if not val_ids or len(val_ids) == len(classes_of):
        raise DatasetError(f"{ann_file}: {len(classes_of)} images cannot be split with --val_fraction "
                           f"{val_fraction} (one side would be empty)")
    counts = {}
    for name, in_val in zip(SPLIT_FILES, (False, True)):
        images = [img for img in data["images"] if (img["id"] in val_ids) == in_val]
        kept = {img["id"] for img in images}
        part = dict(data, images=images,
                    annotations=[a for a in data["annotations"] if a["image_id"] in kept])
        _write_json(part, os.path.join(out_dir, name))
        counts[name.split(".")[0]] = len(images)
    LOGGER.info("%s: %d train and %d val images (seed %d, stratified by class) -> %s", ann_file,
                counts["train"], counts["val"], seed, out_dir)
    return counts


def _add_split_parser(sub) -> None:
    p_split = sub.add_parser("split", help="cut a seeded, class-stratified validation split out of one COCO export")
    p_split.add_argument("--ann_file", required=True, help="the COCO export")
    p_split.add_argument("--out", required=True, help="folder for train.json and val.json")
    p_split.add_argument("--val_fraction", type=float, default=DEFAULT_VAL_FRACTION)
    p_split.add_argument("--seed", type=int, default=0)


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
    p_via.add_argument("--category", default=None, help="the category of every region")
    p_via.add_argument("--class_attribute", default=None,
                       help="region attribute whose value names each region's category (one per value)")
    p_via.add_argument("--category_id", type=int, default=DEFAULT_VIA_CATEGORY_ID)
    p_via.add_argument("--split", default=DEFAULT_SPLITS[0])
    _add_split_parser(sub)
    corrections.add_commands(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command in corrections.COMMANDS:
            corrections.run_command(args)
        elif args.command == "coco-subset":
            coco_subset(args.coco_dir, args.category, args.num_images, args.out, args.splits, args.seed)
        elif args.command == "split":
            split_export(args.ann_file, args.out, args.val_fraction, args.seed)
        else:
            via_to_coco(args.via_json, args.image_dir, args.out, args.category, args.split, args.category_id,
                        args.class_attribute)
    except DatasetError as e:
        LOGGER.error("%s", e)
        return EXIT_BAD_INPUT
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
