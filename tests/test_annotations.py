"""src/annotations.py, the one annotation reader: defects dropped/repaired and counted in one line
per split (or a one-line error with strict_annotations); every defect the training reader tolerates
evaluates to the AP of the cleaned file (which eval.py writes and pycocotools reads); non-finite and
huge coordinates are dropped and counted without a crash under a memory limit; duplicate categories
and bad image sizes are one-line errors; images in grayscale / RGBA / 16 bit load as RGB;
unreadable images are reported by name when the dataset is built."""

import contextlib
import io
import json
import logging
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from src.annotations import DEFECT_KINDS, DatasetError, read_annotations
from src.config import REPO_ROOT
from src.dataset import COCOSubDataset
from src.evaluation.coco_eval import COCOEvaluator
from src.evaluation.results import Detections, detections_to_coco
from src.image_header import ImageHeaderError, read_image_size
from helpers import (coco_annotation, coco_image, dataset_config, painted, rect_ann, tiny_config, write_coco_set,
                     write_json)

GOOD = (10, 10, 30, 30)  # the box of annotation 1, a well-formed book in every case


def _empty_rle(h=40, w=60):
    rle = mask_utils.encode(np.zeros((h, w), np.uint8, order="F"))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


# name -> (the defective annotation 2 (image 1 unless said), defect kind, expected rows of item 0
# as (x1, y1, x2, y2, label), strict error pattern)
CASES = {
    "short_polygon_part": (
        coco_annotation(2, 1, 44, (40, 5, 50, 15), segm=[[40, 5, 50, 5, 50, 15, 40, 15], [1, 1, 2, 2]]),
        "polygon_part", [[10, 10, 30, 30, 1], [40, 5, 50, 15, 2]],
        r"annotation 2 \(image 1\) has a polygon with 2 points \(need at least 3\)"),
    "odd_coordinates_only_part": (
        coco_annotation(2, 1, 44, (40, 5, 50, 15), segm=[[40, 5, 50, 5, 50, 15, 40]]),
        "polygon_part", [[10, 10, 30, 30, 1]],
        r"annotation 2 \(image 1\) has a polygon with an odd number of coordinates \(7\)"),
    "empty_polygon_list": (
        coco_annotation(2, 1, 44, (40, 5, 50, 15), segm=[]),
        "no_segmentation", [[10, 10, 30, 30, 1]],
        r"annotation 2 \(image 1\) has an empty polygon list"),
    "rle_of_another_size": (
        coco_annotation(2, 1, 44, (40, 5, 50, 15), segm=_empty_rle(20, 20)),
        "no_segmentation", [[10, 10, 30, 30, 1]],
        r"annotation 2 \(image 1\) has an RLE of size \[20, 20\], not the image size \[40, 60\]"),
    "zero_area_box": (
        coco_annotation(2, 1, 44, (40, 5, 40, 15)),
        "zero_area_box", [[10, 10, 30, 30, 1]],
        r"annotation 2 \(image 1\) has a zero-area box \[40, 5, 0, 10\]"),
    "empty_mask": (
        coco_annotation(2, 1, 44, (40, 5, 50, 15), segm=_empty_rle()),
        "empty_mask", [[10, 10, 30, 30, 1]],
        r"annotation 2 \(image 1\) has an empty mask"),
    "box_far_from_mask": (
        dict(coco_annotation(2, 1, 44, (40, 5, 50, 15)), bbox=[0, 30, 12, 8]),
        "box_from_mask", [[10, 10, 30, 30, 1], [40, 5, 50, 15, 2]],
        r"annotation 2 \(image 1\) has bbox \[0, 30, 12, 8\] far from its mask's extent "
        r"\[40\.0, 5\.0, 10\.0, 10\.0\] \(IoU 0\.00\)"),
    # A NaN, an Infinity or a null (how JavaScript exports write NaN) says so, and nothing else.
    "nan_box": (
        dict(coco_annotation(2, 1, 44, (40, 5, 50, 15)), bbox=[float("nan"), 5, 10, 10]),
        "non_finite", [[10, 10, 30, 30, 1]],
        r"annotation 2 \(image 1\) has bbox \[NaN, 5, 10, 10\] with a value that is not a finite number"),
    "null_box_height": (
        dict(coco_annotation(2, 1, 44, (40, 5, 50, 15)), bbox=[40, 5, 10, None]),
        "non_finite", [[10, 10, 30, 30, 1]],
        r"annotation 2 \(image 1\) has bbox \[40, 5, 10, null\] with a value that is not a finite number"),
    "infinite_polygon_coordinate": (  # the other part keeps the instance
        coco_annotation(2, 1, 44, (40, 5, 50, 15),
                        segm=[[40, 5, 50, 5, 50, 15, 40, 15], [40, 5, float("inf"), 5, 50, 15, 40, 15]]),
        "non_finite", [[10, 10, 30, 30, 1], [40, 5, 50, 15, 2]],
        r"annotation 2 \(image 1\) has a polygon coordinate that is not a finite number \(Infinity\)"),
    "null_polygon_coordinate": (
        coco_annotation(2, 1, 44, (40, 5, 50, 15), segm=[[40, 5, 50, 5, 50, 15, 40, 15], [40, None, 50, 5, 50, 15]]),
        "non_finite", [[10, 10, 30, 30, 1], [40, 5, 50, 15, 2]],
        r"annotation 2 \(image 1\) has a polygon coordinate that is not a finite number \(null\)"),
    "far_away_box": (
        dict(coco_annotation(2, 1, 44, (40, 5, 50, 15)), bbox=[40, 5, 1e9, 10]),
        "out_of_range", [[10, 10, 30, 30, 1]],
        r"annotation 2 \(image 1\) has bbox \[40, 5, 1000000000\.0, 10\] reaching more than one image side "
        r"outside the 60x40 image"),
    "unknown_image": (
        coco_annotation(2, 99, 44, (40, 5, 50, 15)),
        "unknown_image", [[10, 10, 30, 30, 1]],
        r"annotation 2 refers to image id 99, which is not in 'images'"),
    "unknown_category": (
        coco_annotation(2, 1, 555, (40, 5, 50, 15)),
        "unknown_category", [[10, 10, 30, 30, 1]],
        r"annotation 2 \(image 1\) has category id 555, which is not in 'categories'"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_defect_dropped_and_counted_or_strict_error(tmp_path, caplog, name):
    defective, kind, rows, strict_error = CASES[name]
    write_coco_set(str(tmp_path), [coco_image(1)], [coco_annotation(1, 1, 84, GOOD), defective])
    with caplog.at_level(logging.WARNING, logger="src.dataset"):
        ds = COCOSubDataset(str(tmp_path), True, dataset_config(tmp_path))
    assert ds.defect_counts[kind] == 1
    assert sum(ds.defect_counts.values()) == 1 + (kind == "polygon_part" and len(rows) == 1)
    _, annos, masks, _ = ds[0]
    np.testing.assert_array_equal(annos[:, :5], rows)
    for k, (x1, y1, x2, y2, _label) in enumerate(rows):  # each mask fills its box
        assert masks[k].sum() == (x2 - x1) * (y2 - y1) and masks[k, y1:y2, x1:x2].all()
    lines = [r.getMessage() for r in caplog.records if "strict_annotations" in r.getMessage()]
    assert len(lines) == 1 and f"1 {DEFECT_KINDS[kind]} (e.g. annotation 2)" in lines[0]
    assert "split 'train2017'" in lines[0] and "\n" not in lines[0]

    with pytest.raises(DatasetError, match=r"instances_train2017\.json: " + strict_error) as info:
        COCOSubDataset(str(tmp_path), True, dataset_config(tmp_path, strict_annotations=True))
    assert "\n" not in str(info.value)


def test_one_summary_line_for_many_defects_with_a_few_example_ids(tmp_path, caplog):
    anns = [coco_annotation(1, 1, 84, GOOD)] + [coco_annotation(10 + k, 1, 44, (40, 5, 40, 15)) for k in range(5)] + [
        coco_annotation(20, 1, 555, GOOD), coco_annotation(21, 1, 44, (40, 5, 50, 15), segm=_empty_rle())]
    write_coco_set(str(tmp_path), [coco_image(1)], anns)
    with caplog.at_level(logging.WARNING, logger="src.dataset"):
        ds = COCOSubDataset(str(tmp_path), True, dataset_config(tmp_path))
    lines = [r.getMessage() for r in caplog.records if "strict_annotations" in r.getMessage()]
    assert len(lines) == 1
    assert ("1 annotations of unknown category ids dropped (e.g. annotation 20); "
            "5 zero-area boxes dropped (e.g. annotation 10, 11, 12); "
            "1 empty masks dropped (e.g. annotation 21)") in lines[0]
    assert len(ds[0][1]) == 1


@pytest.mark.parametrize("kind", ["gray", "rgba", "gray16", "rgb16"])
def test_grayscale_rgba_and_16_bit_images_load_as_rgb(tmp_path, kind):
    write_coco_set(str(tmp_path), [coco_image(1)], [coco_annotation(1, 1, 84, GOOD)])
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    if kind == "gray":
        pixels, expected = np.full((40, 60), 90, np.uint8), (90, 90, 90)
    elif kind == "rgba":
        pixels, expected = np.dstack([rgb[..., ::-1], np.full((40, 60), 7, np.uint8)]), (200, 100, 50)
    elif kind == "gray16":
        pixels, expected = np.full((40, 60), 90 * 256, np.uint16), (90, 90, 90)
    else:
        pixels, expected = rgb[..., ::-1].astype(np.uint16) * 256, (200, 100, 50)
    cv2.imwrite(os.path.join(tmp_path, "train2017", "1.png"), pixels)
    ds = COCOSubDataset(str(tmp_path), True, dataset_config(tmp_path))
    img = ds.decode(0)
    assert img.shape == (40, 60, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[5, 5], expected)


def test_image_size_other_than_the_json_is_reported_at_build_time(tmp_path):
    write_coco_set(str(tmp_path), [coco_image(1)], [coco_annotation(1, 1, 84, GOOD)])
    cv2.imwrite(os.path.join(tmp_path, "train2017", "1.png"), np.zeros((30, 60, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"1\.png: image is 30x60 but the annotation file says 40x60 "
                                           r"\(image id 1\)"):
        COCOSubDataset(str(tmp_path), True, dataset_config(tmp_path))


def test_read_image_size_from_headers(tmp_path):
    img = np.zeros((37, 53, 3), np.uint8)
    for ext in ("jpg", "png", "bmp"):
        path = str(tmp_path / f"a.{ext}")
        cv2.imwrite(path, img)
        assert read_image_size(path) == (37, 53), ext
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:20])
    (tmp_path / "empty.png").write_bytes(b"")
    for bad, why in (("cut.jpg", "no frame size"), ("empty.png", "empty file")):
        with pytest.raises(ImageHeaderError, match=why):
            read_image_size(str(tmp_path / bad))


# ---- the reader behind evaluation: cleaned ground truth, bounds, categories ----------------------

SIDE = 128
BOOK, DISC = (10, 10, 60, 60), (70, 70, 100, 100)  # medium and small objects
CATEGORIES = [{"id": 84, "name": "book"}, {"id": 44, "name": "disc"}]

# name -> (changes to annotation 3, a third object on image 2; defect kind counted or None)
DEFECTS = {
    "two_point_polygon": ({"segmentation": [[40, 40, 50, 50]]}, "no_segmentation"),
    "missing_area": ({"area": None}, None),
    "area_zero": ({"area": 0}, None),
    "flat_polygon": ({"segmentation": [40, 40, 60, 40, 60, 60, 40, 60]}, "flat_polygon"),
    "missing_segmentation": ({"segmentation": None}, "no_segmentation"),
    "box_as_x1y1x2y2": ({"bbox": [40, 40, 60, 60]}, "box_from_mask"),
    "zero_area_box": ({"bbox": [40, 40, 0, 20]}, "zero_area_box"),
    "huge_coordinate": ({"segmentation": [[40, 40, 1e9, 40, 60, 60, 40, 60]]}, "out_of_range"),
    "nan_coordinate": ({"segmentation": [[40, 40, float("nan"), 40, 60, 60, 40, 60]]}, "non_finite"),
    "nan_box": ({"bbox": [float("nan"), 40, 20, 20]}, "non_finite"),
    "unknown_category": ({"category_id": 555}, "unknown_category"),
    "unknown_image": ({"image_id": 99}, "unknown_image"),
    "empty_rle": ({"segmentation": {"size": [SIDE, SIDE], "counts": [SIDE * SIDE]}}, "empty_mask"),
    "rle_counts_past_the_image": ({"segmentation": {"size": [SIDE, SIDE], "counts": [10, 10 ** 9]}},
                                  "no_segmentation"),
    # A compressed RLE of a twice-as-wide mask: pycocotools would decode it past the image's buffer.
    "rle_string_past_the_image": ({"segmentation": {"size": [SIDE, SIDE], "counts": mask_utils.encode(
        np.ones((SIDE, 2 * SIDE), np.uint8, order="F"))["counts"].decode("ascii")}}, "no_segmentation"),
}


def _write_val_split(folder, defect, sizes_as_strings=False):
    """Images 1 and 2 (PNG, 128x128) with a book and a disc each, plus annotation 3 with a defect."""
    image_dir = os.path.join(folder, "photos")
    os.makedirs(image_dir, exist_ok=True)
    import cv2

    for image_id in (1, 2):
        cv2.imwrite(os.path.join(image_dir, f"{image_id}.png"), painted(SIDE, SIDE, [(BOOK, (200, 0, 0))]))
    side = str(SIDE) if sizes_as_strings else SIDE
    anns = [rect_ann(1, 1, 84, BOOK), rect_ann(2, 1, 44, DISC), rect_ann(4, 2, 84, BOOK), rect_ann(5, 2, 44, DISC)]
    third = rect_ann(3, 2, 44, (40, 40, 60, 60))
    for key, value in defect.items():
        if value is None:
            third.pop(key)
        else:
            third[key] = value
    data = {"images": [{"id": i, "file_name": f"{i}.png", "height": side, "width": side} for i in (1, 2)],
            "annotations": anns + [third], "categories": CATEGORIES}
    return write_json(os.path.join(folder, "export.json"), data), image_dir


def _val_dataset(ann_file, image_dir):
    return COCOSubDataset(None, False, tiny_config(val_ann_file=ann_file, val_image_dir=image_dir,
                                                   max_instance_count=8))


def _cleaned_predictions(dataset, skip_ann_ids=()):
    """The dataset's own cleaned instances as detections (score 1), except ``skip_ann_ids``."""
    per_image = {}
    for index, image_id in enumerate(dataset.image_ids):
        annos, masks = dataset.annotations(index)
        keep = np.array([a not in skip_ann_ids for a in dataset._records[index].ann_ids], bool) & (annos[:, 5] == 0)
        dets = Detections(annos[keep, :4], np.ones(int(keep.sum()), np.float32), annos[keep, 4].astype(np.int32),
                          masks[keep])
        per_image[image_id] = detections_to_coco(image_id, dets, dataset.label_to_cat_id)
    return per_image


def _evaluate(dataset, per_image):
    cat_ids = [dataset.label_to_cat_id[label] for label in sorted(dataset.label_to_cat_id)]
    evaluator = COCOEvaluator(dataset.coco, cat_ids, dataset.image_ids, 0.5, max_dets=100)
    for image_id, results in per_image.items():
        evaluator.add_results(image_id, results)
    return evaluator.evaluate()


def _pycocotools_ap(gt_path, results, iou_type):
    """AP straight from pycocotools on the ground-truth file as written."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        dt = gt.loadRes([dict(r) for r in results]) if results else COCO()
        coco_eval = COCOeval(gt, dt, iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats


@pytest.mark.parametrize("name", sorted(DEFECTS))
def test_every_tolerated_defect_evaluates_to_the_ap_of_the_cleaned_file(tmp_path, name):
    import eval as eval_cli

    change, kind = DEFECTS[name]
    dataset = _val_dataset(*_write_val_split(str(tmp_path), change))
    if kind:
        assert dataset.defect_counts[kind] == 1, dataset.defect_counts
    # Perfect detections of what the cleaned file holds score 1: dropped ground truth is not a
    # miss, a repaired box matches its mask, a missing/zero area does not hide the object.
    metrics = _evaluate(dataset, _cleaned_predictions(dataset))
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == pytest.approx(1.0), iou_type
        assert metrics[iou_type]["APm"] == pytest.approx(1.0), iou_type  # the 50x50 books
    # Detections missing the disc of image 1: the evaluator and pycocotools on the written file agree.
    os.makedirs(tmp_path / "out")
    gt_path = eval_cli.write_ground_truth(str(tmp_path / "out"), dataset)
    partial = _cleaned_predictions(dataset, skip_ann_ids={2})
    metrics = _evaluate(dataset, partial)
    results = [r for rs in partial.values() for r in rs]
    for iou_type in ("bbox", "segm"):
        stats = _pycocotools_ap(gt_path, results, iou_type)
        assert metrics[iou_type]["AP"] == pytest.approx(stats[0]) and 0 < stats[0] < 1, iou_type


def test_image_sizes_written_as_strings_are_read_as_numbers_and_written_as_numbers(tmp_path):
    dataset = _val_dataset(*_write_val_split(str(tmp_path), {}, sizes_as_strings=True))
    assert [(i["height"], i["width"]) for i in dataset.cleaned_coco["images"]] == [(SIDE, SIDE)] * 2
    assert _evaluate(dataset, _cleaned_predictions(dataset))["segm"]["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("value,shown", [("abc", "'abc'"), (1e9, "1000000000.0"), (0, "0"), (12.5, "12.5")])
def test_bad_image_size_is_a_one_line_error_naming_the_image(tmp_path, value, shown):
    ann_file, _ = _write_val_split(str(tmp_path), {})
    data = json.loads(open(ann_file).read())
    data["images"][1]["width"] = value
    write_json(ann_file, data)
    with pytest.raises(DatasetError) as info:
        read_annotations(ann_file)
    assert str(info.value) == (f"{ann_file}: images[1] (id 2, 2.png) has width {shown}; expected a whole "
                               f"number of pixels from 1 to 65535")


@pytest.mark.parametrize("categories,message", [
    ([{"id": 84, "name": "book"}, {"id": 44, "name": "book"}],
     "category name 'book' is used twice, under category ids 84 and 44 (categories[0] and categories[1])"),
    ([{"id": 84, "name": "book"}, {"id": 84, "name": "disc"}],
     "category id 84 is used twice, for 'book' and 'disc' (categories[0] and categories[1])"),
])
def test_duplicate_category_name_or_id_is_a_one_line_error_naming_both(tmp_path, categories, message):
    ann_file, _ = _write_val_split(str(tmp_path), {})
    data = json.loads(open(ann_file).read())
    data["categories"] = categories
    write_json(ann_file, data)
    with pytest.raises(DatasetError) as info:
        read_annotations(ann_file)
    assert str(info.value) == f"{ann_file}: {message}"


MEMORY_LIMITED_RUN = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (__LIMIT__, __LIMIT__))
sys.path.insert(0, __REPO__)
import numpy as np
from src.config import Config
from src.dataset import COCOSubDataset
from src.evaluation.coco_eval import COCOEvaluator
from src.evaluation.results import Detections, detections_to_coco
config = Config().replace(val_ann_file=__ANN__, val_image_dir=__IMAGES__, coco_classes=["background", "book", "disc"],
                          max_instance_count=16)
ds = COCOSubDataset(None, False, config)
cats = [ds.label_to_cat_id[label] for label in sorted(ds.label_to_cat_id)]
ev = COCOEvaluator(ds.coco, cats, ds.image_ids, 0.5)
for index, image_id in enumerate(ds.image_ids):
    annos, masks = ds.annotations(index)
    dets = Detections(annos[:, :4], np.ones(len(annos), np.float32), annos[:, 4].astype(np.int32), masks)
    ev.add_results(image_id, detections_to_coco(image_id, dets, ds.label_to_cat_id))
metrics = ev.evaluate()
print(json.dumps({"defects": ds.defect_counts, "segm_AP": metrics["segm"]["AP"], "bbox_AP": metrics["bbox"]["AP"]}))
"""


def test_non_finite_and_huge_coordinates_are_dropped_and_counted_under_a_memory_limit(tmp_path):
    """1e8/1e9 polygon coordinates crashed pycocotools' rasteriser; a NaN made evaluation
    allocate without end. Here: dropped and counted, training and evaluation reader alike."""
    ann_file, image_dir = _write_val_split(str(tmp_path), {})
    data = json.loads(open(ann_file).read())
    bad = [[40, 40, 1e9, 40, 60, 60, 40, 60], [40, 40, 1e8, 40, 60, 1e8, 40, 60],
           [float("nan"), 40, 60, 40, 60, 60, 40, 60], [float("inf"), 40, 60, 40, 60, 60, -1e9, 60]]
    for k, poly in enumerate(bad):
        data["annotations"].append(rect_ann(10 + k, 2, 44, (40, 40, 60, 60), segmentation=[poly]))
    data["annotations"].append(rect_ann(20, 2, 44, (40, 40, 60, 60), bbox=[1e300, 40, 1e300, 20]))
    data["annotations"].append(rect_ann(21, 1, 44, (40, 40, 60, 60), bbox=[float("nan")] * 4))
    write_json(ann_file, data)  # json writes NaN/Infinity as most exporters that emit them do
    script = (MEMORY_LIMITED_RUN.replace("__LIMIT__", str(3 << 30)).replace("__REPO__", repr(REPO_ROOT))
              .replace("__ANN__", repr(ann_file)).replace("__IMAGES__", repr(image_dir)))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    # 1e9, 1e8 and the 1e300 box far away; the NaN, the Infinity (before its -1e9) and the NaN box not finite
    assert out["defects"]["out_of_range"] == 3 and out["defects"]["non_finite"] == 3
    assert out["defects"]["no_segmentation"] == 4
    assert out["segm_AP"] == pytest.approx(1.0) and out["bbox_AP"] == pytest.approx(1.0)
