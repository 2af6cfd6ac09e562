"""Pre-labels: the model's detections written as annotations an annotation tool imports for correction.

Three formats (``predict.py --export FORMAT``):

* ``coco``        ``annotations/instances_default.json``: one COCO instances file, where CVAT's
  "COCO 1.0" import and datumaro look for it (zip the ``annotations`` folder for CVAT); every
  detection is one annotation with a polygon segmentation and an extra ``score``.
* ``labelstudio`` ``prelabels_label_studio.json``: Label Studio tasks with ``predictions``
  (``polygonlabels`` results, points in percent of the image, a score per region), plus
  ``label_studio_config.xml``, the labelling interface those predictions fit.
* ``labelme``     ``labelme/NAME.json`` per image: polygon shapes (``imagePath`` relative to the JSON).

Masks become polygons (:func:`mask_to_polygons`): each connected part is traced on the pixel
edges, so rasterising the polygon (pycocotools, OpenCV, labelme) gives back the same pixels, then
simplified with Douglas-Peucker at ``tolerance`` pixels (``DEFAULT_TOLERANCE``: no vertex moves
the outline more than that). A hole is cut into its part with a zero-width slit, so one polygon
carries it in every format. COCO and labelme keep every part of a mask (labelme: shapes sharing
a ``group_id``); Label Studio has no grouping of regions, so it receives the largest part only.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import cv2
import numpy as np

EXPORT_FORMATS = ("coco", "labelstudio", "labelme")
DEFAULT_TOLERANCE = 0.5  # pixels: Douglas-Peucker tolerance of the polygon simplification
COCO_FILE = os.path.join("annotations", "instances_default.json")
LABEL_STUDIO_FILE = "prelabels_label_studio.json"
LABEL_STUDIO_CONFIG_FILE = "label_studio_config.xml"
LABELME_DIR = "labelme"
# Names of the Label Studio control and object tags; predictions must refer to them.
LS_FROM_NAME = "label"
LS_TO_NAME = "image"
LABELME_VERSION = "5.5.0"  # labelme's file format version the files follow
# Parts are traced on a grid twice as fine, so that the outline runs on pixel edges (see module doc).
_TRACE_SCALE = 2


@dataclass
class Instance:
    """One detection as polygons: ``parts`` are flat [x0, y0, x1, y1, ...] lists in image pixels,
    the largest first; ``label`` is the contiguous class index (1..)."""

    label: int
    score: float
    parts: List[List[float]]


@dataclass
class ImagePrelabels:
    """Pre-labels of one image: its path, size and instances."""

    path: str
    height: int
    width: int
    instances: List[Instance] = field(default_factory=list)


def polygon_area(flat: Sequence[float]) -> float:
    """Area of a polygon given as a flat [x0, y0, x1, y1, ...] list (shoelace formula)."""
    pts = np.asarray(flat, np.float64).reshape(-1, 2)
    return 0.5 * abs(float(np.dot(pts[:, 0], np.roll(pts[:, 1], 1)) - np.dot(pts[:, 1], np.roll(pts[:, 0], 1))))


def _trace(binary: np.ndarray, mode: int):
    """Contours of a uint8 image and their hierarchy (empty hierarchy if none)."""
    contours, hierarchy = cv2.findContours(binary, mode, cv2.CHAIN_APPROX_SIMPLE)
    return contours, (hierarchy[0] if hierarchy is not None else np.zeros((0, 4), np.int32))


def _simplify(contour: np.ndarray, tolerance: float) -> np.ndarray:
    """[N, 2] float vertices in image pixels of a contour traced on the fine grid."""
    if tolerance > 0:
        contour = cv2.approxPolyDP(contour, tolerance * _TRACE_SCALE, True)
    # A fine-grid pixel centre (u + 0.5) / scale lies a quarter pixel inside the coarse pixel's edge.
    return (contour.reshape(-1, 2).astype(np.float64) + 0.5) / _TRACE_SCALE


def _cut_in_hole(outer: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """One ring: ``outer``, a slit to the nearest vertex of ``hole``, around the hole and back."""
    dist = ((outer[:, None, :] - hole[None, :, :]) ** 2).sum(axis=2)
    i, j = np.unravel_index(int(np.argmin(dist)), dist.shape)
    around_hole = np.concatenate([hole[j:], hole[: j + 1]])
    return np.concatenate([outer[: i + 1], around_hole, outer[i:]])


def mask_to_polygons(mask: np.ndarray, tolerance: float = DEFAULT_TOLERANCE) -> List[List[float]]:
    """Polygons of a binary mask, one per connected part (8-connected), the largest first.

    Args:
        mask: [H, W] binary mask.
        tolerance: Douglas-Peucker tolerance in pixels (0 = keep every corner of the pixel outline).

    Returns:
        Flat [x0, y0, x1, y1, ...] lists in image pixels (pixel (r, c) covers [c, c+1) x [r, r+1));
        holes are cut into their part with a zero-width slit. Empty for an empty mask.
    """
    fine = np.kron((np.asarray(mask) > 0).astype(np.uint8), np.ones((_TRACE_SCALE, _TRACE_SCALE), np.uint8))
    contours, hierarchy = _trace(fine, cv2.RETR_CCOMP)
    parts = []
    for index, contour in enumerate(contours):
        if hierarchy[index][3] != -1:  # a hole border; handled with its part below
            continue
        part = np.zeros_like(fine)
        cv2.drawContours(part, contours, index, 1, thickness=cv2.FILLED)
        ring = _simplify(contour, tolerance)
        # The hole's own pixels, traced like a part, so its outline also runs on pixel edges.
        holes, _ = _trace(part & (1 - fine), cv2.RETR_EXTERNAL)
        for hole in holes:
            hole_ring = _simplify(hole, tolerance)
            if len(hole_ring) >= 3:
                ring = _cut_in_hole(ring, hole_ring)
        if len(ring) >= 3:
            parts.append([round(float(v), 2) for v in ring.ravel()])
    parts.sort(key=polygon_area, reverse=True)
    return parts


def image_prelabels(path: str, height: int, width: int, detections,
                    tolerance: float = DEFAULT_TOLERANCE) -> ImagePrelabels:
    """The detections of one image (``src.evaluation.results.Detections``) as polygons; a detection
    whose mask is empty is left out."""
    record = ImagePrelabels(path, int(height), int(width))
    for score, label, mask in zip(detections.scores, detections.labels, detections.masks):
        parts = mask_to_polygons(mask, tolerance)
        if parts:
            record.instances.append(Instance(int(label), float(score), parts))
    return record


def _bbox(parts: Sequence[Sequence[float]]) -> List[float]:
    pts = np.concatenate([np.asarray(p, np.float64).reshape(-1, 2) for p in parts])
    x1, y1 = pts.min(axis=0)
    x2, y2 = pts.max(axis=0)
    return [round(float(x1), 2), round(float(y1), 2), round(float(x2 - x1), 2), round(float(y2 - y1), 2)]


def to_coco(records: Sequence[ImagePrelabels], class_names: Sequence[str]) -> Dict[str, object]:
    """COCO instances dict: images by file name, categories = ``class_names[1:]`` with ids 1.., one
    annotation per instance (all its parts; ``score`` kept as an extra key)."""
    images, annotations = [], []
    for image_id, record in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": os.path.basename(record.path), "height": record.height,
                       "width": record.width})
        for inst in record.instances:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": inst.label,
                                "segmentation": inst.parts, "bbox": _bbox(inst.parts),
                                "area": round(sum(polygon_area(p) for p in inst.parts), 2), "iscrowd": 0,
                                "score": round(inst.score, 4)})
    categories = [{"id": label, "name": name, "supercategory": ""} for label, name in enumerate(class_names) if label]
    return {"info": {"description": "pre-labels written by predict.py --export coco"}, "licenses": [],
            "images": images, "annotations": annotations, "categories": categories}


def label_studio_config(class_names: Sequence[str]) -> str:
    """Label Studio labelling interface (XML) for polygon labels of ``class_names[1:]``."""
    labels = "\n".join(f'    <Label value="{name}"/>' for name in class_names[1:])
    return (f'<View>\n  <Image name="{LS_TO_NAME}" value="$image"/>\n'
            f'  <PolygonLabels name="{LS_FROM_NAME}" toName="{LS_TO_NAME}" strokeWidth="2">\n{labels}\n'
            f'  </PolygonLabels>\n</View>\n')


def to_label_studio(records: Sequence[ImagePrelabels], class_names: Sequence[str], image_url_prefix: str,
                    model_version: str) -> List[Dict[str, object]]:
    """Label Studio tasks, one per image, each with one prediction holding a polygon region per
    instance (its largest part; points in percent of the image size).

    Args:
        image_url_prefix: prepended to the image's file name to form the task's ``image`` URL
            (e.g. ``/data/local-files/?d=photos/`` for Label Studio's local file storage).
        model_version: shown by Label Studio beside the predictions.
    """
    tasks = []
    for record in records:
        results = []
        for inst in record.instances:
            pts = np.asarray(inst.parts[0], np.float64).reshape(-1, 2)
            percent = [[round(100.0 * x / record.width, 4), round(100.0 * y / record.height, 4)] for x, y in pts]
            results.append({"id": uuid.uuid4().hex[:10], "from_name": LS_FROM_NAME, "to_name": LS_TO_NAME,
                            "type": "polygonlabels", "original_width": record.width,
                            "original_height": record.height, "image_rotation": 0, "score": round(inst.score, 4),
                            "value": {"points": percent, "closed": True,
                                      "polygonlabels": [class_names[inst.label]]}})
        score = float(np.mean([i.score for i in record.instances])) if record.instances else 0.0
        tasks.append({"data": {"image": image_url_prefix + os.path.basename(record.path)},
                      "predictions": [{"model_version": model_version, "score": round(score, 4), "result": results}]})
    return tasks


def to_labelme(record: ImagePrelabels, class_names: Sequence[str], json_dir: str) -> Dict[str, object]:
    """labelme file content of one image: a polygon shape per part; the parts of one instance share
    a ``group_id`` (None for single-part instances); the score is in the shape's description."""
    shapes = []
    for index, inst in enumerate(record.instances):
        group = index if len(inst.parts) > 1 else None
        for part in inst.parts:
            shapes.append({"label": class_names[inst.label], "points": np.asarray(part).reshape(-1, 2).tolist(),
                           "group_id": group, "description": f"score {inst.score:.4f}", "shape_type": "polygon",
                           "flags": {}, "mask": None})
    return {"version": LABELME_VERSION, "flags": {}, "shapes": shapes,
            "imagePath": os.path.relpath(os.path.abspath(record.path), os.path.abspath(json_dir)),
            "imageData": None, "imageHeight": record.height, "imageWidth": record.width}


def write_json_atomic(data, path: str) -> None:
    """Write JSON through a temporary file and a rename (no half-written file on failure)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


def write_prelabels(records: Sequence[ImagePrelabels], class_names: Sequence[str], out_dir: str,
                    formats: Sequence[str], image_url_prefix: str = "",
                    model_version: str = "maskrcnn") -> Dict[str, str]:
    """Write the pre-labels of ``records`` in every format of ``formats`` into ``out_dir``.

    Returns:
        {format: written file or folder}.
    """
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown:
        raise ValueError(f"unknown pre-label format '{unknown[0]}'; choose from {', '.join(EXPORT_FORMATS)}")
    os.makedirs(out_dir, exist_ok=True)
    written: Dict[str, str] = {}
    if "coco" in formats:
        written["coco"] = os.path.join(out_dir, COCO_FILE)
        os.makedirs(os.path.dirname(written["coco"]), exist_ok=True)
        write_json_atomic(to_coco(records, class_names), written["coco"])
    if "labelstudio" in formats:
        written["labelstudio"] = os.path.join(out_dir, LABEL_STUDIO_FILE)
        write_json_atomic(to_label_studio(records, class_names, image_url_prefix, model_version), written["labelstudio"])
        with open(os.path.join(out_dir, LABEL_STUDIO_CONFIG_FILE), "w", encoding="utf-8") as handle:
            handle.write(label_studio_config(class_names))
    if "labelme" in formats:
        folder = os.path.join(out_dir, LABELME_DIR)
        os.makedirs(folder, exist_ok=True)
        for record in records:
            stem = os.path.splitext(os.path.basename(record.path))[0]
            write_json_atomic(to_labelme(record, class_names, folder), os.path.join(folder, f"{stem}.json"))
        written["labelme"] = folder
    return written

