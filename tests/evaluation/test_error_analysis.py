"""Tests of src/evaluation/error_analysis.py on hand-made ground truth and detections (no network).

Rectangles are used for objects and detections so box and mask IoU are the same and can be
worked out by hand.
"""

import pytest
from pycocotools.coco import COCO

from src.evaluation.error_analysis import (ERROR_KINDS, analyse_errors, best_f1_thresholds, image_errors,
                                           mean_lost, run_analysis_eval)
from helpers import rect_result

CAT_A, CAT_B = 2, 9
NAMES = {CAT_A: "apple", CAT_B: "bottle"}
HEIGHT = WIDTH = 120


def _rect_ann(ann_id, image_id, cat_id, x1, y1, x2, y2):
    return {"id": ann_id, "image_id": image_id, "category_id": cat_id, "iscrowd": 0,
            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float((x2 - x1) * (y2 - y1)),
            "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]]}


def make_coco(objects, num_images=1):
    """COCO ground truth from (image_id, cat_id, x1, y1, x2, y2) tuples."""
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "file_name": f"{i}.png", "height": HEIGHT, "width": WIDTH}
                               for i in range(1, num_images + 1)],
                    "categories": [{"id": c, "name": n} for c, n in NAMES.items()],
                    "annotations": [_rect_ann(i, *obj) for i, obj in enumerate(objects, start=1)]}
    coco.createIndex()
    return coco


def make_result(image_id, cat_id, x1, y1, x2, y2, score):
    """A COCO result dict with a rectangular box and mask."""
    return rect_result(image_id, cat_id, x1, y1, x2, y2, score, HEIGHT, WIDTH)


def _analyse(coco, results, iou_type):
    coco_eval = run_analysis_eval(coco, results, [CAT_A, CAT_B], sorted(coco.imgs), iou_type)
    return coco_eval, analyse_errors(coco_eval, NAMES)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_ground_truth_as_predictions_loses_nothing(iou_type):
    objects = [(1, CAT_A, 10, 10, 50, 50), (1, CAT_B, 60, 60, 100, 110), (2, CAT_A, 5, 70, 40, 115),
               (3, CAT_B, 20, 20, 90, 60)]
    coco = make_coco(objects, num_images=3)
    results = [make_result(*obj, score=1.0) for obj in objects]
    coco_eval, per_class = _analyse(coco, results, iou_type)
    for name in NAMES.values():
        errors = per_class[name]
        assert errors.ap50 == pytest.approx(1.0) and errors.ap75 == pytest.approx(1.0)
        assert errors.lost == {kind: pytest.approx(0.0, abs=1e-12) for kind in ERROR_KINDS}
        assert errors.counts == {"true_positive": 2, "localisation": 0, "confusion": 0, "background": 0,
                                 "missed": 0}
    thresholds = best_f1_thresholds(coco_eval, NAMES)
    for threshold in thresholds.values():
        assert (threshold.score_thr, threshold.f1, threshold.precision, threshold.recall) == (1.0, 1.0, 1.0, 1.0)
    assert all(row["false_positive"] == 0 and row["missed"] == 0
               for row in image_errors(coco_eval, thresholds, NAMES).values())


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_crafted_errors_land_in_their_buckets(iou_type):
    """Class apple: one exact detection, one mislocalised (IoU 1/7), one on background, one missed."""
    coco = make_coco([(1, CAT_A, 10, 10, 50, 50), (1, CAT_A, 60, 10, 100, 50), (1, CAT_A, 10, 70, 50, 110)])
    results = [
        make_result(1, CAT_A, 75, 75, 115, 115, 0.95),  # background: overlaps no object
        make_result(1, CAT_A, 80, 30, 120, 70, 0.9),  # second object shifted by (20, 20): IoU 400/2800
        make_result(1, CAT_A, 10, 10, 50, 50, 0.8),  # first object, exact
    ]  # third object: missed
    coco_eval, per_class = _analyse(coco, results, iou_type)
    apple = per_class["apple"]
    assert apple.counts == {"true_positive": 1, "localisation": 1, "confusion": 0, "background": 1, "missed": 1}
    # Worked out by hand from COCO's 101-point interpolation (recall points 0, .01, ..., 1):
    # IoU .5: FP, FP, TP -> precision 1/3 up to recall 1/3 (34 points)
    assert apple.ap50 == pytest.approx(34 / 101 / 3)
    # IoU .1: FP, TP, TP -> precision 2/3 up to recall 2/3 (67 points)
    assert apple.ap_relaxed_iou == pytest.approx(67 / 101 * 2 / 3)
    assert apple.ap_no_confusion == pytest.approx(apple.ap_relaxed_iou)
    # background FP ignored: TP, TP -> precision 1 up to recall 2/3
    assert apple.ap_no_background == pytest.approx(67 / 101)
    assert apple.lost["localisation"] == pytest.approx(67 / 101 * 2 / 3 - 34 / 303)
    assert apple.lost["confusion"] == pytest.approx(0.0, abs=1e-12)
    assert apple.lost["background"] == pytest.approx(67 / 303)
    assert apple.lost["missed"] == pytest.approx(34 / 101)
    assert apple.ap50 + sum(apple.lost.values()) == pytest.approx(1.0)
    # bottle has no ground truth: no AP, no loss
    assert per_class["bottle"].ap50 is None and set(per_class["bottle"].lost.values()) == {None}
    assert mean_lost(per_class)["missed"] == pytest.approx(34 / 101)


def test_detection_on_another_class_is_confusion():
    """An apple detected on a bottle costs the apple class AP through confusion, nothing else."""
    coco = make_coco([(1, CAT_A, 10, 10, 50, 50), (1, CAT_B, 60, 60, 100, 100)])
    results = [make_result(1, CAT_A, 60, 60, 100, 100, 0.9), make_result(1, CAT_A, 10, 10, 50, 50, 0.8),
               make_result(1, CAT_B, 60, 60, 100, 100, 0.7)]
    coco_eval, per_class = _analyse(coco, results, "segm")
    apple = per_class["apple"]
    assert apple.counts == {"true_positive": 1, "localisation": 0, "confusion": 1, "background": 0, "missed": 0}
    assert apple.ap50 == pytest.approx(0.5)
    assert apple.lost["confusion"] == pytest.approx(0.5)
    for kind in ("localisation", "background", "missed"):
        assert apple.lost[kind] == pytest.approx(0.0, abs=1e-12), kind
    assert per_class["bottle"].ap50 == pytest.approx(1.0)


def test_best_f1_threshold_drops_low_scoring_false_positives():
    """Two objects found with scores .9 and .8, FPs at .85 and .3: best F1 keeps down to .8."""
    coco = make_coco([(1, CAT_A, 10, 10, 50, 50), (1, CAT_A, 60, 10, 100, 50)])
    results = [make_result(1, CAT_A, 10, 10, 50, 50, 0.9), make_result(1, CAT_A, 60, 70, 100, 110, 0.85),
               make_result(1, CAT_A, 60, 10, 100, 50, 0.8), make_result(1, CAT_A, 0, 60, 30, 90, 0.3)]
    coco_eval, _ = _analyse(coco, results, "bbox")
    apple = best_f1_thresholds(coco_eval, NAMES)["apple"]
    # keeping >= .8: 2 TP, 1 FP -> P 2/3, R 1, F1 0.8; keeping >= .9: P 1, R .5, F1 2/3
    assert apple.score_thr == pytest.approx(0.8)
    assert (apple.precision, apple.recall, apple.f1) == pytest.approx((2 / 3, 1.0, 0.8))
    assert best_f1_thresholds(coco_eval, NAMES)["bottle"].score_thr is None
    rows = image_errors(coco_eval, {"apple": apple, "bottle": best_f1_thresholds(coco_eval, NAMES)["bottle"]}, NAMES)
    assert rows[1] == {"true_positive": 2, "false_positive": 1, "missed": 0, "num_gt": 2}


def test_equal_scores_are_not_split_by_the_threshold():
    """A TP and an FP with the same score: the threshold keeps both or neither."""
    coco = make_coco([(1, CAT_A, 10, 10, 50, 50)])
    results = [make_result(1, CAT_A, 10, 10, 50, 50, 0.7), make_result(1, CAT_A, 60, 60, 100, 100, 0.7)]
    coco_eval, _ = _analyse(coco, results, "bbox")
    apple = best_f1_thresholds(coco_eval, NAMES)["apple"]
    assert apple.score_thr == pytest.approx(0.7)
    assert apple.precision == pytest.approx(0.5)
