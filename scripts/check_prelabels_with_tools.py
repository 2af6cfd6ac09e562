"""Open the pre-labels of ``predict.py --export coco labelme`` with the annotation tools' own readers.

    python scripts/check_prelabels_with_tools.py PRELABEL_DIR IMAGE_DIR

Run with a Python that has ``datumaro`` (CVAT's dataset library), ``labelme`` and ``pycocotools``
installed: not the project's environment (datumaro 1.13 needs NumPy 2, labelme pulls Qt and
onnxruntime), e.g. a venv outside the repository::

    python3 -m venv /tmp/venv-tools && /tmp/venv-tools/bin/pip install datumaro labelme pycocotools
    QT_QPA_PLATFORM=offscreen /tmp/venv-tools/bin/python scripts/check_prelabels_with_tools.py OUT IMAGES

Checks, per image and instance (in the order of ``annotations/instances_default.json``, whose masks the test
suite compares with the model's own, tests/test_prelabels.py):

* datumaro's ``coco_instances`` importer (given the COCO layout it requires, ``annotations/`` beside
  ``images/default/``, made with links in a temporary folder) finds every image and instance with the same class, and
  its polygons rasterise to the pycocotools mask of the instance (IoU >= 0.95);
* labelme's ``LabelFile`` loads every ``labelme/*.json`` (image found, size checked), its shapes
  grouped by ``group_id`` give the same classes, and ``labelme.utils.shape_to_mask`` draws
  masks with IoU >= 0.95 against the pycocotools ones.

Prints one line per reader and exits 0 when every check holds, 1 otherwise, 2 for bad arguments.
This script imports nothing from the project.
"""

import argparse
import os
import sys

MIN_IOU = 0.95
COCO_FILE = os.path.join("annotations", "instances_default.json")  # src/prelabels.py's names, repeated: the project is not importable here
LABELME_DIR = "labelme"


def _iou(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return float((a & b).sum()) / max(int((a | b).sum()), 1)


def reference_masks(coco):
    """{file name: [(class name, mask)]} of the COCO file, in annotation-id order."""
    return {info["file_name"]: [(coco.cats[a["category_id"]]["name"], coco.annToMask(a))
                                for a in sorted(coco.imgToAnns[image_id], key=lambda a: a["id"])]
            for image_id, info in coco.imgs.items()}


def check_datumaro(coco_file, image_dir, reference):
    """Problems found reading the COCO file with datumaro (empty list = none)."""
    import tempfile

    import datumaro as dm
    import numpy as np
    from pycocotools import mask as mask_utils

    layout = tempfile.mkdtemp(prefix="prelabels_datumaro_")
    os.makedirs(os.path.join(layout, "annotations"))
    os.makedirs(os.path.join(layout, "images"))
    os.symlink(os.path.abspath(coco_file), os.path.join(layout, "annotations", "instances_default.json"))
    os.symlink(os.path.abspath(image_dir), os.path.join(layout, "images", "default"))
    dataset = dm.Dataset.import_from(layout, "coco_instances")
    labels = dataset.categories()[dm.AnnotationType.label]
    problems, instances = [], 0
    items = {os.path.basename(item.media.path) if item.media is not None and item.media.path else item.id: item
             for item in dataset}
    for name, expected in reference.items():
        item = items.get(name) or items.get(os.path.splitext(name)[0])
        if item is None:
            problems.append(f"datumaro: image {name} missing")
            continue
        groups = {}
        for ann in item.annotations:
            if ann.type == dm.AnnotationType.polygon:
                groups.setdefault(ann.id, (labels[ann.label].name, []))[1].append(list(ann.points))
        found = [groups[k] for k in sorted(groups)]
        if [c for c, _ in found] != [c for c, _ in expected]:
            problems.append(f"datumaro: {name}: classes {[c for c, _ in found]} != {[c for c, _ in expected]}")
            continue
        for (_, polygons), (_, want) in zip(found, expected):
            height, width = want.shape
            got = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)))
            iou = _iou(np.asarray(got), want)
            instances += 1
            if iou < MIN_IOU:
                problems.append(f"datumaro: {name}: instance IoU {iou:.3f} < {MIN_IOU}")
    print(f"datumaro {dm.__version__}: {len(items)} images, {instances} instances read from {coco_file}")
    return problems


def check_labelme(folder, reference):
    """Problems found loading the labelme files with labelme's own loader (empty list = none)."""
    import labelme
    import numpy as np
    from labelme import LabelFile
    from labelme.utils import shape_to_mask

    problems, files, instances = [], 0, 0
    for name, expected in reference.items():
        path = os.path.join(folder, os.path.splitext(name)[0] + ".json")
        label_file = LabelFile(path)  # raises if the file, its image or its size is wrong
        files += 1
        height, width = expected[0][1].shape if expected else (0, 0)
        groups, order = {}, []
        for index, shape in enumerate(label_file.shapes):
            key = shape["group_id"] if shape["group_id"] is not None else f"shape {index}"
            if key not in groups:
                order.append(key)
                groups[key] = (shape["label"], np.zeros((height, width), bool))
            groups[key][1][...] |= shape_to_mask((height, width), shape["points"], shape["shape_type"])
        found = [groups[k] for k in order]
        if [c for c, _ in found] != [c for c, _ in expected]:
            problems.append(f"labelme: {name}: classes {[c for c, _ in found]} != {[c for c, _ in expected]}")
            continue
        for (_, got), (_, want) in zip(found, expected):
            iou = _iou(got, want)
            instances += 1
            if iou < MIN_IOU:
                problems.append(f"labelme: {name}: instance IoU {iou:.3f} < {MIN_IOU}")
    print(f"labelme {labelme.__version__}: LabelFile loaded {files} files, {instances} instances from {folder}")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prelabel_dir", help="--out folder of predict.py --export coco labelme")
    parser.add_argument("image_dir", help="--input folder of that predict.py run")
    args = parser.parse_args(argv)
    coco_file = os.path.join(args.prelabel_dir, COCO_FILE)
    if not os.path.isfile(coco_file):
        parser.error(f"{coco_file} not found: run predict.py --export coco labelme --out {args.prelabel_dir}")
    from pycocotools.coco import COCO

    reference = reference_masks(COCO(coco_file))
    problems = check_datumaro(coco_file, args.image_dir, reference)
    problems += check_labelme(os.path.join(args.prelabel_dir, LABELME_DIR), reference)
    for problem in problems:
        print("FAIL", problem)
    print("all readers agree" if not problems else f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
