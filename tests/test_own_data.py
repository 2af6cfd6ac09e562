"""Data from anywhere: the data keys (paths relative to the config file or the current folder),
`importers split` and `via --class_attribute`, keep_empty_images, the recipe sized to the data
(its anchor coverage against a brute-force NumPy count), and the whole path from a folder of
photos plus one COCO export in a tool's own layout to a report."""

import json
import os

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from helpers import painted, rect_ann, tiny_config, write_json, write_photo
from src import importers
from src.config import ConfigError, load_config
from src.dataset import COCOSubDataset
from src.engine.runtime import EXIT_BAD_INPUT, EXIT_OK

pytestmark = pytest.mark.slow(18)

CLASSES = ("cat", "dog", "owl")


# ---------------------------------------------------------------------------------------------
# data keys
# ---------------------------------------------------------------------------------------------

def test_data_paths_in_a_config_file_are_relative_to_it_and_on_the_command_line_to_the_cwd(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    recipe = tmp_path / "cfg" / "my.yaml"
    recipe.write_text("train_ann_file: ../data/train.json\ntrain_image_dir: ../photos\n")
    monkeypatch.chdir(tmp_path / "cfg")
    config = load_config(str(recipe), {"val_ann_file": "here/val.json", "val_image_dir": "/abs/photos"})
    assert config.train_ann_file == str(tmp_path / "data" / "train.json")
    assert config.train_image_dir == str(tmp_path / "photos")
    assert config.val_ann_file == str(tmp_path / "cfg" / "here" / "val.json")
    assert config.split_paths(config.train_data_type) == (str(tmp_path / "photos"), str(tmp_path / "data" / "train.json"))
    assert config.split_paths(config.val_data_type) == ("/abs/photos", str(tmp_path / "cfg" / "here" / "val.json"))


def test_half_set_data_keys_are_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, {"train_ann_file": "x.json"})
    assert str(info.value).endswith("key 'train_ann_file' is set but 'train_image_dir' is not; set both (the "
                                    "annotation file and the folder its file_name values are relative to)")


# ---------------------------------------------------------------------------------------------
# importers split, via --class_attribute
# ---------------------------------------------------------------------------------------------

def _export(folder, images_per_class=(12, 6, 3), empty=4, seed=0):
    """A COCO export: images of one class each (cat 12, dog 6, owl 3 by default) plus ``empty``
    images without instances; returns (path, {image id: class or None})."""
    images, anns, truth = [], [], {}
    image_id = 0
    for cls, count in zip(CLASSES, images_per_class):
        for _ in range(count):
            image_id += 1
            images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": 40, "width": 40})
            anns.append(rect_ann(image_id, image_id, CLASSES.index(cls) + 1, (5, 5, 25, 25)))
            truth[image_id] = cls
    for _ in range(empty):
        image_id += 1
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": 40, "width": 40})
        truth[image_id] = None
    categories = [{"id": k + 1, "name": name, "supercategory": ""} for k, name in enumerate(CLASSES)]
    return write_json(os.path.join(folder, "export.json"), {"images": images, "annotations": anns,
                                                              "categories": categories}), truth


def test_split_is_deterministic_stratified_and_keeps_images_without_instances(tmp_path):
    ann_file, truth = _export(str(tmp_path))
    assert importers.main(["split", "--ann_file", ann_file, "--out", str(tmp_path / "a"), "--val_fraction", "0.34",
                           "--seed", "5"]) == EXIT_OK
    importers.split_export(ann_file, str(tmp_path / "b"), 0.34, seed=5)
    importers.split_export(ann_file, str(tmp_path / "c"), 0.34, seed=6)
    read = {name: {part: json.loads((tmp_path / name / f"{part}.json").read_text()) for part in ("train", "val")}
            for name in "abc"}
    assert read["a"] == read["b"]  # same file, same seed: the same bytes
    assert read["a"]["val"]["images"] != read["c"]["val"]["images"]
    val_ids = {img["id"] for img in read["a"]["val"]["images"]}
    train_ids = {img["id"] for img in read["a"]["train"]["images"]}
    assert val_ids | train_ids == set(truth) and not val_ids & train_ids
    per_class = {cls: sum(1 for i in val_ids if truth[i] == cls) for cls in (*CLASSES, None)}
    assert per_class == {"cat": 4, "dog": 2, "owl": 1, None: 1}  # round(0.34 * n) of every class
    for part in ("train", "val"):  # annotations follow their image; categories all kept
        ids = {img["id"] for img in read["a"][part]["images"]}
        assert {a["image_id"] for a in read["a"][part]["annotations"]} <= ids
        assert [c["name"] for c in read["a"][part]["categories"]] == list(CLASSES)


def test_split_with_a_fraction_that_empties_a_side_is_a_one_line_error(tmp_path, caplog):
    ann_file, _ = _export(str(tmp_path), images_per_class=(1, 0, 0), empty=0)
    assert importers.main(["split", "--ann_file", ann_file, "--out", str(tmp_path / "o"),
                           "--val_fraction", "0.2"]) == EXIT_BAD_INPUT
    assert f"{ann_file}: 1 images cannot be split with --val_fraction 0.2 (one side would be empty)" in caplog.text


def _via_with_attributes(tmp_path, species):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((30, 40, 3), np.uint8))
    regions = [{"shape_attributes": {"name": "rect", "x": 2 + 10 * k, "y": 2, "width": 8, "height": 8},
                "region_attributes": {"species": value}} for k, value in enumerate(species)]
    return write_json(str(tmp_path / "via.json"), {"a.png1": {"filename": "a.png", "size": 1, "regions": regions,
                                                              "file_attributes": {}}})


def test_via_class_attribute_makes_one_category_per_value(tmp_path):
    via_json = _via_with_attributes(tmp_path, ["owl", "cat", {"owl": True, "dog": False}])
    assert importers.main(["via", "--via_json", via_json, "--image_dir", str(tmp_path), "--out",
                           str(tmp_path / "out"), "--class_attribute", "species"]) == EXIT_OK
    data = json.loads((tmp_path / "out" / "annotations" / "instances_train2017.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    assert sorted(names.values()) == ["cat", "owl"]
    assert [names[a["category_id"]] for a in data["annotations"]] == ["owl", "cat", "owl"]


def test_via_region_without_the_class_attribute_is_a_one_line_error(tmp_path, caplog):
    via_json = _via_with_attributes(tmp_path, ["owl", ""])
    assert importers.main(["via", "--via_json", via_json, "--image_dir", str(tmp_path), "--out",
                           str(tmp_path / "out"), "--class_attribute", "species"]) == EXIT_BAD_INPUT
    assert f"{via_json}: a.png region 1: no single value of region attribute 'species' (found '')" in caplog.text


# ---------------------------------------------------------------------------------------------
# keep_empty_images
# ---------------------------------------------------------------------------------------------

def test_keep_empty_images_puts_images_without_instances_into_the_batches_as_negatives(tmp_path):
    from src.dataset import create_new_dataset

    ann_file, truth = _export(str(tmp_path), images_per_class=(2, 0, 0), empty=2)
    for image_id in truth:
        cv2.imwrite(str(tmp_path / f"{image_id}.jpg"), np.full((40, 40, 3), 90, np.uint8))
    values = dict(train_ann_file=ann_file, train_image_dir=str(tmp_path), coco_classes=["background", *CLASSES])
    assert len(COCOSubDataset(None, True, tiny_config(**values))) == 2  # the default skips them
    config = tiny_config(keep_empty_images=True, **values)
    assert COCOSubDataset(None, True, config).image_ids == [1, 2, 3, 4]
    batches = list(create_new_dataset(None, 2, True, 1, config, shuffle=False)
                   .create_tuple_iterator(num_epochs=1, output_numpy=True))
    valid = np.concatenate([b[4] for b in batches])  # instance_valid [4, max_instance_count]
    assert valid.sum(axis=1).tolist() == [1, 1, 0, 0]


# ---------------------------------------------------------------------------------------------
# the recipe
# ---------------------------------------------------------------------------------------------

def _brute_force_coverage(boxes, height, width, scale, ratios=(0.5, 1.0, 2.0), iou=0.3):
    """Fraction of boxes with IoU >= iou against every anchor of the native layout, in plain NumPy."""
    anchors = []
    for stride in (4, 8, 16, 32, 64):
        rows, cols = -(-height // stride), -(-width // stride)
        cy, cx = np.meshgrid((np.arange(rows) + 0.5) * stride, (np.arange(cols) + 0.5) * stride, indexing="ij")
        for ratio in ratios:
            h, w = scale * stride * np.sqrt(ratio), scale * stride / np.sqrt(ratio)
            anchors.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).reshape(-1, 4))
    anchors = np.concatenate(anchors)
    hits = 0
    for box in boxes:
        iw = np.clip(np.minimum(box[2], anchors[:, 2]) - np.maximum(box[0], anchors[:, 0]), 0, None)
        ih = np.clip(np.minimum(box[3], anchors[:, 3]) - np.maximum(box[1], anchors[:, 1]), 0, None)
        inter = iw * ih
        union = (box[2] - box[0]) * (box[3] - box[1]) + (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1]) - inter
        hits += (inter / union).max() >= iou
    return hits / len(boxes)


def _file_boxes(ann_file, height, width):
    """Boxes of the file's objects (not crowd regions) scaled into a height x width input (keep
    ratio), read with json alone."""
    data = json.loads(open(ann_file).read())
    sizes = {img["id"]: (img["height"], img["width"]) for img in data["images"]}
    boxes = []
    for ann in (a for a in data["annotations"] if not a.get("iscrowd")):
        h, w = sizes[ann["image_id"]]
        s = min(height / h, width / w)
        x, y, bw, bh = ann["bbox"]
        boxes.append([x * s, y * s, (x + bw) * s, (y + bh) * s])
    return np.array(boxes)


@pytest.mark.parametrize("object_scale,expect_larger_input", [(1.0, False), (0.12, True)])
def test_recipe_coverage_matches_a_brute_force_count_and_tiny_objects_get_a_larger_input(
        tmp_path, object_scale, expect_larger_input):
    import yaml

    from src import inspect_data
    from src.synthetic import generate

    generate(str(tmp_path / "data"), 10, 0, seed=2, style="solid", object_scale=object_scale)
    ann_file = str(tmp_path / "data" / "annotations" / "instances_train2017.json")
    recipe_path = str(tmp_path / "recipes" / "my.yaml")
    assert inspect_data.main(["--train_ann_file", ann_file, "--train_image_dir", str(tmp_path / "data" / "train2017"),
                              "--img_height", "128", "--img_width", "128", "--out", str(tmp_path / "inspect"),
                              "--num", "1", "--write_recipe", recipe_path]) == EXIT_OK
    summary = json.loads((tmp_path / "inspect" / "summary.json").read_text())
    boxes = _file_boxes(ann_file, 128, 128)
    assert summary["anchor_coverage"]["fraction"] == pytest.approx(_brute_force_coverage(boxes, 128, 128, 8.0), abs=1e-3)
    assert summary["images_decoded"] == {"decoded": summary["images"], "unreadable": []}
    recipe = yaml.safe_load(open(recipe_path).read())
    assert recipe["coco_classes"] == ["background"] + [c["name"] for c in json.loads(open(ann_file).read())["categories"]]
    assert os.path.normpath(os.path.join(tmp_path / "recipes", recipe["train_ann_file"])) == ann_file
    loaded = load_config(recipe_path)  # the written recipe loads, its paths relative to itself
    assert loaded.train_ann_file == ann_file
    counts = {}
    for ann in json.loads(open(ann_file).read())["annotations"]:
        counts[ann["image_id"]] = counts.get(ann["image_id"], 0) + 1
    assert recipe["max_instance_count"] == max(counts.values())
    assert recipe["test_max_per_img"] >= max(counts.values())
    size = recipe["img_height"]
    header = open(recipe_path).read().splitlines()[2]
    proposed = _brute_force_coverage(_file_boxes(ann_file, size, recipe["img_width"]), size, recipe["img_width"],
                                     recipe["anchor_scales"][0])
    assert f"{proposed:.3f} with these settings" in header
    if expect_larger_input:
        assert size > 128 and proposed > summary["anchor_coverage"]["fraction"]
    else:
        assert size == 128 and proposed >= 0.9


# ---------------------------------------------------------------------------------------------
# the whole path
# ---------------------------------------------------------------------------------------------

def _phone_photos_and_cvat_export(root):
    """photos/IMG_000k.jpg (two EXIF-rotated) and export/annotations/instances_default.json in
    the upright sizes, CVAT's layout: 8 photos, 2 classes, one without instances, one defect."""
    images, anns = [], []
    rng = np.random.default_rng(0)
    for k in range(8):
        boxes = [] if k == 7 else [(int(x), int(y), int(x) + 30, int(y) + 24) for x, y in rng.integers(4, 40, (2, 2))]
        cls = [1 + (k + j) % 2 for j in range(len(boxes))]
        colours = [(220, 60, 40) if c == 1 else (40, 90, 220) for c in cls]
        orientation = {2: 6, 5: 8}.get(k, 1)
        write_photo(os.path.join(root, "photos", f"IMG_000{k}.jpg"), painted(72, 80, list(zip(boxes, colours))),
                    orientation)
        images.append({"id": k + 1, "file_name": f"IMG_000{k}.jpg", "height": 72, "width": 80, "license": 0,
                       "flickr_url": "", "coco_url": "", "date_captured": 0})
        for box, c in zip(boxes, cls):
            anns.append(rect_ann(len(anns) + 1, k + 1, c, box, attributes={"occluded": False}))
    anns.append(rect_ann(len(anns) + 1, 1, 2, (0, 0, 5, 5), segmentation=[[1, 1, 4, 4]]))  # 2-point polygon
    return write_json(os.path.join(root, "export", "annotations", "instances_default.json"), {
        "licenses": [{"name": "", "id": 0, "url": ""}], "info": {}, "images": images, "annotations": anns,
        "categories": [{"id": 1, "name": "apple", "supercategory": ""}, {"id": 2, "name": "pear", "supercategory": ""}]})


def test_from_a_photo_folder_and_one_export_to_a_report(tmp_path, monkeypatch, request):
    """The README's "your own data" commands, at 64 px with a tiny network, run in the user's folder.

    The network runs in PyNative mode here: the test is about the data's path (two graph compiles
    would take most of two minutes on the CI machine; graph mode is tested in tests/engine/test_trainer.py).
    """
    import eval as eval_cli
    import train
    from src import inspect_data
    from src.engine import runtime

    import mindspore as ms

    graph_context = runtime.set_mindspore_context
    monkeypatch.setattr(runtime, "set_mindspore_context",
                        lambda device, seed=None, graph_mode=True: graph_context(device, seed, graph_mode=False))
    request.addfinalizer(lambda previous=ms.get_context("mode"): ms.set_context(mode=previous))

    work = tmp_path / "me"
    _phone_photos_and_cvat_export(str(work))
    monkeypatch.chdir(work)
    assert importers.main(["split", "--ann_file", "export/annotations/instances_default.json", "--out", "splits",
                           "--val_fraction", "0.25", "--seed", "0"]) == EXIT_OK
    assert inspect_data.main(["--train_ann_file", "splits/train.json", "--train_image_dir", "photos",
                              "--val_ann_file", "splits/val.json", "--val_image_dir", "photos", "--out", "inspect",
                              "--num", "1", "--write_recipe", "my.yaml"]) == EXIT_OK
    tiny = ["--img_height", "64", "--img_width", "64", "--fpn_channels", "32", "--box_head_channels", "64",
            "--mask_head_channels", "32", "--rpn_pre_nms_top_k_train", "200", "--rpn_post_nms_top_k_train", "50",
            "--rpn_pre_nms_top_k_test", "100", "--rpn_post_nms_top_k_test", "50", "--rcnn_num_samples", "32",
            "--compile_cache_dir", "null", "--num_parallel_workers", "1", "--run_dir", str(tmp_path / "run")]
    # The photo without objects lands in train.json (its stratum of one rounds to no val image) and
    # trains as a negative: the run ends with finite losses (a NaN loss exits 1).
    assert len(json.loads((work / "splits" / "train.json").read_text())["images"]) == 6
    assert train.main(["--config_path", "my.yaml", "--epoch_size", "1", "--batch_size", "3", "--warmup_steps", "1",
                       "--keep_empty_images", "true", "--log_every", "1", *tiny]) == EXIT_OK
    losses = (tmp_path / "run" / "losses.csv").read_text().splitlines()
    assert len(losses) == 3 and "nan" not in "".join(losses).lower()
    assert eval_cli.main(["--config_path", "my.yaml", "--ckpt", str(tmp_path / "run" / "last.ckpt"), "--out", "eval",
                          "--report", "report", "--no_progress", *tiny]) == EXIT_OK
    assert (work / "report" / "report.html").is_file()
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    assert metrics["classes"] == ["apple", "pear"] and metrics["num_images"] == 2
    gt = COCO(metrics["ground_truth"])  # the cleaned file pycocotools reads
    assert sorted(img["file_name"] for img in gt.dataset["images"]) == sorted(
        img["file_name"] for img in json.loads((work / "splits" / "val.json").read_text())["images"])
    assert all(img["height"] == 72 and img["width"] == 80 for img in gt.dataset["images"])
    assert sum(metrics["annotation_defects"].values()) == (1 if 1 in gt.imgs else 0)
    assert "annotation defects" in (work / "report" / "report.html").read_text()


def test_recipe_numerics_come_from_the_weights_named(tmp_path):
    """A converted file's stored preset wins; otherwise the kind of checkpoint decides."""
    from src.checkpoint.io import save_checkpoint_atomic
    from src.checkpoint.names import NUMERICS_KEY
    from src.inspect_data import weights_numerics

    weight = np.ones((4, 3, 1, 1), np.float32)
    converted = str(tmp_path / "converted.ckpt")
    save_checkpoint_atomic({"backbone.conv1.weight": weight}, converted, append_dict={NUMERICS_KEY: "torchvision"})
    zoo = str(tmp_path / "zoo.ckpt")
    save_checkpoint_atomic({"rcnn_mask.conv1.weight": weight}, zoo)
    assert weights_numerics(converted) == "torchvision"
    assert weights_numerics(zoo) == "zoo"


def test_inspector_warns_when_test_max_per_img_caps_the_most_crowded_image(tmp_path):
    from src.inspect_data import summarize

    images = [{"id": 1, "file_name": "1.png", "height": 40, "width": 40}]
    anns = [rect_ann(k + 1, 1, 1, (2 + 6 * k, 2, 6 + 6 * k, 8)) for k in range(5)]
    ann_file = write_json(str(tmp_path / "a.json"), {"images": images, "annotations": anns,
                                                     "categories": [{"id": 1, "name": "cat"}]})
    cv2.imwrite(str(tmp_path / "1.png"), np.zeros((40, 40, 3), np.uint8))
    config = tiny_config(train_ann_file=ann_file, train_image_dir=str(tmp_path), coco_classes=["background", "cat"],
                         max_instance_count=8, test_max_per_img=3)
    summary, _, _ = summarize(COCOSubDataset(None, True, config), config)
    assert ("the most crowded image has 5 instances but test_max_per_img is 3: even a perfect model misses "
            "the rest; try test_max_per_img: 10") in summary["warnings"]
