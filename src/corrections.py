"""Corrected annotations back in: what an annotation tool exports after correction becomes a
COCO-format set (``<split>/`` images + ``annotations/instances_<split>.json``), and a set of newly
labelled images is merged into an existing training set.

* :func:`tool_coco_to_set`: a COCO file as CVAT ("COCO 1.0", ``instances_default.json``) or Label
  Studio ("COCO" export, ``result.json``, category ids from 0, file names under ``images/`` or with
  an upload prefix) write it; categories are renumbered 1.. by their order in the file.
* :func:`labelme_to_set`: a folder of labelme JSON files (polygon and rectangle shapes; the shapes
  of one instance share a ``group_id``).
* :func:`merge_sets`: appends the images of one set to another with fresh image and annotation
  ids; an image already in the target (same bytes) is skipped, a new image whose file name is
  taken gets a numbered name.

The command-line wiring is in ``src/importers.py`` (``coco-tool``, ``labelme``, ``merge``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import shutil
from typing import Any, Dict, List, Optional, Sequence, Tuple

from src.annotations import DatasetError, MIN_POLYGON_POINTS, load_coco_json, read_json
from src.config import COCO_INSTANCE_SET
from src.image_header import ImageHeaderError, read_image_size
from src.prelabels import polygon_area, write_json_atomic

LOGGER = logging.getLogger(__name__)

# Label Studio prefixes uploaded files with 8 hex digits and a dash ("1a2b3c4d-photo.jpg").
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(.+)$")
LABELME_SHAPES = ("polygon", "rectangle")


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _image_size(path: str) -> Tuple[int, int]:
    """(height, width) of an image file; DatasetError naming the file if it is not one."""
    try:
        size = read_image_size(path)
    except (OSError, ImageHeaderError) as e:
        raise DatasetError(f"{path}: not a readable image ({e})") from e
    if size is None:
        import cv2

        image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if image is None:
            raise DatasetError(f"{path}: corrupt or unreadable image")
        size = image.shape[:2]
    return int(size[0]), int(size[1])


def _bbox_of(polygons: Sequence[Sequence[float]]) -> List[float]:
    xs = [v for p in polygons for v in p[0::2]]
    ys = [v for p in polygons for v in p[1::2]]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def _write_set(out_dir: str, split: str, images: List[Dict[str, Any]], annotations: List[Dict[str, Any]],
               categories: List[Dict[str, Any]], description: str) -> str:
    path = os.path.join(out_dir, COCO_INSTANCE_SET.format(split))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json_atomic({"info": {"description": description}, "licenses": [], "images": images,
                       "annotations": annotations, "categories": categories}, path)
    return path


# ---------------------------------------------------------------------------------------------
# COCO as the tools export it
# ---------------------------------------------------------------------------------------------

def _find_image(image_dir: str, file_name: str) -> Optional[str]:
    """The file a tool's ``file_name`` names inside ``image_dir``: as written, by base name, or by
    base name without Label Studio's upload prefix."""
    base = os.path.basename(file_name.replace("\\", "/"))
    candidates = [os.path.join(image_dir, file_name), os.path.join(image_dir, base)]
    match = _UPLOAD_PREFIX.match(base)
    if match:
        candidates.append(os.path.join(image_dir, match.group(1)))
    return next((c for c in candidates if os.path.isfile(c)), None)


def tool_coco_to_set(coco_json: str, image_dir: str, out_dir: str, split: str,
                     keep_crowd: bool = False) -> Dict[str, int]:
    """Turn a COCO file exported by CVAT or Label Studio into ``out_dir/<split>/`` + its annotation file.

    Images are looked up in ``image_dir`` (see :func:`_find_image`) and copied under their base
    name (without an upload prefix). Image and annotation ids are renumbered from 1; categories
    keep their names and order, ids 1... Annotations of images the file does not list are an error.
    CVAT exports its mask (brush) shapes as RLE with ``iscrowd: 1``; unless ``keep_crowd``, such
    RLE annotations become ordinary instances (``iscrowd: 0``), counted in a warning.

    Returns:
        {"images": n, "annotations": m}.
    """
    data = load_coco_json(coco_json)
    categories = sorted(data["categories"], key=lambda c: c["id"])
    cat_map = {c["id"]: new_id for new_id, c in enumerate(categories, start=1)}
    dst_dir = os.path.join(out_dir, split)
    os.makedirs(dst_dir, exist_ok=True)
    image_map: Dict[Any, int] = {}
    images = []
    for entry in data["images"]:
        src = _find_image(image_dir, str(entry["file_name"]))
        if src is None:
            raise DatasetError(f"{coco_json}: image '{entry['file_name']}' (id {entry['id']}) not found in {image_dir}")
        name = os.path.basename(src)
        if any(img["file_name"] == name for img in images):
            raise DatasetError(f"{coco_json}: two images are named '{name}' once their folders are dropped")
        height, width = _image_size(src)
        if (int(entry["height"]), int(entry["width"])) != (height, width):
            raise DatasetError(f"{coco_json}: image '{entry['file_name']}' is listed as {entry['height']}x"
                               f"{entry['width']} but {src} is {height}x{width}")
        shutil.copy2(src, os.path.join(dst_dir, name))
        image_map[entry["id"]] = len(images) + 1
        images.append({"id": len(images) + 1, "file_name": name, "height": height, "width": width})
    annotations, uncrowded = [], 0
    for ann in data["annotations"]:
        if ann["image_id"] not in image_map:
            raise DatasetError(f"{coco_json}: annotation {ann['id']} refers to image id {ann['image_id']}, "
                               f"which is not in 'images'")
        if ann["category_id"] not in cat_map:
            raise DatasetError(f"{coco_json}: annotation {ann['id']} has category id {ann['category_id']}, "
                               f"which is not in 'categories'")
        new = {k: v for k, v in ann.items() if k not in ("id", "image_id", "category_id")}
        new.update(id=len(annotations) + 1, image_id=image_map[ann["image_id"]],
                   category_id=cat_map[ann["category_id"]])
        new.setdefault("iscrowd", 0)
        if new["iscrowd"] and isinstance(new.get("segmentation"), dict) and not keep_crowd:
            new["iscrowd"] = 0
            uncrowded += 1
        annotations.append(new)
    if uncrowded:
        LOGGER.warning("%s: %d RLE masks marked iscrowd=1 (how CVAT exports mask shapes) imported as instances; "
                       "--keep_crowd keeps them as crowd regions", coco_json, uncrowded)
    cats = [{"id": cat_map[c["id"]], "name": c["name"], "supercategory": c.get("supercategory", "")}
            for c in categories]
    path = _write_set(out_dir, split, images, annotations, cats, f"converted from {os.path.basename(coco_json)}")
    LOGGER.info("%s: %d images, %d annotations -> %s", coco_json, len(images), len(annotations), path)
    return {"images": len(images), "annotations": len(annotations)}


# ---------------------------------------------------------------------------------------------
# labelme
# ---------------------------------------------------------------------------------------------

def _labelme_polygon(json_path: str, index: int, shape: Dict[str, Any]) -> List[float]:
    """Flat COCO polygon of one labelme shape."""
    kind = shape.get("shape_type") or "polygon"
    points = shape.get("points")
    if kind not in LABELME_SHAPES:
        raise DatasetError(f"{json_path}: shape {index} ('{shape.get('label')}'): unsupported shape_type "
                           f"'{kind}' ({' and '.join(LABELME_SHAPES)} are supported)")
    if not isinstance(points, list) or any(not isinstance(p, (list, tuple)) or len(p) != 2 for p in points):
        raise DatasetError(f"{json_path}: shape {index}: 'points' must be a list of [x, y] pairs")
    if kind == "rectangle":
        if len(points) != 2:
            raise DatasetError(f"{json_path}: shape {index}: a rectangle needs 2 points, got {len(points)}")
        (xa, ya), (xb, yb) = points
        x1, x2, y1, y2 = min(xa, xb), max(xa, xb), min(ya, yb), max(ya, yb)
        return [float(v) for v in (x1, y1, x2, y1, x2, y2, x1, y2)]
    if len(points) < MIN_POLYGON_POINTS:
        raise DatasetError(f"{json_path}: shape {index}: polygon with {len(points)} points "
                           f"(need at least {MIN_POLYGON_POINTS})")
    return [float(v) for p in points for v in p]


def _labelme_image(json_path: str, data: Dict[str, Any], image_dir: Optional[str], dst_dir: str) -> str:
    """Copy (or decode from ``imageData``) the image of a labelme file into ``dst_dir``; returns its name."""
    image_path = data.get("imagePath")
    if not isinstance(image_path, str) or not image_path:
        raise DatasetError(f"{json_path}: no 'imagePath'")
    base = os.path.basename(image_path.replace("\\", "/"))
    candidates = [os.path.join(os.path.dirname(json_path), image_path)]
    if image_dir:
        candidates.append(os.path.join(image_dir, base))
    src = next((c for c in candidates if os.path.isfile(c)), None)
    dst = os.path.join(dst_dir, base)
    if src is not None:
        shutil.copy2(src, dst)
    elif data.get("imageData"):
        try:
            payload = base64.b64decode(data["imageData"], validate=True)
        except (binascii.Error, ValueError) as e:
            raise DatasetError(f"{json_path}: 'imageData' is not valid base64") from e
        with open(dst, "wb") as handle:
            handle.write(payload)
    else:
        raise DatasetError(f"{json_path}: image '{image_path}' not found (looked in {', '.join(candidates)}) "
                           f"and the file has no imageData")
    return base


def labelme_to_set(json_dir: str, out_dir: str, split: str, class_names: Sequence[str] = (),
                   image_dir: Optional[str] = None) -> Dict[str, int]:
    """Turn a folder of labelme JSON files into ``out_dir/<split>/`` + its annotation file.

    Shapes with the same label and a ``group_id`` form one instance (several polygons); every
    other shape is an instance of its own. The image is found through ``imagePath`` (relative to
    the JSON file), else by base name in ``image_dir``, else decoded from ``imageData``.

    Args:
        class_names: category names in id order (1..); empty = the labels found, sorted.

    Returns:
        {"images": n, "annotations": m}.
    """
    if not os.path.isdir(json_dir):
        raise DatasetError(f"labelme folder not found: {json_dir}")
    files = sorted(f for f in os.listdir(json_dir) if f.lower().endswith(".json"))
    if not files:
        raise DatasetError(f"{json_dir}: no labelme .json files")
    dst_dir = os.path.join(out_dir, split)
    os.makedirs(dst_dir, exist_ok=True)
    images, instances = [], []  # instances: (image id, label, [polygons], json path)
    for name in files:
        json_path = os.path.join(json_dir, name)
        data = read_json(json_path, "labelme file")
        if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
            raise DatasetError(f"{json_path}: not a labelme file (no list 'shapes')")
        file_name = _labelme_image(json_path, data, image_dir, dst_dir)
        if any(img["file_name"] == file_name for img in images):
            raise DatasetError(f"{json_path}: image '{file_name}' is already used by another labelme file")
        height, width = _image_size(os.path.join(dst_dir, file_name))
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        groups: Dict[Tuple[str, Any], List[List[float]]] = {}
        for index, shape in enumerate(data["shapes"]):
            label = shape.get("label") if isinstance(shape, dict) else None
            if not isinstance(label, str) or not label:
                raise DatasetError(f"{json_path}: shape {index} has no label")
            polygon = _labelme_polygon(json_path, index, shape)
            group = shape.get("group_id")
            key = (label, group) if group is not None else (label, f"shape {index}")
            groups.setdefault(key, []).append(polygon)
        instances.extend((image_id, label, polygons, json_path) for (label, _), polygons in groups.items())
    names = list(class_names) or sorted({label for _, label, _, _ in instances})
    unknown = sorted({label for _, label, _, _ in instances} - set(names))
    if unknown:
        raise DatasetError(f"{json_dir}: label '{unknown[0]}' is not one of the classes {', '.join(names)}")
    cat_ids = {name: cat_id for cat_id, name in enumerate(names, start=1)}
    annotations = [{"id": ann_id, "image_id": image_id, "category_id": cat_ids[label], "segmentation": polygons,
                    "bbox": _bbox_of(polygons), "area": sum(polygon_area(p) for p in polygons), "iscrowd": 0}
                   for ann_id, (image_id, label, polygons, _) in enumerate(instances, start=1)]
    cats = [{"id": cat_id, "name": name, "supercategory": ""} for name, cat_id in cat_ids.items()]
    path = _write_set(out_dir, split, images, annotations, cats, f"converted from labelme files in {json_dir}")
    LOGGER.info("%s: %d images, %d instances -> %s", json_dir, len(images), len(annotations), path)
    return {"images": len(images), "annotations": len(annotations)}


# ---------------------------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------------------------

def _free_name(name: str, taken: set) -> str:
    stem, ext = os.path.splitext(name)
    number = 1
    while f"{stem}_{number}{ext}" in taken:
        number += 1
    return f"{stem}_{number}{ext}"


def merge_sets(into_root: str, into_split: str, new_root: str, new_split: str) -> Dict[str, int]:
    """Append the images and annotations of ``new_root/<new_split>`` to ``into_root/<into_split>``.

    Image and annotation ids continue after the target's largest; categories are matched by name
    (a name the target lacks is added with the next id, and a warning). An image whose bytes are
    already in the target is skipped with its annotations; a file name already taken gets a
    ``_N`` suffix. The target's annotation file is rewritten atomically after the images are copied.

    Returns:
        {"added_images": n, "added_annotations": m, "skipped_duplicates": k}.
    """
    into_ann = os.path.join(into_root, COCO_INSTANCE_SET.format(into_split))
    new_ann = os.path.join(new_root, COCO_INSTANCE_SET.format(new_split))
    target, extra = load_coco_json(into_ann), load_coco_json(new_ann)
    into_dir, new_dir = os.path.join(into_root, into_split), os.path.join(new_root, new_split)
    if os.path.abspath(into_ann) == os.path.abspath(new_ann):
        raise DatasetError(f"{new_ann}: cannot merge a set into itself")
    cat_ids = {c["name"]: c["id"] for c in target["categories"]}
    cat_map = {}
    for cat in extra["categories"]:
        if cat["name"] not in cat_ids:
            cat_ids[cat["name"]] = max(cat_ids.values(), default=0) + 1
            target["categories"].append({"id": cat_ids[cat["name"]], "name": cat["name"],
                                         "supercategory": cat.get("supercategory", "")})
            LOGGER.warning("%s: category '%s' is new to %s; added with id %d (add it to coco_classes to train on it)",
                           new_ann, cat["name"], into_ann, cat_ids[cat["name"]])
        cat_map[cat["id"]] = cat_ids[cat["name"]]
    digests = {}
    for img in target["images"]:
        path = os.path.join(into_dir, img["file_name"])
        if os.path.isfile(path):
            digests[_file_digest(path)] = img["file_name"]
    taken = {img["file_name"] for img in target["images"]}
    next_image_id = max((img["id"] for img in target["images"]), default=0) + 1
    next_ann_id = max((a["id"] for a in target["annotations"]), default=0) + 1
    image_map, skipped, copies = {}, 0, []
    for img in extra["images"]:
        src = os.path.join(new_dir, img["file_name"])
        if not os.path.isfile(src):
            raise DatasetError(f"{src}: image file not found (image id {img['id']} of {new_ann})")
        digest = _file_digest(src)
        if digest in digests:
            LOGGER.info("%s: already in %s as %s; skipped", src, into_dir, digests[digest])
            skipped += 1
            continue
        name = os.path.basename(img["file_name"])
        name = _free_name(name, taken) if name in taken else name
        taken.add(name)
        digests[digest] = name
        copies.append((src, os.path.join(into_dir, name)))
        image_map[img["id"]] = next_image_id
        target["images"].append(dict(img, id=next_image_id, file_name=name))
        next_image_id += 1
    added = 0
    for ann in extra["annotations"]:
        if ann["image_id"] not in image_map:
            continue
        if ann["category_id"] not in cat_map:
            raise DatasetError(f"{new_ann}: annotation {ann['id']} has category id {ann['category_id']}, "
                               f"which is not in 'categories'")
        target["annotations"].append(dict(ann, id=next_ann_id, image_id=image_map[ann["image_id"]],
                                          category_id=cat_map[ann["category_id"]]))
        next_ann_id += 1
        added += 1
    os.makedirs(into_dir, exist_ok=True)
    for src, dst in copies:
        shutil.copy2(src, dst)
    write_json_atomic(target, into_ann)
    LOGGER.info("%s: +%d images, +%d annotations from %s (%d duplicates skipped)", into_ann, len(copies), added,
                new_ann, skipped)
    return {"added_images": len(copies), "added_annotations": added, "skipped_duplicates": skipped}


# ---------------------------------------------------------------------------------------------
# command line (sub-commands of ``python -m src.importers``)
# ---------------------------------------------------------------------------------------------

COMMANDS = ("coco-tool", "labelme", "merge")


def add_commands(subparsers) -> None:
    """Add the ``coco-tool``, ``labelme`` and ``merge`` sub-commands to ``src.importers``' parser."""
    p_tool = subparsers.add_parser("coco-tool", help="a COCO file exported by CVAT or Label Studio after correction")
    p_tool.add_argument("--coco_json", required=True, help="CVAT: annotations/instances_default.json; "
                                                            "Label Studio: result.json")
    p_tool.add_argument("--image_dir", required=True, help="folder with the images the file names")
    p_tool.add_argument("--out", required=True)
    p_tool.add_argument("--split", default="train2017")
    p_tool.add_argument("--keep_crowd", action="store_true",
                        help="keep RLE masks marked iscrowd=1 as crowd regions (default: instances, as CVAT "
                             "marks every mask shape so)")
    p_labelme = subparsers.add_parser("labelme", help="a folder of labelme JSON files")
    p_labelme.add_argument("--json_dir", required=True)
    p_labelme.add_argument("--out", required=True)
    p_labelme.add_argument("--split", default="train2017")
    p_labelme.add_argument("--classes", default="",
                           help="comma-separated class names in category-id order (default: the labels, sorted)")
    p_labelme.add_argument("--image_dir", default=None, help="where to look for images not found via imagePath")
    p_merge = subparsers.add_parser("merge", help="append a labelled set to a training set (fresh ids, no duplicates)")
    p_merge.add_argument("--into", required=True, help="COCO-format folder of the training set (changed in place)")
    p_merge.add_argument("--add", required=True, help="COCO-format folder of the newly labelled images")
    p_merge.add_argument("--split", default="train2017", help="split of --into that receives the images")
    p_merge.add_argument("--add_split", default="train2017", help="split of --add to take")


def run_command(args) -> None:
    """Run the sub-command ``args.command`` (one of :data:`COMMANDS`)."""
    if args.command == "coco-tool":
        tool_coco_to_set(args.coco_json, args.image_dir, args.out, args.split, args.keep_crowd)
    elif args.command == "labelme":
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
        labelme_to_set(args.json_dir, args.out, args.split, classes, args.image_dir)
    else:
        merge_sets(args.into, args.split, args.add, args.add_split)
