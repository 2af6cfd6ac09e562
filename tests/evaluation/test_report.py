"""Tests of the evaluation report (src/evaluation/report*.py) on ground truth fed back as predictions (no network).

The numbers on the page and in report.json must be the ones of metrics.json; the page must be
self-contained (no script, no external link, every picture a file beside it).
"""

import html.parser
import json
import os

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from src.evaluation.coco_eval import COCOEvaluator
from src.evaluation.report import main, write_report
from src.evaluation.report_data import REPORT_JSON, TABLE_KEYS, ReportError, load_score_thresholds
from src.evaluation.report_page import REPORT_HTML
from helpers import GroundTruthNet, rect_result

CATS = {3: "book", 8: "disc"}
CLASSES = ["background", "book", "disc"]
SIZE = 96
NUM_IMAGES = 5


def _objects(rng):
    """Per image 1-3 rectangles of random classes (image id, cat id, x1, y1, x2, y2)."""
    objects = []
    for image_id in range(1, NUM_IMAGES + 1):
        for _ in range(rng.integers(1, 4)):
            x1, y1 = (int(v) for v in rng.integers(0, SIZE - 40, 2))
            w, h = (int(v) for v in rng.integers(12, 40, 2))
            objects.append((image_id, int(rng.choice(list(CATS))), x1, y1, x1 + w, y1 + h))
    return objects


def _result(image_id, cat_id, x1, y1, x2, y2, score):
    return rect_result(image_id, cat_id, x1, y1, x2, y2, score, SIZE, SIZE)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Images on disk and the COCO ground truth of random rectangles."""
    root = tmp_path_factory.mktemp("report_data")
    rng = np.random.default_rng(5)
    objects = _objects(rng)
    images = []
    for image_id in range(1, NUM_IMAGES + 1):
        name = f"im{image_id}.png"
        picture = np.full((SIZE, SIZE, 3), 90, np.uint8)
        for obj in objects:
            if obj[0] == image_id:
                picture[obj[3]:obj[5], obj[2]:obj[4]] = (40 * obj[1]) % 255
        cv2.imwrite(str(root / name), picture)
        images.append({"id": image_id, "file_name": name, "height": SIZE, "width": SIZE})
    anns = [{"id": i, "image_id": o[0], "category_id": o[1], "iscrowd": 0, "bbox": [o[2], o[3], o[4] - o[2], o[5] - o[3]],
             "area": float((o[4] - o[2]) * (o[5] - o[3])), "segmentation": [[o[2], o[3], o[4], o[3], o[4], o[5], o[2], o[5]]]}
            for i, o in enumerate(objects, start=1)]
    ann_file = root / "instances_val.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns,
                                    "categories": [{"id": c, "name": n} for c, n in CATS.items()]}))
    return root, ann_file, objects


def _evaluate(ann_file, results):
    coco = COCO(str(ann_file))
    evaluator = COCOEvaluator(coco, sorted(CATS), sorted(coco.imgs), max_dets=100)
    for image_id in sorted(coco.imgs):
        evaluator.add_results(image_id, [r for r in results if r["image_id"] == image_id])
    return evaluator, evaluator.evaluate()


def _perturbed(objects):
    """Shift some boxes, drop one object, add a background FP and a low-scoring duplicate."""
    results = []
    for index, (image_id, cat, x1, y1, x2, y2) in enumerate(objects):
        if index == 1:
            continue  # missed
        shift = 4 * (index % 3)
        results.append(_result(image_id, cat, x1 + shift, y1, min(x2 + shift, SIZE), y2, 0.9 - 0.05 * (index % 5)))
    results.append(_result(2, 3, 80, 80, 95, 95, 0.95))  # background
    results.append(_result(3, 8, 0, 0, 10, 10, 0.2))
    return results


class _PageParser(html.parser.HTMLParser):
    """Collects the cells with a data-key, the image sources, and any script/link/remote reference."""

    def __init__(self):
        super().__init__()
        self.cells, self.images, self.forbidden = {}, [], []
        self._key = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "link", "iframe"):
            self.forbidden.append(tag)
        for value in attrs.values():
            if value and ("http:" in value or "https:" in value or value.startswith("//")):
                self.forbidden.append(value)
        if tag == "img":
            self.images.append(attrs["src"])
        self._key = attrs.get("data-key")

    def handle_data(self, data):
        if self._key:
            self.cells[self._key] = data
            self._key = None


@pytest.fixture(scope="module")
def perturbed_report(dataset, tmp_path_factory):
    root, ann_file, objects = dataset
    evaluator, metrics = _evaluate(ann_file, _perturbed(objects))
    out = tmp_path_factory.mktemp("report")
    path = write_report(str(out), evaluator, metrics, str(root), info={"checkpoint": "none"})
    return out, path, metrics


def test_report_numbers_equal_metrics(perturbed_report):
    out, path, metrics = perturbed_report
    report = json.loads((out / REPORT_JSON).read_text())
    parser = _PageParser()
    parser.feed(open(path, encoding="utf-8").read())
    assert 0.0 < metrics["segm"]["AP"] < 1.0
    for iou_type in ("bbox", "segm"):
        table = report["ap_table"][iou_type]
        for key in TABLE_KEYS:
            expected = metrics[iou_type][key]
            assert table["all"][key] == (None if expected < 0 else expected), (iou_type, key)
            shown = parser.cells[f"{iou_type}/all/{key}"]
            assert shown == ("-" if expected < 0 else f"{100 * expected:.1f}"), (iou_type, key)
        for name, ap in metrics[iou_type]["per_class"].items():
            assert table[name]["AP"] == pytest.approx(ap, abs=1e-12)
            assert parser.cells[f"{iou_type}/{name}/AP"] == f"{100 * ap:.1f}"
        # the breakdown's AP50 is the class AP50 of the table, and the parts add up to 1
        for name, errors in report["error_breakdown"][iou_type]["per_class"].items():
            assert errors["ap50"] == pytest.approx(table[name]["AP50"], abs=1e-12)
            assert errors["ap50"] + sum(errors["lost"].values()) == pytest.approx(1.0)
        assert report["error_breakdown"][iou_type]["all"]["missed"] > 0  # one object was dropped
    assert report["max_dets"] == 100


def test_page_is_self_contained(perturbed_report):
    out, path, _ = perturbed_report
    parser = _PageParser()
    parser.feed(open(path, encoding="utf-8").read())
    assert parser.forbidden == []
    assert len(parser.images) >= 2 * len(CATS) + 2 + 1  # PR plots, breakdown charts, gallery
    for src in parser.images:
        assert not os.path.isabs(src)
        picture = cv2.imread(str(out / src))
        assert picture is not None and picture.size > 0, src
    report = json.loads((out / REPORT_JSON).read_text())
    worst = report["gallery"]["worst"]
    assert worst and worst[0]["missed"] + worst[0]["false_positive"] >= 1
    # the image with the dropped object (or the background FP) leads the worst ones
    assert {w["image_id"] for w in worst} >= {2}


def test_ground_truth_report_has_no_loss_and_unit_thresholds(dataset, tmp_path):
    root, ann_file, objects = dataset
    evaluator, metrics = _evaluate(ann_file, [_result(*o, score=1.0) for o in objects])
    write_report(str(tmp_path), evaluator, metrics, str(root))
    report = json.loads((tmp_path / REPORT_JSON).read_text())
    for iou_type in ("bbox", "segm"):
        overall = report["error_breakdown"][iou_type]["all"]
        assert overall["ap50"] == pytest.approx(1.0)
        for kind in ("localisation", "confusion", "background", "missed"):
            assert overall[kind] == pytest.approx(0.0, abs=1e-12), (iou_type, kind)
    assert report["score_thresholds"] == {"book": 1.0, "disc": 1.0}
    assert report["gallery"]["worst"] == []
    assert load_score_thresholds(str(tmp_path / REPORT_JSON), CLASSES, fallback=0.5) == {1: 1.0, 2: 1.0}


def test_score_thresholds_bad_or_missing_report(tmp_path):
    with pytest.raises(ReportError, match="report file not found: .*nope.json.*eval.py --report"):
        load_score_thresholds(str(tmp_path / "nope.json"), CLASSES, 0.5)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"metrics": {}}))
    with pytest.raises(ReportError, match="bad.json: has no 'score_thresholds'"):
        load_score_thresholds(str(bad), CLASSES, 0.5)
    bad.write_text(json.dumps({"score_thresholds": {"book": 3.0}}))
    with pytest.raises(ReportError, match="'book' must be a number in \\[0, 1\\], got 3.0"):
        load_score_thresholds(str(bad), CLASSES, 0.5)
    bad.write_text(json.dumps({"score_thresholds": {"book": 0.7, "disc": None}}))
    assert load_score_thresholds(str(bad), CLASSES, 0.5) == {1: 0.7, 2: 0.5}


def test_command_line_rebuilds_the_report_from_saved_detections(dataset, tmp_path, capsys):
    root, ann_file, objects = dataset
    detections = tmp_path / "detections.json"
    detections.write_text(json.dumps(_perturbed(objects)))
    out = tmp_path / "rep"
    assert main(["--ann_file", str(ann_file), "--detections", str(detections), "--image_dir", str(root),
                 "--out", str(out)]) == 0
    assert f"report: {out / REPORT_HTML}" in capsys.readouterr().out
    assert main(["--ann_file", str(ann_file), "--detections", str(tmp_path / "x.json"), "--image_dir", str(root),
                 "--out", str(out)]) == 2
    assert main(["--ann_file", str(ann_file), "--detections", str(detections), "--image_dir", str(tmp_path),
                 "--out", str(out)]) == 2  # images not there
    with pytest.raises(ReportError, match=f"{tmp_path}: {NUM_IMAGES} evaluated images are missing \\(e.g. im1.png\\)"):
        write_report(str(out), *_evaluate(ann_file, []), str(tmp_path))


def test_training_eval_callback_writes_the_report_of_the_best_checkpoint(tmp_path):
    """EvalCallback (train.py --eval_interval) writes best_report/ next to best.ckpt, numbers as logged."""
    from types import SimpleNamespace


    from src.config import load_config
    from src.dataset import COCOSubDataset
    from src.evaluation.hook import BEST_REPORT_DIR, EVAL_HISTORY_FILE, EvalCallback
    from src.synthetic import generate

    generate(str(tmp_path / "data"), num_train=0, num_val=2, seed=6, style="solid")
    config = load_config(overrides={"coco_root": str(tmp_path / "data"), "img_height": 128, "img_width": 160,
                                    "batch_size": 2, "num_parallel_workers": 1})
    sub = COCOSubDataset(str(tmp_path / "data"), is_training=False, config=config)
    callback = EvalCallback(GroundTruthNet(sub, config.test_max_per_img), config, str(tmp_path), interval=1,
                            save_fn=lambda net, path: None, steps_per_epoch=2)
    callback.on_train_step_end(SimpleNamespace(original_args=lambda: SimpleNamespace(cur_step_num=2)))
    logged = json.loads((tmp_path / EVAL_HISTORY_FILE).read_text().splitlines()[0])
    report = json.loads((tmp_path / BEST_REPORT_DIR / REPORT_JSON).read_text())
    assert (tmp_path / BEST_REPORT_DIR / REPORT_HTML).is_file()
    assert report["info"]["epoch"] == 1
    for iou_type in ("bbox", "segm"):
        assert report["ap_table"][iou_type]["all"]["AP"] == logged[f"{iou_type}_AP"]
    assert report["max_dets"] == config.test_max_per_img


def test_report_without_any_detection(dataset, tmp_path):
    """No detection at all: AP 0, everything lost to missed objects, no threshold, every image among the worst."""
    root, ann_file, objects = dataset
    evaluator, metrics = _evaluate(ann_file, [])
    write_report(str(tmp_path), evaluator, metrics, str(root))
    report = json.loads((tmp_path / REPORT_JSON).read_text())
    assert report["ap_table"]["segm"]["all"]["AP"] == 0.0
    assert report["error_breakdown"]["segm"]["all"]["missed"] == pytest.approx(1.0)
    assert report["score_thresholds"] == {"book": None, "disc": None}
    assert len(report["gallery"]["worst"]) == NUM_IMAGES
    assert load_score_thresholds(str(tmp_path / REPORT_JSON), CLASSES, fallback=0.5) == {1: 0.5, 2: 0.5}
