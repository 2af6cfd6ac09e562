"""Pre-labels out (predict.py --export) and corrections back in (src/corrections.py).

A tiny random-init Mask R-CNN pre-labels three synthetic images in the three formats; each file is
read back by our importers and by pycocotools and must hold the model's own instances (count,
class, mask IoU >= 0.95 against the masks predict.py writes without --export). datumaro and
labelme's own loader are not test dependencies (they pull NumPy 2 / Qt into the environment): they
read the same files in ``scripts/check_prelabels_with_tools.py``, run by hand (README).
"""

import json
import os
import shutil

import cv2
import numpy as np
import pytest
import yaml
from pycocotools.coco import COCO

from helpers import FixedDetectionsNet
from src.annotations import rasterize
from src.corrections import labelme_to_set, merge_sets, tool_coco_to_set
from src.dataset import DatasetError
from src.engine.runtime import EXIT_BAD_INPUT, EXIT_OK
from src.prelabels import DEFAULT_TOLERANCE, mask_to_polygons

MIN_IOU = 0.95
CLASSES = ["background", "book", "disc", "triangle"]
TINY = {"img_height": 128, "img_width": 128, "batch_size": 1, "num_parallel_workers": 1,
        "rpn_pre_nms_top_k_test": 100, "rpn_post_nms_top_k_test": 50, "test_max_per_img": 4,
        "rcnn_num_samples": 16, "fpn_channels": 32, "box_head_channels": 64, "mask_head_channels": 32,
        "coco_classes": CLASSES, "device_target": "CPU"}


def _iou(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return (a & b).sum() / max((a | b).sum(), 1)


def _read(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


# ---- masks to polygons -------------------------------------------------------------------------

def _two_parts_with_hole():
    mask = np.zeros((60, 80), np.uint8)
    mask[10:40, 10:50] = 1
    mask[20:30, 20:30] = 0  # hole
    mask[45:50, 60:70] = 1  # second, smaller part
    return mask


def test_polygons_without_simplification_give_back_the_same_pixels():
    mask = _two_parts_with_hole()
    parts = mask_to_polygons(mask, tolerance=0)
    assert len(parts) == 2
    largest = mask.copy()
    largest[45:] = 0
    assert (rasterize(parts[:1], 60, 80) == largest).all()  # largest part first
    assert (rasterize(parts, 60, 80) == mask).all()  # pycocotools' rasteriser: hole kept, both parts
    # OpenCV's rasteriser (pixel centres at integer + 0.5) also fills the pixels the outline touches
    filled = np.zeros_like(mask)
    for part in parts:
        pts = np.round((np.asarray(part).reshape(-1, 2) - 0.5) * 16).astype(np.int32)
        cv2.fillPoly(filled, [pts], 1, shift=4)
    assert _iou(filled, mask) >= MIN_IOU


def test_default_tolerance_keeps_smooth_masks_and_cuts_vertices():
    mask = np.zeros((120, 160), np.uint8)
    cv2.ellipse(mask, (80, 60), (50, 30), 20, 0, 360, 1, thickness=-1)
    cv2.circle(mask, (80, 60), 10, 0, thickness=-1)  # a hole
    exact, simplified = mask_to_polygons(mask, 0), mask_to_polygons(mask, DEFAULT_TOLERANCE)
    assert len(simplified) == 1
    assert _iou(rasterize(simplified, 120, 160), mask) >= 0.98
    assert rasterize(simplified, 120, 160)[60, 80] == 0
    assert len(simplified[0]) < len(exact[0]) / 2


def test_simplification_stays_within_tolerance_and_drops_specks():
    mask = _two_parts_with_hole()
    mask[2, 75] = 1  # a one-pixel speck vanishes under a 1-pixel tolerance
    parts = mask_to_polygons(mask, tolerance=1.0)
    assert len(parts) == 2
    assert _iou(rasterize(parts, 60, 80), mask) >= 0.99
    assert mask_to_polygons(np.zeros((8, 8), np.uint8)) == []


# ---- the model's pre-labels, read back ----------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """predict.py --export of all formats on three synthetic images; the Predictor's detections
    (the model's pasted masks) are recorded on the way by a spy around ``Predictor.__call__``.

    The random network's masks are speckled (up to ~70 parts of a few pixels), which any
    simplification changes by more than 5 %: the export runs at tolerance 0 (the pixel outline);
    the default tolerance is checked on smooth masks above."""
    import predict as predict_cli
    from src.checkpoint.io import save_checkpoint_atomic
    from src.config import load_config
    from src.engine.runtime import set_mindspore_context
    from src.maskrcnn.builder import build_model
    from src.predictor import Predictor
    from src.synthetic import generate

    root = tmp_path_factory.mktemp("prelabels")
    data = root / "data"
    generate(str(data), num_train=0, num_val=3, seed=7)
    config_path = root / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(dict(TINY, coco_root=str(data), run_dir=str(root / "run"))))
    set_mindspore_context("CPU", seed=1)
    ckpt = root / "random.ckpt"
    save_checkpoint_atomic(build_model(load_config(str(config_path))), str(ckpt))
    images = data / "val2017"
    recorded = []
    real_call = Predictor.__call__

    def spy(self, image):
        detections = real_call(self, image)
        recorded.append(detections)
        return detections

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Predictor, "__call__", spy)
        rc = predict_cli.main(["--ckpt", str(ckpt), "--config_path", str(config_path), "--input", str(images),
                               "--score_thr", "0", "--out", str(root / "prelabels"), "--polygon_tolerance", "0",
                               "--export", "coco", "labelstudio", "labelme"])
    assert rc == EXIT_OK
    names = sorted(os.listdir(images))
    assert len(recorded) == len(names)
    model = {name: [(CLASSES[int(label)], mask) for label, mask in zip(dets.labels, dets.masks) if mask.any()]
             for name, dets in zip(names, recorded)}
    assert sum(len(v) for v in model.values()) >= 3, "the tiny model should detect something to pre-label"
    return {"root": root, "images": images, "out": root / "prelabels", "model": model}


def _coco_instances(coco):
    """{file name: [(class name, mask)]} of a pycocotools COCO, in annotation order."""
    found = {}
    for image_id, info in coco.imgs.items():
        found[info["file_name"]] = [(coco.cats[a["category_id"]]["name"], coco.annToMask(a))
                                    for a in sorted(coco.imgToAnns[image_id], key=lambda a: a["id"])]
    return found


def _assert_same_instances(found, model, reference=lambda mask: mask):
    assert sorted(found) == sorted(model)
    for name, instances in model.items():
        assert [c for c, _ in found[name]] == [c for c, _ in instances], name
        for (_, got), (_, want) in zip(found[name], instances):
            assert _iou(got, reference(want)) >= MIN_IOU, name


def test_coco_prelabels_read_by_pycocotools_hold_the_models_instances(exported):
    coco = COCO(str(exported["out"] / "annotations" / "instances_default.json"))
    _assert_same_instances(_coco_instances(coco), exported["model"])
    assert all(0.0 <= a["score"] <= 1.0 for a in coco.anns.values())
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == CLASSES[1:]


def test_coco_prelabels_through_the_tool_importer_and_the_dataset(exported, tmp_path):
    from src.config import load_config
    from src.dataset import COCOSubDataset

    counts = tool_coco_to_set(str(exported["out"] / "annotations" / "instances_default.json"), str(exported["images"]),
                              str(tmp_path), "train2017")
    assert counts["images"] == 3
    coco = COCO(str(tmp_path / "annotations" / "instances_train2017.json"))
    _assert_same_instances(_coco_instances(coco), exported["model"])
    config = load_config(overrides=dict(coco_root=str(tmp_path), coco_classes=CLASSES))
    dataset = COCOSubDataset(str(tmp_path), is_training=True, config=config)
    assert len(dataset) == 3


def test_labelme_prelabels_through_the_labelme_importer(exported, tmp_path):
    folder = exported["out"] / "labelme"
    first = _read(folder / sorted(os.listdir(folder))[0])
    assert (folder / first["imagePath"]).is_file()
    assert all(s["shape_type"] == "polygon" for s in first["shapes"])
    labelme_to_set(str(folder), str(tmp_path), "train2017", CLASSES[1:])
    coco = COCO(str(tmp_path / "annotations" / "instances_train2017.json"))
    _assert_same_instances(_coco_instances(coco), exported["model"])


def _largest_part(mask):
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])) if count > 1 else mask


def test_label_studio_predictions_hold_each_instances_largest_part(exported):
    tasks = _read(exported["out"] / "prelabels_label_studio.json")
    config = (exported["out"] / "label_studio_config.xml").read_text()
    assert all(f'<Label value="{name}"/>' in config for name in CLASSES[1:])
    found = {}
    for task in tasks:
        name = task["data"]["image"]
        regions = []
        for result in task["predictions"][0]["result"]:
            width, height = result["original_width"], result["original_height"]
            pts = np.asarray(result["value"]["points"], np.float64) * [width / 100.0, height / 100.0]
            assert 0.0 <= result["score"] <= 1.0
            regions.append((result["value"]["polygonlabels"][0], rasterize([pts.ravel().tolist()], height, width)))
        found[name] = regions
    _assert_same_instances(found, exported["model"], reference=_largest_part)


def test_predict_export_of_a_video_is_refused(exported, tmp_path, capfd):
    import predict as predict_cli

    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not really a video")
    config = exported["root"] / "tiny.yaml"
    rc = predict_cli.main(["--ckpt", str(exported["root"] / "random.ckpt"), "--config_path", str(config),
                           "--input", str(video), "--out", str(tmp_path / "out"), "--export", "coco"])
    assert rc == EXIT_BAD_INPUT
    assert f"{video}: --export takes images only, not videos" in capfd.readouterr().err


# ---- corrections back in: labelme edge cases, tool COCO quirks, merge ---------------------------

def _image(path, value, shape=(40, 50)):
    cv2.imwrite(str(path), np.full(shape + (3,), value, np.uint8))


def _labelme_file(folder, image_name, shapes):
    data = {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": image_name, "imageData": None,
            "imageHeight": 40, "imageWidth": 50}
    (folder / (os.path.splitext(image_name)[0] + ".json")).write_text(json.dumps(data))


def _shape(label, points, group=None, kind="polygon"):
    return {"label": label, "points": points, "group_id": group, "shape_type": kind, "flags": {}}


def test_labelme_groups_parts_converts_rectangles_and_names_bad_shapes(tmp_path):
    src = tmp_path / "lm"
    src.mkdir()
    _image(src / "a.png", 10)
    square = [[2, 2], [10, 2], [10, 10], [2, 10]]
    other = [[20, 20], [30, 20], [30, 30]]
    _labelme_file(src, "a.png", [_shape("disc", square, 4), _shape("disc", other, 4),
                                 _shape("book", [[30, 5], [40, 15]], kind="rectangle")])
    counts = labelme_to_set(str(src), str(tmp_path / "set"), "train2017")
    assert counts == {"images": 1, "annotations": 2}
    data = _read(tmp_path / "set" / "annotations" / "instances_train2017.json")
    assert [c["name"] for c in data["categories"]] == ["book", "disc"]
    disc, book = data["annotations"]
    assert len(disc["segmentation"]) == 2 and disc["category_id"] == 2
    assert book["segmentation"] == [[30.0, 5.0, 40.0, 5.0, 40.0, 15.0, 30.0, 15.0]]
    assert (tmp_path / "set" / "train2017" / "a.png").is_file()
    _labelme_file(src, "a.png", [_shape("disc", [[1, 1], [5, 5]], kind="circle")])
    with pytest.raises(DatasetError, match=r"a\.json: shape 0 \('disc'\): unsupported shape_type 'circle' "
                                           r"\(polygon and rectangle are supported\)"):
        labelme_to_set(str(src), str(tmp_path / "set2"), "train2017")


def test_labelme_importer_cli_names_a_missing_image(tmp_path, caplog):
    from src import importers

    src = tmp_path / "lm"
    src.mkdir()
    _labelme_file(src, "gone.png", [])
    rc = importers.main(["labelme", "--json_dir", str(src), "--out", str(tmp_path / "set")])
    assert rc == EXIT_BAD_INPUT
    assert "gone.json: image 'gone.png' not found" in caplog.text


def test_label_studio_coco_export_with_zero_category_and_upload_prefix(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _image(images / "photo.jpg", 50)
    export = {"images": [{"id": 0, "file_name": "images/1a2b3c4d-photo.jpg", "height": 40, "width": 50}],
              "categories": [{"id": 0, "name": "book"}, {"id": 1, "name": "disc"}],
              "annotations": [{"id": 0, "image_id": 0, "category_id": 1, "bbox": [2, 2, 8, 8], "area": 64,
                               "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]], "iscrowd": 0}]}
    (tmp_path / "result.json").write_text(json.dumps(export))
    tool_coco_to_set(str(tmp_path / "result.json"), str(images), str(tmp_path / "set"), "train2017")
    data = _read(tmp_path / "set" / "annotations" / "instances_train2017.json")
    assert data["images"] == [{"id": 1, "file_name": "photo.jpg", "height": 40, "width": 50}]
    assert data["categories"][0]["id"] == 1 and data["categories"][1]["name"] == "disc"
    assert data["annotations"][0]["category_id"] == 2 and data["annotations"][0]["id"] == 1
    export["images"][0]["file_name"] = "missing.jpg"
    (tmp_path / "result.json").write_text(json.dumps(export))
    with pytest.raises(DatasetError, match=r"result\.json: image 'missing\.jpg' \(id 0\) not found in"):
        tool_coco_to_set(str(tmp_path / "result.json"), str(images), str(tmp_path / "set"), "train2017")


def test_cvat_rle_masks_marked_crowd_become_instances_unless_kept(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _image(images / "a.png", 10)
    mask = np.zeros((40, 50), np.uint8)
    mask[5:15, 5:25] = 1
    counts = _uncompressed_counts(mask)  # as CVAT writes them
    export = {"images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 50}],
              "categories": [{"id": 1, "name": "book"}],
              "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 10], "area": 200,
                               "segmentation": {"size": [40, 50], "counts": counts}, "iscrowd": 1}]}
    (tmp_path / "instances_default.json").write_text(json.dumps(export))
    tool_coco_to_set(str(tmp_path / "instances_default.json"), str(images), str(tmp_path / "set"), "train2017")
    ann = _read(tmp_path / "set" / "annotations" / "instances_train2017.json")["annotations"][0]
    assert ann["iscrowd"] == 0
    assert (rasterize(ann["segmentation"], 40, 50) == mask).all()
    tool_coco_to_set(str(tmp_path / "instances_default.json"), str(images), str(tmp_path / "kept"), "train2017",
                     keep_crowd=True)
    assert _read(tmp_path / "kept" / "annotations" / "instances_train2017.json")["annotations"][0]["iscrowd"] == 1


def _uncompressed_counts(mask):
    """COCO uncompressed RLE counts of a mask (column-major runs, starting with zeros)."""
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return counts


def _small_set(root, values, category="book"):
    os.makedirs(root / "train2017")
    images, anns = [], []
    for i, value in enumerate(values, start=1):
        _image(root / "train2017" / f"img{i}.png", value)
        images.append({"id": 10 * i, "file_name": f"img{i}.png", "height": 40, "width": 50})
        anns.append({"id": 100 * i, "image_id": 10 * i, "category_id": 7, "bbox": [1, 1, 5, 5], "area": 25,
                     "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]], "iscrowd": 0})
    os.makedirs(root / "annotations")
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 7, "name": category}]}))


def test_merge_appends_new_images_with_fresh_ids_and_skips_duplicates(tmp_path):
    from src import importers

    _small_set(tmp_path / "train", [10, 20])
    _small_set(tmp_path / "new", [20, 30, 40])  # img1 = train's img2 (same bytes); img2, img3 are new
    assert importers.main(["merge", "--into", str(tmp_path / "train"), "--add", str(tmp_path / "new")]) == EXIT_OK
    data = _read(tmp_path / "train" / "annotations" / "instances_train2017.json")
    assert len(data["images"]) == 4 and len(data["annotations"]) == 4
    assert len({i["id"] for i in data["images"]}) == 4 and len({a["id"] for a in data["annotations"]}) == 4
    assert [i["file_name"] for i in data["images"]] == ["img1.png", "img2.png", "img2_1.png", "img3.png"]
    ids = {i["id"]: i["file_name"] for i in data["images"]}
    for ann in data["annotations"]:
        assert ann["image_id"] in ids and ann["category_id"] == 7
    merged = cv2.imread(str(tmp_path / "train" / "train2017" / "img2_1.png"))
    assert merged[0, 0, 0] == 30
    # merging the same set again adds nothing
    counts = merge_sets(str(tmp_path / "train"), "train2017", str(tmp_path / "new"), "train2017")
    assert counts == {"added_images": 0, "added_annotations": 0, "skipped_duplicates": 3}


def test_merge_adds_an_unknown_category_and_refuses_a_missing_image(tmp_path):
    _small_set(tmp_path / "train", [10])
    _small_set(tmp_path / "new", [60], category="disc")
    merge_sets(str(tmp_path / "train"), "train2017", str(tmp_path / "new"), "train2017")
    data = _read(tmp_path / "train" / "annotations" / "instances_train2017.json")
    assert data["categories"] == [{"id": 7, "name": "book"}, {"id": 8, "name": "disc", "supercategory": ""}]
    assert data["annotations"][-1]["category_id"] == 8
    shutil.rmtree(tmp_path / "new" / "train2017")
    with pytest.raises(DatasetError, match=r"img1\.png: image file not found \(image id 10 of .*instances_train2017"):
        merge_sets(str(tmp_path / "train"), "train2017", str(tmp_path / "new"), "train2017")


@pytest.mark.parametrize("with_report,kept", [(True, [(1, 0.9)]), (False, [(1, 0.9), (2, 0.6)])])
def test_export_takes_the_reports_per_class_thresholds_when_there_is_one(tmp_path, monkeypatch, with_report, kept):
    import predict as predict_cli

    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump({"img_height": 64, "img_width": 64, "compile_cache_dir": None,
                                           "coco_classes": ["background", "book", "disc"]}))
    report = tmp_path / "report.json"
    if with_report:
        report.write_text(json.dumps({"score_thresholds": {"book": 0.5, "disc": 0.7}}))
    (tmp_path / "images").mkdir()
    _image(tmp_path / "images" / "a.png", 0, shape=(64, 64))
    (tmp_path / "w.ckpt").write_bytes(b"")
    monkeypatch.setattr(predict_cli, "inference_network", lambda config, ckpt, mindir: (FixedDetectionsNet(), None))
    rc = predict_cli.main(["--ckpt", str(tmp_path / "w.ckpt"), "--config_path", str(config_path), "--input",
                           str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--export", "coco",
                           "--report_json", str(report)])
    assert rc == EXIT_OK
    anns = _read(tmp_path / "out" / "annotations" / "instances_default.json")["annotations"]
    assert sorted((a["category_id"], round(a["score"], 2)) for a in anns) == kept
