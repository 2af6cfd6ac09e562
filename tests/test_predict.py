"""End-to-end tests of eval.py, predict.py and scripts/run_eval.sh on a tiny network.

A randomly initialised Mask R-CNN (128x128 input, narrow heads) is saved by the test and run by
both CLIs on a three-image synthetic val split (batch 2, so the last batch carries a padding
image). A random network still returns detections (scores ~0.3-0.5), so the outputs can be
checked against each other: the pictures against the JSON masks, eval.py's COCO results against
predict.py's detections of the same images.
"""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from src.engine.runtime import CACHE_LOADED_MESSAGE
from src.viz.visualize import class_map, overlay, palette
from src.config import REPO_ROOT
from src.engine.runtime import EXIT_BAD_INPUT

pytestmark = pytest.mark.slow(25)

NUM_VAL_IMAGES = 3
MAX_PER_IMG = 10
VIDEO_FRAMES = 3
VIDEO_SIZE = (200, 232)  # (height, width), inside every synthetic image (sides >= 240)
TINY = {
    "img_height": 128, "img_width": 128, "batch_size": 2, "num_parallel_workers": 1,
    "rpn_pre_nms_top_k_test": 100, "rpn_post_nms_top_k_test": 50, "test_max_per_img": MAX_PER_IMG,
    "rcnn_num_samples": 16, "fpn_channels": 32, "box_head_channels": 64, "mask_head_channels": 32,
    "coco_classes": ["background", "book", "disc", "triangle"], "device_target": "CPU",
}


def _rle(segmentation):
    """A JSON RLE (counts as str) in the form pycocotools' C functions take (counts as bytes)."""
    return {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}


def _decode(rle):
    return mask_utils.decode(_rle(rle))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Synthetic val split, tiny config YAML and a random-init checkpoint of that config."""
    from src.checkpoint.io import save_checkpoint_atomic
    from src.config import load_config
    from src.maskrcnn.builder import build_model
    from src.engine.runtime import set_mindspore_context
    from src.synthetic import generate

    root = tmp_path_factory.mktemp("tiny")
    data = root / "data"
    generate(str(data), num_train=0, num_val=NUM_VAL_IMAGES, seed=5)
    values = dict(TINY, coco_root=str(data), run_dir=str(root / "run"))
    config_path = root / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(values))
    config = load_config(str(config_path))
    set_mindspore_context("CPU", seed=1)
    net = build_model(config)
    ckpt = root / "random.ckpt"
    save_checkpoint_atomic(net, str(ckpt))
    ann = json.loads((data / "annotations" / "instances_val2017.json").read_text())
    return {"root": root, "data": data, "config_path": str(config_path), "ckpt": str(ckpt), "ann": ann,
            "config": config}


@pytest.fixture(scope="module")
def eval_gt(tiny, predict_out):
    """The val annotations plus, on each image predict.py ran on, its top detection as one more object.

    A random network finds none of the synthetic objects (every AP and AR is 0), so metrics
    computed from the wrong detections would still look right; with one object per image that
    the network is sure to find, the APs are neither 0 nor 1. On the second image the object's
    box is the top-left 64% of its mask's extent (IoU 0.64 with the mask, so evaluation keeps it:
    under 0.5 it would be replaced by the extent, src/annotations.py): the detected box misses it
    at the higher IoU thresholds where segm finds it, so bbox and segm metrics differ too.
    """
    cat_ids = {1: 84, 2: 44, 3: 90}  # contiguous label -> the file's ids of book, disc, triangle
    ann = json.loads(json.dumps(tiny["ann"]))
    next_id = max(a["id"] for a in ann["annotations"]) + 1
    for index, img in enumerate(ann["images"][:2]):
        stem = os.path.splitext(img["file_name"])[0]
        dets = json.loads((predict_out / f"{stem}.json").read_text())["detections"]
        best = max((d for d in dets if mask_utils.area(_rle(d["segmentation"])) > 0), key=lambda d: d["score"])
        x1, y1, x2, y2 = best["box"]
        bbox = [x1, y1, x2 - x1, y2 - y1]
        if index == 1:
            mx, my, mw, mh = (float(v) for v in mask_utils.toBbox(_rle(best["segmentation"])))
            bbox = [mx, my, mw / 1.25, mh / 1.25]
        ann["annotations"].append({"id": next_id, "image_id": img["id"], "category_id": cat_ids[best["label"]],
                                   "bbox": bbox, "iscrowd": 0,
                                   "area": float(mask_utils.area(_rle(best["segmentation"]))),
                                   "segmentation": best["segmentation"]})
        next_id += 1
    path = tiny["root"] / "eval_gt.json"
    path.write_text(json.dumps(ann))
    return path


@pytest.fixture(scope="module")
def eval_out(tiny, eval_gt):
    import eval as eval_cli

    out = tiny["root"] / "eval_out"
    rc = eval_cli.main(["--ckpt", tiny["ckpt"], "--config_path", tiny["config_path"], "--out", str(out),
                        "--ann_file", str(eval_gt), "--no_progress", "--report", str(out / "report")])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def predict_out(tiny):
    import predict as predict_cli

    inputs = tiny["root"] / "inputs"
    inputs.mkdir()
    for img in tiny["ann"]["images"][:2]:
        shutil.copy(tiny["data"] / "val2017" / img["file_name"], inputs / img["file_name"])
    first = cv2.imread(str(inputs / tiny["ann"]["images"][0]["file_name"]))
    first = first[:VIDEO_SIZE[0], :VIDEO_SIZE[1]]  # mpeg4 wants even sides
    writer = cv2.VideoWriter(str(inputs / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5.0,
                             (first.shape[1], first.shape[0]))
    for _ in range(VIDEO_FRAMES):
        writer.write(first)
    writer.release()
    out = tiny["root"] / "predict_out"
    rc = predict_cli.main(["--ckpt", tiny["ckpt"], "--config_path", tiny["config_path"], "--input", str(inputs),
                           "--out", str(out), "--score_thr", "0.0", "--classes", "book,disc,triangle"])
    assert rc == 0
    return out


def test_eval_cli_writes_metrics_and_coco_results(tiny, eval_gt, eval_out):
    metrics = json.loads((eval_out / "metrics.json").read_text())
    results = json.loads((eval_out / "detections_val2017.json").read_text())
    assert results
    # The metrics are those of the written detections: pycocotools' own loadRes + COCOeval on
    # the ground-truth file eval.py wrote (the cleaned annotations it scored against), over the
    # configured classes, give the same 12 numbers (bbox results without masks, segm results
    # without boxes, so loadRes takes each result's area from the box or from the mask).
    assert metrics["ground_truth"] == str(eval_out / "ground_truth_val2017.json")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(metrics["ground_truth"])
    for iou_type, drop in (("bbox", "segmentation"), ("segm", "bbox")):
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes([{k: v for k, v in r.items() if k != drop} for r in results])
            coco_eval = COCOeval(gt, dt, iou_type)
            coco_eval.params.catIds = [44, 84, 90]  # the configured classes (the file also has "cross")
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        stats = [metrics[iou_type][key] for key in ("AP", "AP50", "AP75", "APs", "APm", "APl",
                                                    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")]
        np.testing.assert_allclose(stats, coco_eval.stats, atol=1e-9, err_msg=iou_type)
        assert 0 < metrics[iou_type]["AP"] < 1  # the added objects are found: the comparison has teeth
        per_class = metrics[iou_type]["per_class"]
        assert set(per_class) == {"book", "disc", "triangle"}
        # Every class has ground truth here, so AP is the mean of the per-class APs.
        assert metrics[iou_type]["AP"] == pytest.approx(np.mean(list(per_class.values())), abs=1e-9)
    assert metrics["bbox"]["AR100"] < metrics["segm"]["AR100"]  # one added object is found by segm only
    assert metrics["num_images"] == NUM_VAL_IMAGES
    images = {img["id"]: img for img in tiny["ann"]["images"]}
    assert metrics["num_detections"] == len(results) > 0
    per_image = {}
    for res in results:
        assert res["image_id"] in images  # the padding image (-1) is never written
        assert res["category_id"] in (84, 44, 90)  # the file's ids of book, disc, triangle
        img = images[res["image_id"]]
        x, y, w, h = res["bbox"]
        assert 0 <= x and 0 <= y and x + w <= img["width"] + 1e-3 and y + h <= img["height"] + 1e-3
        assert res["segmentation"]["size"] == [img["height"], img["width"]]
        per_image[res["image_id"]] = per_image.get(res["image_id"], 0) + 1
    assert set(per_image) == set(images)
    assert max(per_image.values()) <= MAX_PER_IMG


def test_eval_cli_report_shows_the_numbers_of_metrics_json(tiny, eval_out):
    """eval.py --report: report.json's AP table is metrics.json's, with a threshold entry per class."""
    metrics = json.loads((eval_out / "metrics.json").read_text())
    report = json.loads((eval_out / "report" / "report.json").read_text())
    assert (eval_out / "report" / "report.html").is_file()
    assert report["max_dets"] == MAX_PER_IMG == metrics["max_dets"]
    for iou_type in ("bbox", "segm"):
        for key in ("AP", "AP50", "AP75"):
            assert report["ap_table"][iou_type]["all"][key] == metrics[iou_type][key]
        for name, ap in metrics[iou_type]["per_class"].items():
            assert report["ap_table"][iou_type][name]["AP"] == pytest.approx(ap, abs=1e-12)
    assert set(report["score_thresholds"]) == {"book", "disc", "triangle"}


def test_eval_and_predict_agree_on_the_same_images(tiny, eval_out, predict_out):
    """Same network, same preprocessing: eval.py's COCO results equal predict.py's detections."""
    results = json.loads((eval_out / "detections_val2017.json").read_text())
    label_to_cat = {1: 84, 2: 44, 3: 90}
    for img in tiny["ann"]["images"][:2]:
        stem = os.path.splitext(img["file_name"])[0]
        predicted = json.loads((predict_out / f"{stem}.json").read_text())["detections"]
        evaluated = [r for r in results if r["image_id"] == img["id"]]
        assert len(predicted) == len(evaluated) > 0
        predicted.sort(key=lambda d: -d["score"])
        evaluated.sort(key=lambda r: -r["score"])
        for p, e in zip(predicted, evaluated):
            assert label_to_cat[p["label"]] == e["category_id"]
            x1, y1, x2, y2 = p["box"]
            np.testing.assert_allclose([x1, y1, x2 - x1, y2 - y1], e["bbox"], atol=0.05)
            assert p["score"] == pytest.approx(e["score"], abs=1e-3)
            agreement = (_decode(p["segmentation"]) == _decode(e["segmentation"])).mean()
            assert agreement > 0.999


def test_predict_cli_second_run_loads_the_compiled_graph(tiny, tmp_path):
    """predict.py keeps its compiled graph: a second process loads it (MindSpore says so) and
    writes the same detections as the first, which compiled it."""
    image = tiny["ann"]["images"][0]["file_name"]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(tiny["data"] / "val2017" / image, inputs / image)
    runs = []
    for name in ("compiles", "loads"):
        out = tmp_path / name
        command = [sys.executable, os.path.join(REPO_ROOT, "predict.py"), "--ckpt", tiny["ckpt"], "--config_path",
                   tiny["config_path"], "--input", str(inputs), "--out", str(out), "--score_thr", "0.0",
                   "--compile_cache_dir", str(tmp_path / "cache")]
        # GLOG_v=2 shows MindSpore's line when it runs a graph from the cache.
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
                                env=dict(os.environ, PYTHONPATH=REPO_ROOT, GLOG_v="2"))
        assert result.returncode == 0, result.stderr[-3000:]
        (detections,) = out.glob("*.json")
        runs.append((result.stdout + result.stderr, json.loads(detections.read_text())))
    assert len(list((tmp_path / "cache").glob("predict-*/rank_0/graph_cache/compile_cache_*.mindir"))) == 1
    assert CACHE_LOADED_MESSAGE not in runs[0][0]
    assert CACHE_LOADED_MESSAGE in runs[1][0]
    assert runs[0][1] and runs[1][1] == runs[0][1]


def test_predict_cli_pictures_match_the_json(tiny, predict_out):
    for img in tiny["ann"]["images"][:2]:
        stem = os.path.splitext(img["file_name"])[0]
        record = json.loads((predict_out / f"{stem}.json").read_text())
        dets = record["detections"]
        assert dets and all(d["class"] in ("book", "disc", "triangle") for d in dets)
        masks = np.stack([_decode(d["segmentation"]) for d in dets])
        union = masks.any(axis=0)
        shape = (img["height"], img["width"])

        cutout = cv2.imread(str(predict_out / f"{stem}_cutout.png"), cv2.IMREAD_UNCHANGED)
        assert cutout.shape == shape + (4,)
        np.testing.assert_array_equal(cutout[:, :, 3], union.astype(np.uint8) * 255)

        label_map = cv2.imread(str(predict_out / f"{stem}_classmap.png"), cv2.IMREAD_UNCHANGED)
        assert label_map.shape == shape and label_map.dtype == np.uint8
        expected = class_map(masks, [d["label"] for d in dets], [d["score"] for d in dets])
        np.testing.assert_array_equal(label_map, expected)

        original = cv2.imread(str(tiny["data"] / "val2017" / img["file_name"]))
        splash = cv2.imread(str(predict_out / f"{stem}_splash.png"))
        np.testing.assert_array_equal(splash[union], original[union])
        outside = splash[~union]
        assert (outside[:, 0] == outside[:, 1]).all() and (outside[:, 1] == outside[:, 2]).all()

        # Colour class map: class c in palette colour c, background black, pixel for pixel.
        colour_map = cv2.cvtColor(cv2.imread(str(predict_out / f"{stem}_classmap_color.png")), cv2.COLOR_BGR2RGB)
        assert colour_map.shape == shape + (3,)
        assert len(np.unique(label_map)) >= 2  # some class and the background
        for label in np.unique(label_map):
            expected_colour = [0, 0, 0] if label == 0 else palette()[label]
            assert (colour_map[label_map == label] == expected_colour).all(), f"class {label}"

        # Overlay: the picture visualize.overlay draws from the JSON's masks, boxes, labels and
        # scores (instance colours follow the JSON order).
        overlay_png = cv2.cvtColor(cv2.imread(str(predict_out / f"{stem}_overlay.png")), cv2.COLOR_BGR2RGB)
        expected = overlay(cv2.cvtColor(original, cv2.COLOR_BGR2RGB), masks, np.array([d["box"] for d in dets]),
                           [d["label"] for d in dets], [d["score"] for d in dets], tiny["config"].coco_classes)
        assert (expected != cv2.cvtColor(original, cv2.COLOR_BGR2RGB)).any()
        np.testing.assert_array_equal(overlay_png, expected)


def test_predict_cli_video_becomes_splash_video(tiny, predict_out):
    frames = _read_video(predict_out / "clip_splash.mp4")
    assert len(frames) == VIDEO_FRAMES
    assert frames[0].shape == VIDEO_SIZE + (3,)
    record = json.loads((predict_out / "clip.json").read_text())
    assert [f["frame"] for f in record["frames"]] == list(range(VIDEO_FRAMES))
    inputs = _read_video(tiny["root"] / "inputs" / "clip.mp4")
    for splash, frame, info in zip(frames, inputs, record["frames"]):
        # Masks lie inside their boxes, so outside every box the splash is the grey of the input
        # frame. mpeg4 leaves a little chroma on grey (|B-G| + |G-R| ~5 here, input ~19).
        outside = np.ones(VIDEO_SIZE, bool)
        for det in info["detections"]:
            x1, y1, x2, y2 = det["box"]
            outside[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] = False
        assert outside.sum() > 1000
        assert _chroma(frame)[outside].mean() > 15  # the input is colourful there
        assert _chroma(splash)[outside].mean() < 8
        grey = cv2.cvtColor(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        assert np.abs(splash.astype(int) - grey)[outside].mean() < 5
        # Inside the detections (the random network's masks cover much of its boxes) the
        # splash keeps the input's colours.
        coloured = (_chroma(splash) > 30) & ~outside
        assert coloured.sum() > 1000
        assert np.abs(splash.astype(int) - frame)[coloured].mean() < 6


def _read_video(path):
    """All frames of a video file, [H, W, 3] u8 BGR each."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def _chroma(image):
    """|B - G| + |G - R| per pixel: 0 for grey, [H, W] int."""
    image = image.astype(int)
    return np.abs(image[..., 0] - image[..., 1]) + np.abs(image[..., 1] - image[..., 2])


def test_eval_cli_class_count_mismatch_is_a_one_line_error(tiny, capsys):
    import eval as eval_cli

    rc = eval_cli.main(["--ckpt", tiny["ckpt"], "--config_path", tiny["config_path"],
                        "--coco_classes", "[background, book]", "--out", str(tiny["root"] / "bad")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "does not fit the config (2 classes incl. background)" in err
    assert "box_head.cls_score.weight" in err and "(4, 64) vs model (2, 64)" in err
    assert "Traceback" not in err
    assert not (tiny["root"] / "bad").exists()


def test_eval_cli_missing_checkpoint(tiny, capsys):
    import eval as eval_cli

    rc = eval_cli.main(["--ckpt", str(tiny["root"] / "nope.ckpt"), "--config_path", tiny["config_path"]])
    assert rc == 2
    assert "checkpoint file not found" in capsys.readouterr().err


def test_predict_cli_unknown_class_name(tiny, capsys):
    import predict as predict_cli

    rc = predict_cli.main(["--ckpt", tiny["ckpt"], "--config_path", tiny["config_path"], "--input",
                           str(tiny["data"]), "--out", str(tiny["root"] / "x"), "--classes", "book,dog"])
    assert rc == 2
    assert "--classes: 'dog' is not a configured class; choose from book, disc, triangle" in capsys.readouterr().err


def test_predict_cli_corrupt_image(tiny, tmp_path, capsys):
    import predict as predict_cli

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    rc = predict_cli.main(["--ckpt", tiny["ckpt"], "--config_path", tiny["config_path"], "--input", str(bad),
                           "--out", str(tmp_path / "o")])
    assert rc == 2
    assert f"{bad}: corrupt or unreadable image" in capsys.readouterr().err


def test_run_eval_script_usage_and_exit_codes(tmp_path):
    script = os.path.join(REPO_ROOT, "scripts", "run_eval.sh")
    result = subprocess.run(["bash", script], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "Usage: bash" in result.stderr
    result = subprocess.run(["bash", script, str(tmp_path / "none.ckpt")], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 2 and "checkpoint not found" in result.stderr


def test_run_eval_script_preserves_exit_code(tiny):
    """A checkpoint that does not fit: eval.py exits 2 and so does the script."""
    script = os.path.join(REPO_ROOT, "scripts", "run_eval.sh")
    result = subprocess.run(["bash", script, tiny["ckpt"], tiny["config_path"], "--coco_classes",
                             "[background, disc]", "--out", str(tiny["root"] / "bad2")],
                            capture_output=True, text=True, check=False, env=dict(os.environ, GLOG_v="3"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "does not fit the config" in result.stderr
    assert "eval.py exited with 2" in result.stderr


def test_eval_ann_file_option_uses_that_file(tiny, tmp_path):
    """--ann_file: the val split is read from the given JSON (here: 2 of the 3 images)."""
    import eval as eval_cli
    from src.dataset import COCOSubDataset

    ann = dict(tiny["ann"])
    keep = [img["id"] for img in ann["images"][:2]]
    ann["images"] = ann["images"][:2]
    ann["annotations"] = [a for a in ann["annotations"] if a["image_id"] in keep]
    ann_file = tmp_path / "subset.json"
    ann_file.write_text(json.dumps(ann))
    config = eval_cli.config_with_ann_file(tiny["config"], str(tiny["data"]), str(ann_file))
    sub = COCOSubDataset(str(tiny["data"]), is_training=False, config=config)
    assert sub.image_ids == keep
    assert os.path.samefile(sub.ann_file, ann_file)
    from src.annotations import DatasetError

    with pytest.raises(DatasetError, match="annotation file not found: .*missing.json"):
        eval_cli.config_with_ann_file(tiny["config"], str(tiny["data"]), str(tmp_path / "missing.json"))
    # A missing file is bad input (exit 2), not a failure of the machine (exit 3).
    code = eval_cli.main(["--ckpt", tiny["ckpt"], "--config_path", tiny["config_path"], "--out",
                          str(tmp_path / "out"), "--ann_file", str(tmp_path / "missing.json")])
    assert code == EXIT_BAD_INPUT
