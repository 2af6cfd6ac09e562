"""Tests of src/evaluation/ (results, coco_eval, inference, hook): mask paste-back, COCO results writer,
COCOEvaluator, the inference loop and the training hook.

A tiny COCO file with polygons is written to tmp_path; its ground truth is fed through the
results writer as if it were predictions (score 1), which must give AP = 1.000 exactly.
"""

import json
import math

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from helpers import GroundTruthNet
from src.evaluation.coco_eval import COCOEvaluator
from src.evaluation.results import (Detections, EvaluationError, boxes_to_original_image, detections_to_coco,
                                    encode_masks, paste_masks, predictions_to_coco)

# Category ids deliberately not contiguous and not starting at 1; "other" is not configured.
CAT_BOOK, CAT_DISC, CAT_OTHER = 3, 7, 5
LABEL_TO_CAT = {1: CAT_BOOK, 2: CAT_DISC}


def _rect(x1, y1, x2, y2):
    return [float(v) for v in (x1, y1, x2, y1, x2, y2, x1, y2)]


def _ann(ann_id, image_id, cat_id, polygon, iscrowd=0):
    xs, ys = polygon[0::2], polygon[1::2]
    x, y = min(xs), min(ys)
    w, h = max(xs) - x, max(ys) - y
    return {"id": ann_id, "image_id": image_id, "category_id": cat_id, "segmentation": [polygon],
            "bbox": [x, y, w, h], "area": w * h, "iscrowd": iscrowd}


def _triangle(x, y, size):
    return [float(x), float(y + size), float(x + size / 2), float(y), float(x + size), float(y + size)]


@pytest.fixture()
def coco_gt(tmp_path):
    """3 images (one without objects), small/medium/large objects, an unconfigured class, a crowd."""
    images = [{"id": 11, "file_name": "a.png", "height": 160, "width": 200},
              {"id": 12, "file_name": "b.png", "height": 200, "width": 240},
              {"id": 13, "file_name": "c.png", "height": 90, "width": 120}]
    categories = [{"id": CAT_BOOK, "name": "book"}, {"id": CAT_OTHER, "name": "other"},
                  {"id": CAT_DISC, "name": "disc"}]
    anns = [
        _ann(1, 11, CAT_BOOK, _rect(10, 20, 50, 60)),  # medium
        _ann(2, 11, CAT_DISC, _triangle(100, 30, 60)),  # medium
        _ann(3, 11, CAT_OTHER, _rect(150, 100, 190, 150)),  # not evaluated
        _ann(4, 12, CAT_BOOK, _rect(5, 10, 135, 120)),  # large
        _ann(5, 12, CAT_DISC, _triangle(170, 150, 20)),  # small
        _ann(6, 12, CAT_BOOK, _rect(150, 10, 230, 60), iscrowd=1),  # crowd: ignored by COCOeval
    ]
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps({"images": images, "categories": categories, "annotations": anns}))
    coco = COCO()
    coco.dataset = json.loads(path.read_text())
    coco.createIndex()
    return coco


def _gt_detections(coco, image_id, shift=0):
    """Ground truth of the configured classes (no crowd) as Detections, optionally shifted."""
    info = coco.imgs[image_id]
    anns = [a for a in coco.imgToAnns[image_id]
            if a["category_id"] in LABEL_TO_CAT.values() and not a["iscrowd"]]
    cat_to_label = {c: l for l, c in LABEL_TO_CAT.items()}
    boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                      for a in anns], dtype=np.float32).reshape(-1, 4)
    masks = np.stack([coco.annToMask(a) for a in anns]) if anns else np.zeros((0, info["height"], info["width"]), np.uint8)
    if shift:
        boxes = boxes + shift
        masks = np.roll(masks, (shift, shift), axis=(1, 2))
    labels = np.array([cat_to_label[a["category_id"]] for a in anns], dtype=np.int32)
    return Detections(boxes, np.ones(len(anns), np.float32), labels, masks)


def _evaluator(coco):
    return COCOEvaluator(coco, [CAT_BOOK, CAT_DISC], sorted(coco.imgs), mask_thr=0.5)


def test_ground_truth_as_predictions_gives_ap_one(coco_gt):
    evaluator = _evaluator(coco_gt)
    for image_id in sorted(coco_gt.imgs):
        evaluator.add_results(image_id, detections_to_coco(image_id, _gt_detections(coco_gt, image_id), LABEL_TO_CAT))
    metrics = evaluator.evaluate()
    for iou_type in ("bbox", "segm"):
        m = metrics[iou_type]
        for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            assert m[key] == pytest.approx(1.0, abs=1e-9), (iou_type, key, m[key])
        assert m["per_class"] == {"book": pytest.approx(1.0), "disc": pytest.approx(1.0)}
        assert "other" not in m["per_class"]
    assert metrics["num_detections"] == 4
    assert metrics["num_images"] == 3


def test_shifted_ground_truth_gives_ap_below_one(coco_gt):
    evaluator = _evaluator(coco_gt)
    for image_id in sorted(coco_gt.imgs):
        dets = _gt_detections(coco_gt, image_id, shift=6)
        evaluator.add_results(image_id, detections_to_coco(image_id, dets, LABEL_TO_CAT))
    metrics = evaluator.evaluate()
    for iou_type in ("bbox", "segm"):
        assert 0.0 < metrics[iou_type]["AP"] < 0.95, metrics[iou_type]["AP"]
        # The 130x110 rectangle shifted by (6, 6) has IoU 124*104/(2*130*110-124*104) = 0.821:
        # a match at the thresholds 0.50..0.80 (7 of 10), none at 0.85..0.95.
        assert metrics[iou_type]["APl"] == pytest.approx(0.7)
        assert metrics[iou_type]["APs"] < 1.0


def test_wrong_category_mapping_scores_zero(coco_gt):
    """Labels written with the other class's category id must not match."""
    swapped = {1: CAT_DISC, 2: CAT_BOOK}
    evaluator = _evaluator(coco_gt)
    for image_id in sorted(coco_gt.imgs):
        evaluator.add_results(image_id, detections_to_coco(image_id, _gt_detections(coco_gt, image_id), swapped))
    metrics = evaluator.evaluate()
    assert metrics["bbox"]["AP"] == 0.0
    assert metrics["segm"]["AP"] == 0.0


def test_per_class_ap_when_one_class_is_missed(coco_gt):
    evaluator = _evaluator(coco_gt)
    for image_id in sorted(coco_gt.imgs):
        dets = _gt_detections(coco_gt, image_id)
        dets = dets.select(dets.labels == 1)  # only books predicted
        evaluator.add_results(image_id, detections_to_coco(image_id, dets, LABEL_TO_CAT))
    metrics = evaluator.evaluate()
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["per_class"]["book"] == pytest.approx(1.0)
        assert metrics[iou_type]["per_class"]["disc"] == 0.0
        assert metrics[iou_type]["AP"] == pytest.approx(0.5)


def test_no_detections_at_all_gives_zero_not_crash(coco_gt):
    evaluator = _evaluator(coco_gt)
    k = 5
    empty = (np.zeros((1, k, 4), np.float32), np.zeros((1, k), np.float32), np.zeros((1, k), np.int32),
             np.zeros((1, k), bool), np.zeros((1, k, 28, 28), np.float32))
    evaluator.process(empty, np.array([11]), np.array([[80, 100, 0.5, 0.5]], np.float32))
    metrics = evaluator.evaluate()
    assert metrics["num_detections"] == 0
    for iou_type in ("bbox", "segm"):
        for key in ("AP", "AP50", "AP75", "APm", "APl"):
            assert metrics[iou_type][key] == 0.0
        assert metrics[iou_type]["per_class"] == {"book": 0.0, "disc": 0.0}


def _network_style_batch(coco, image_ids, scale, k=8):
    """Predictions as the network would return them: input-pixel boxes, 28x28 masks, padding."""
    batch = len(image_ids)
    boxes = np.zeros((batch, k, 4), np.float32)
    scores = np.zeros((batch, k), np.float32)
    labels = np.zeros((batch, k), np.int32)
    valid = np.zeros((batch, k), bool)
    masks = np.zeros((batch, k, 28, 28), np.float32)
    shapes = np.zeros((batch, 4), np.float32)
    for b, image_id in enumerate(image_ids):
        if image_id == -1:
            image_id = image_ids[0]
        info = coco.imgs[image_id]
        shapes[b] = (round(info["height"] * scale), round(info["width"] * scale), scale, scale)
        dets = _gt_detections(coco, image_id)
        for j in range(len(dets)):
            x1, y1, x2, y2 = dets.boxes[j]
            crop = dets.masks[j, int(y1):int(math.ceil(y2)), int(x1):int(math.ceil(x2))].astype(np.float32)
            masks[b, j] = cv2.resize(crop, (28, 28), interpolation=cv2.INTER_LINEAR)
            boxes[b, j] = dets.boxes[j] * scale
            scores[b, j], labels[b, j], valid[b, j] = 0.9, dets.labels[j], True
        labels[b, k - 1], valid[b, k - 1] = 1, False  # a padding slot with a label: must be ignored
    return (boxes, scores, labels, valid, masks), np.asarray(image_ids, np.int32), shapes


def test_process_network_style_predictions(coco_gt):
    evaluator = _evaluator(coco_gt)
    preds, ids, shapes = _network_style_batch(coco_gt, [11, 12], scale=0.5)
    evaluator.process(preds, ids, shapes)
    preds, ids, shapes = _network_style_batch(coco_gt, [13, -1], scale=0.5)
    evaluator.process(preds, ids, shapes)  # the -1 image repeats image 11 and must be skipped
    metrics = evaluator.evaluate()
    assert metrics["num_detections"] == 4
    assert metrics["bbox"]["AP"] == pytest.approx(1.0)
    # 28x28 masks lose detail at the edges, but on these convex shapes every pasted mask still
    # has IoU > 0.95 with its GT; a half-pixel paste error drops segm AP to 0.975 (APs to 0.9).
    assert metrics["segm"]["AP"] == pytest.approx(1.0)


def test_process_rejects_unknown_image_id(coco_gt):
    evaluator = _evaluator(coco_gt)
    preds, ids, shapes = _network_style_batch(coco_gt, [11], scale=1.0)
    with pytest.raises(EvaluationError, match="image id 99 is not one of the evaluated images"):
        evaluator.process(preds, np.array([99]), shapes)


def test_evaluator_rejects_unknown_category(coco_gt):
    with pytest.raises(EvaluationError, match=r"category ids \[42\] are not in the ground-truth file"):
        COCOEvaluator(coco_gt, [CAT_BOOK, 42], [11])


def test_reset_forgets_results(coco_gt):
    evaluator = _evaluator(coco_gt)
    evaluator.add_results(11, detections_to_coco(11, _gt_detections(coco_gt, 11), LABEL_TO_CAT))
    evaluator.reset()
    assert evaluator.evaluate()["num_detections"] == 0


# ---------------------------------------------------------------------------------------------
# results writer
# ---------------------------------------------------------------------------------------------

def test_results_are_json_serialisable_and_round_trip():
    masks = np.zeros((2, 12, 10), np.uint8)
    masks[0, 2:5, 3:7] = 1
    masks[1, 8:12, 0:2] = 1
    dets = Detections(np.array([[3, 2, 7, 5], [0, 8, 2, 12]], np.float32), np.array([0.75, 0.5], np.float32),
                      np.array([2, 1], np.int32), masks)
    results = detections_to_coco(42, dets, LABEL_TO_CAT)
    text = json.dumps(results)
    back = json.loads(text)
    assert [r["category_id"] for r in back] == [CAT_DISC, CAT_BOOK]
    assert back[0]["bbox"] == [3.0, 2.0, 4.0, 3.0]
    assert back[0]["score"] == 0.75
    assert back[0]["image_id"] == 42
    assert isinstance(back[0]["segmentation"]["counts"], str)
    decoded = mask_utils.decode({"size": back[1]["segmentation"]["size"],
                                 "counts": back[1]["segmentation"]["counts"].encode("ascii")})
    np.testing.assert_array_equal(decoded, masks[1])


def test_results_writer_rejects_unknown_label():
    dets = Detections(np.zeros((1, 4), np.float32), np.ones(1, np.float32), np.array([9], np.int32),
                      np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(EvaluationError, match="image 5: predicted label 9 has no category id"):
        detections_to_coco(5, dets, LABEL_TO_CAT)


def test_encode_masks_empty():
    assert encode_masks(np.zeros((0, 5, 6), np.uint8)) == []


# ---------------------------------------------------------------------------------------------
# paste-back
# ---------------------------------------------------------------------------------------------

def test_paste_left_half_mask_after_resize_pad_and_flip():
    """Original 100x80 (WxH) -> resized by 0.5 to 50x40, flipped, padded to 64x64.

    The object occupies original box (10, 20, 38, 48); its left half is foreground. In the
    flipped input its box is (50-19, 10, 50-5, 24) = (31, 10, 45, 24) and the foreground is the
    right half of the 28x28 mask.
    """
    orig_h, orig_w = 80, 100
    image_shape = np.array([40, 50, 0.5, 0.5], np.float32)
    mask = np.zeros((1, 28, 28), np.float32)
    mask[0, :, 14:] = 1.0  # right half in the flipped image
    input_box = np.array([[31.0, 10.0, 45.0, 24.0]], np.float32)
    boxes = boxes_to_original_image(input_box, image_shape, orig_h, orig_w, flipped=True)
    np.testing.assert_allclose(boxes, [[10.0, 20.0, 38.0, 48.0]])
    out = paste_masks(mask, boxes, orig_h, orig_w, thr=0.5, flipped=True)
    expected = np.zeros((orig_h, orig_w), np.uint8)
    expected[20:48, 10:24] = 1
    assert out.shape == (1, orig_h, orig_w) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], expected)
    # Without undoing the flip the object lands elsewhere.
    wrong = paste_masks(mask, boxes_to_original_image(input_box, image_shape, orig_h, orig_w), orig_h, orig_w, 0.5)
    assert not np.array_equal(wrong[0], expected)


def test_predictions_to_coco_maps_box_and_mask_to_original_pixels():
    image_shape = np.array([40, 50, 0.5, 0.5], np.float32)
    masks = np.ones((3, 28, 28), np.float32)
    boxes = np.array([[5, 10, 19, 24], [0, 0, 4, 4], [1, 1, 2, 2]], np.float32)
    results = predictions_to_coco(7, boxes, np.array([0.9, 0.8, 0.7]), np.array([1, 2, 1]),
                                  np.array([True, True, False]), masks, image_shape, 80, 100, LABEL_TO_CAT, 0.5)
    assert len(results) == 2
    assert results[0]["bbox"] == [10.0, 20.0, 28.0, 28.0]
    assert results[0]["category_id"] == CAT_BOOK and results[1]["category_id"] == CAT_DISC
    rle = dict(results[0]["segmentation"], counts=results[0]["segmentation"]["counts"].encode())
    decoded = mask_utils.decode(rle)
    expected = np.zeros((80, 100), np.uint8)
    expected[20:48, 10:38] = 1
    np.testing.assert_array_equal(decoded, expected)


def _reference_paste(mask, box, height, width, thr):
    """Per-pixel bilinear sampling at pixel centres (half-pixel convention), edge held."""
    size = mask.shape[0]
    x1, y1, x2, y2 = box
    out = np.zeros((height, width), np.uint8)
    for r in range(height):
        for c in range(width):
            px, py = c + 0.5, r + 0.5
            if not (x1 <= px < x2 and y1 <= py < y2):
                continue
            u = min(max((px - x1) / (x2 - x1) * size - 0.5, 0.0), size - 1.0)
            v = min(max((py - y1) / (y2 - y1) * size - 0.5, 0.0), size - 1.0)
            u0, v0 = int(math.floor(u)), int(math.floor(v))
            u1, v1 = min(u0 + 1, size - 1), min(v0 + 1, size - 1)
            fu, fv = u - u0, v - v0
            value = ((1 - fv) * ((1 - fu) * mask[v0, u0] + fu * mask[v0, u1])
                     + fv * ((1 - fu) * mask[v1, u0] + fu * mask[v1, u1]))
            out[r, c] = value >= thr
    return out


def test_paste_matches_per_pixel_reference_on_random_masks():
    rng = np.random.default_rng(0)
    height, width = 37, 45
    masks = rng.random((4, 28, 28)).astype(np.float32)
    boxes = np.array([[3.3, 4.7, 30.2, 20.1],  # fractional
                      [-5.0, -3.0, 12.0, 9.0],  # partly outside (top-left)
                      [40.0, 30.0, 60.0, 50.0],  # partly outside (bottom-right)
                      [10.0, 10.0, 10.4, 30.0]], np.float32)  # thinner than a pixel
    out = paste_masks(masks, boxes, height, width, thr=0.5)
    for k in range(4):
        np.testing.assert_array_equal(out[k], _reference_paste(masks[k], boxes[k], height, width, 0.5), err_msg=str(k))
    assert out[0].sum() > 0 and out[2].sum() > 0


def test_paste_degenerate_and_empty_inputs():
    out = paste_masks(np.ones((2, 28, 28), np.float32), np.array([[5, 5, 5, 9], [3, 3, 1, 1]], np.float32), 10, 10, 0.5)
    assert out.shape == (2, 10, 10) and out.sum() == 0
    assert paste_masks(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32), 6, 7, 0.5).shape == (0, 6, 7)
    with pytest.raises(EvaluationError, match="2 masks but 1 boxes"):
        paste_masks(np.zeros((2, 28, 28)), np.zeros((1, 4)), 6, 7, 0.5)


def test_synthetic_set_ground_truth_through_dataset_gives_ap_one(tmp_path):
    """The dataset's own items and label_to_cat_id through the writer: AP = 1 on the synthetic set."""
    from src.config import load_config
    from src.dataset import COCOSubDataset
    from src.synthetic import generate

    generate(str(tmp_path), num_train=0, num_val=6, seed=3, style="solid")
    config = load_config(overrides={"coco_root": str(tmp_path), "max_instance_count": 32})
    dataset = COCOSubDataset(str(tmp_path), is_training=False, config=config)
    cat_ids = [dataset.label_to_cat_id[label] for label in sorted(dataset.label_to_cat_id)]
    evaluator = COCOEvaluator(dataset.coco, cat_ids, dataset.image_ids, config.mask_thr)
    for index, image_id in enumerate(dataset.image_ids):
        annos, masks = dataset.annotations(index)
        real = annos[:, 5] == 0
        dets = Detections(annos[real, :4], np.ones(int(real.sum()), np.float32),
                          annos[real, 4].astype(np.int32), masks[real])
        evaluator.add_results(image_id, detections_to_coco(image_id, dets, dataset.label_to_cat_id))
    metrics = evaluator.evaluate()
    assert metrics["num_detections"] > 6
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == pytest.approx(1.0), iou_type
        assert set(metrics[iou_type]["per_class"]) == {"book", "disc", "triangle"}


def test_run_inference_over_the_eval_pipeline(tmp_path):
    """Eval pipeline -> run_inference -> evaluator with a ground-truth 'network': bbox AP = 1."""
    from src.config import load_config
    from src.evaluation.inference import build_eval_split, run_inference
    from src.synthetic import generate

    generate(str(tmp_path), num_train=0, num_val=3, seed=4, style="solid")
    config = load_config(overrides={"coco_root": str(tmp_path), "img_height": 160, "img_width": 224,
                                    "batch_size": 2, "num_parallel_workers": 1})
    dataset, evaluator, sub = build_eval_split(config)
    net = GroundTruthNet(sub, config.test_max_per_img)
    seen_ids = []
    for predictions, image_ids, image_shapes in run_inference(net, dataset, progress=False):
        assert image_shapes.shape == (2, 4)
        # Keep-ratio resize into 160x224: the scale maps the original size into the input.
        assert (image_shapes[:, 0] <= 160).all() and (image_shapes[:, 1] <= 224).all()
        seen_ids.extend(int(i) for i in image_ids)
        evaluator.process(predictions, image_ids, image_shapes)
    assert net.training is False
    assert seen_ids == sub.image_ids + [-1]
    metrics = evaluator.evaluate()
    assert metrics["bbox"]["AP"] == pytest.approx(1.0)
    assert metrics["segm"]["AP50"] == pytest.approx(1.0)


def test_build_eval_split_reads_the_annotation_file_once(tmp_path, monkeypatch):
    """The evaluator and the eval pipeline share one read of the split (the file can be large)."""
    import builtins
    import os

    from src.config import load_config
    from src.evaluation.inference import build_eval_split
    from src.synthetic import generate

    generate(str(tmp_path), num_train=0, num_val=3, seed=4, style="solid")
    config = load_config(overrides={"coco_root": str(tmp_path), "img_height": 160, "img_width": 224,
                                    "batch_size": 2, "num_parallel_workers": 1})
    opened = []
    real_open = builtins.open

    def recording_open(file, *args, **kwargs):
        if str(file).endswith(".json"):
            opened.append(os.path.abspath(str(file)))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording_open)
    dataset, evaluator, sub = build_eval_split(config)
    monkeypatch.undo()
    assert opened == [os.path.abspath(sub.ann_file)]
    assert evaluator.image_ids == sub.image_ids and dataset.get_dataset_size() == 2


def test_eval_callback_logs_metrics_and_keeps_best(tmp_path):
    from types import SimpleNamespace

    from src.config import load_config
    from src.evaluation.hook import BEST_CKPT_NAME, EVAL_HISTORY_FILE, EvalCallback
    from src.synthetic import generate

    generate(str(tmp_path / "data"), num_train=0, num_val=2, seed=6, style="solid")
    config = load_config(overrides={"coco_root": str(tmp_path / "data"), "img_height": 128, "img_width": 160,
                                    "batch_size": 2, "num_parallel_workers": 1})
    saved = []
    callback = EvalCallback(None, config, str(tmp_path), interval=2, save_fn=lambda net, path: saved.append(path),
                            steps_per_epoch=5)

    def context(step):
        return SimpleNamespace(original_args=lambda: SimpleNamespace(cur_step_num=step))

    callback.on_train_step_end(context(5))  # the end of epoch 1, not an evaluation epoch: nothing happens
    assert callback._split is None and not (tmp_path / EVAL_HISTORY_FILE).exists()
    from src.dataset import COCOSubDataset

    sub = COCOSubDataset(str(tmp_path / "data"), is_training=False, config=config)
    callback.net = GroundTruthNet(sub, config.test_max_per_img)
    callback.on_train_step_end(context(10))
    assert callback.net.training is True  # back in training mode
    callback.net = GroundTruthNet(sub, config.test_max_per_img)
    callback.on_train_step_end(context(20))  # same AP: not a new best
    lines = [json.loads(line) for line in (tmp_path / EVAL_HISTORY_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [2, 4]
    assert lines[0]["bbox_AP"] == pytest.approx(1.0)
    assert saved == [str(tmp_path / BEST_CKPT_NAME)]
    with pytest.raises(ValueError, match="interval must be >= 1, got 0"):
        EvalCallback(None, config, str(tmp_path), interval=0, save_fn=print, steps_per_epoch=5)
