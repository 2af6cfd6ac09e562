"""src/inspect_data.py: pictures and summary on the synthetic set; anchor advice on tiny objects."""

import json
import os

import cv2
import numpy as np
import pytest

from src import inspect_data, synthetic
from src.config import Config

CLASSES = "[background, book, disc, triangle]"


def _run(root, out, *extra):
    argv = ["--coco_root", str(root), "--out", str(out), "--coco_classes", CLASSES, "--img_height", "128",
            "--img_width", "160", "--num", "3", *extra]
    assert inspect_data.main(argv) == 0
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def usual_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("usual")
    synthetic.generate(str(root), 10, 0, seed=4)
    return root


def test_inspector_on_the_synthetic_set(usual_set, tmp_path):
    with open(os.path.join(usual_set, "annotations", "instances_train2017.json")) as handle:
        data = json.load(handle)
    wanted = {synthetic.CATEGORY_ID[n]: n for n in ("book", "disc", "triangle")}
    per_class = {n: sum(1 for a in data["annotations"] if a["category_id"] == c and not a["iscrowd"])
                 for c, n in wanted.items()}
    summary = _run(usual_set, tmp_path, "--max_instance_count", "2")
    assert summary["images"] == 10 and summary["instances_per_class"] == per_class
    assert summary["instances"] == sum(per_class.values())
    per_image = [sum(1 for a in data["annotations"] if a["image_id"] == img["id"] and not a["iscrowd"]
                     and a["category_id"] in wanted) for img in data["images"]]
    assert summary["instances_per_image"]["max"] == max(per_image)
    assert summary["instances_per_image"]["images_over_limit"] == sum(n > 2 for n in per_image)
    assert summary["instances_per_image"]["instances_dropped"] == sum(max(n - 2, 0) for n in per_image)
    assert any("try max_instance_count: " in w for w in summary["warnings"])
    assert summary["anchor_sizes_px"] == [32, 64, 128, 256, 512]
    assert not any("anchor_scales" in w for w in summary["warnings"])  # usual objects fit the anchors
    pictures = sorted(f for f in os.listdir(tmp_path) if f.startswith("sample_"))
    assert len(pictures) == 3
    picture = cv2.imread(os.path.join(tmp_path, pictures[0]))
    assert picture.shape == (128, 160, 3)
    assert cv2.imread(os.path.join(tmp_path, "object_sizes.png")) is not None


def test_anchor_advice_fires_on_tiny_objects(tmp_path):
    root = tmp_path / "tiny"
    synthetic.generate(str(root), 8, 0, seed=0, object_scale=0.15)
    summary = _run(root, tmp_path / "out", "--img_height", "256", "--img_width", "256")
    assert summary["too_small_below_px"] == 16 and summary["fraction_too_small"] > 0.5
    advice = [w for w in summary["warnings"] if "anchor_scales" in w]
    assert len(advice) == 1
    assert ("of instances are under 16 px at 256x256; the smallest anchor is 32 px: try anchor_scales: ["
            in advice[0])


def test_anchor_advice_values():
    cfg = Config().replace(img_height=768, img_width=1280)
    sizes = np.array([12.0] * 61 + [100.0] * 39)
    assert inspect_data.anchor_advice(sizes, cfg) == [
        "61% of instances are under 16 px at 768x1280; the smallest anchor is 32 px: try anchor_scales: [4]"]
    large = np.array([2000.0] * 30 + [100.0] * 70)
    assert inspect_data.anchor_advice(large, cfg) == [
        "30% of instances are over 1024 px at 768x1280; the largest anchor is 512 px: try anchor_scales: [8, 32]"]
    assert inspect_data.anchor_advice(np.array([20.0] * 10 + [100.0] * 90), cfg) == []
