"""COCOeval scores ``test_max_per_img`` detections per image (src/evaluation/coco_eval.py)."""

import numpy as np
import pytest
from pycocotools.coco import COCO

from src.evaluation.coco_eval import COCOEvaluator, max_dets_setting
from src.evaluation.results import EvaluationError

NUM_INSTANCES = 120  # more than COCO's default 100 detections per image
CAT_ID = 4


def _crowded_coco():
    """One 400x400 image with 120 disjoint 12x12 squares of one class."""
    anns = []
    for index in range(NUM_INSTANCES):
        row, col = divmod(index, 12)
        x, y = 4 + col * 32, 4 + row * 32
        anns.append({"id": index + 1, "image_id": 1, "category_id": CAT_ID, "iscrowd": 0, "area": 144.0,
                     "bbox": [x, y, 12, 12], "segmentation": [[x, y, x + 12, y, x + 12, y + 12, x, y + 12]]})
    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "file_name": "a.png", "height": 400, "width": 400}],
                    "categories": [{"id": CAT_ID, "name": "thing"}], "annotations": anns}
    coco.createIndex()
    return coco


def _gt_as_results(coco):
    from pycocotools import mask as mask_utils

    results = []
    for ann in coco.dataset["annotations"]:
        rle = mask_utils.encode(np.asfortranarray(coco.annToMask(ann)))
        rle["counts"] = rle["counts"].decode("ascii")
        results.append({"image_id": 1, "category_id": CAT_ID, "bbox": list(ann["bbox"]), "score": 1.0,
                        "segmentation": rle})
    return results


@pytest.mark.parametrize("max_dets, expected_ap", [(150, 1.0), (100, None)])
def test_max_dets_follows_test_max_per_img(max_dets, expected_ap):
    coco = _crowded_coco()
    evaluator = COCOEvaluator(coco, [CAT_ID], [1], max_dets=max_dets)
    evaluator.add_results(1, _gt_as_results(coco))
    metrics = evaluator.evaluate()
    assert metrics["max_dets"] == max_dets
    for iou_type in ("bbox", "segm"):
        m = metrics[iou_type]
        if expected_ap is not None:
            for key in ("AP", "AP50", "AP75", "APs", "AR100", "ARs"):
                assert m[key] == pytest.approx(expected_ap, abs=1e-12), (iou_type, key)
        else:
            # 100 of the 120 instances can be found: recall 100/120, and AP stops at recall 0.83
            assert m["AR100"] == pytest.approx(100 / NUM_INSTANCES)
            assert m["AP"] == pytest.approx(84 / 101)
        assert m["AR10"] == pytest.approx(10 / NUM_INSTANCES)
        assert m["AR1"] == pytest.approx(1 / NUM_INSTANCES)


def test_fewer_than_ten_max_dets_caps_every_column():
    assert max_dets_setting(5) == [1, 5, 5]
    with pytest.raises(ValueError, match="must be >= 1, got 0"):
        max_dets_setting(0)
    coco = _crowded_coco()
    evaluator = COCOEvaluator(coco, [CAT_ID], [1], max_dets=5)
    evaluator.add_results(1, _gt_as_results(coco))
    metrics = evaluator.evaluate()
    assert metrics["bbox"]["AR100"] == pytest.approx(5 / NUM_INSTANCES)  # the AR@max column
    assert metrics["bbox"]["AR10"] == pytest.approx(5 / NUM_INSTANCES)
    evaluator = COCOEvaluator(coco, [CAT_ID], [1], max_dets=0)
    evaluator.add_results(1, _gt_as_results(coco)[:3])
    with pytest.raises(EvaluationError, match="test_max_per_img: max detections per image must be >= 1, got 0"):
        evaluator.evaluate()
