"""src/importers.py: COCO subset and VIA conversion produce sets COCOSubDataset reads."""

import json
import os

import cv2
import numpy as np
import pytest

from src import importers
from src.config import Config
from src.dataset import COCOSubDataset, DatasetError
from src.engine.runtime import EXIT_BAD_INPUT


def _fake_coco(root):
    """train2017: images 1..5; book (84) on 2, 3, 5; cup (47) on 1, 2."""
    split = "train2017"
    os.makedirs(os.path.join(root, split))
    os.makedirs(os.path.join(root, "annotations"))
    images = []
    for i in range(1, 6):
        name = f"{i:012d}.jpg"
        cv2.imwrite(os.path.join(root, split, name), np.full((30, 40, 3), 10 * i, np.uint8))
        images.append({"id": i, "file_name": name, "height": 30, "width": 40})
    def ann(ann_id, img, cat):
        return {"id": ann_id, "image_id": img, "category_id": cat, "bbox": [2, 2, 10, 10], "area": 100.0,
                "iscrowd": 0, "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]}
    anns = [ann(10, 1, 47), ann(11, 2, 47), ann(12, 2, 84), ann(13, 3, 84), ann(14, 5, 84)]
    data = {"images": images, "annotations": anns, "info": {"year": 2017},
            "categories": [{"id": 47, "name": "cup"}, {"id": 84, "name": "book"}]}
    with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as handle:
        json.dump(data, handle)


def _read(path):
    with open(path) as handle:
        return json.load(handle)


def test_coco_subset_first_images_with_the_category(tmp_path):
    _fake_coco(str(tmp_path / "coco"))
    out = tmp_path / "out"
    assert importers.main(["coco-subset", "--coco_dir", str(tmp_path / "coco"), "--category", "book",
                           "--num_images", "2", "--out", str(out), "--splits", "train2017"]) == 0
    data = _read(out / "annotations" / "instances_train2017.json")
    assert [img["id"] for img in data["images"]] == [2, 3]
    assert [a["id"] for a in data["annotations"]] == [12, 13]  # the cup on image 2 is not copied
    assert data["categories"] == [{"id": 84, "name": "book"}]
    assert sorted(os.listdir(out / "train2017")) == ["000000000002.jpg", "000000000003.jpg"]
    cfg = Config().replace(coco_root=str(out), coco_classes=["background", "book"])
    ds = COCOSubDataset(str(out), True, cfg)
    assert ds.image_ids == [2, 3] and ds.label_to_cat_id == {1: 84}


def test_coco_subset_seeded_sample_is_reproducible(tmp_path):
    _fake_coco(str(tmp_path / "coco"))

    def sample(run, seed):
        importers.coco_subset(str(tmp_path / "coco"), "book", 2, str(tmp_path / run), ["train2017"], seed=seed)
        return [img["id"] for img in _read(tmp_path / run / "annotations" / "instances_train2017.json")["images"]]

    # Seeds 0 and 1 draw samples that differ from each other and from the seedless
    # smallest-ids choice [2, 3] (the seed 7 once used here drew [2, 3] too, so code
    # ignoring the seed passed); the exact ids pin Python's random.Random(seed).sample.
    assert sample("a", 0) == sample("b", 0) == [3, 5]
    assert sample("c", 1) == [2, 5]
    assert sorted(os.listdir(tmp_path / "c" / "train2017")) == ["000000000002.jpg", "000000000005.jpg"]


def test_coco_subset_unknown_category_lists_names(tmp_path, caplog):
    _fake_coco(str(tmp_path / "coco"))
    with pytest.raises(DatasetError, match="category 'sofa' is not in the file; available: book, cup"):
        importers.coco_subset(str(tmp_path / "coco"), "sofa", 2, str(tmp_path / "out"), ["train2017"])
    assert importers.main(["coco-subset", "--coco_dir", str(tmp_path / "coco"), "--category", "sofa",
                           "--num_images", "2", "--out", str(tmp_path / "o2"), "--splits", "train2017"]) == EXIT_BAD_INPUT
    assert "category 'sofa' is not in the file" in caplog.text


def _via_project(tmp_path, layout, regions_b=None):
    img_dir = tmp_path / "imgs"
    img_dir.mkdir(exist_ok=True)
    cv2.imwrite(str(img_dir / "a.png"), np.zeros((20, 30, 3), np.uint8))
    cv2.imwrite(str(img_dir / "b.png"), np.zeros((25, 35, 3), np.uint8))
    poly = {"name": "polygon", "all_points_x": [2, 12, 12, 2], "all_points_y": [3, 3, 13, 13]}
    table = {
        "a.png123": {"filename": "a.png", "size": 123, "file_attributes": {},
                     "regions": [{"shape_attributes": poly, "region_attributes": {}}]},
        "b.png456": {"filename": "b.png", "size": 456, "file_attributes": {},
                     "regions": regions_b if regions_b is not None else [
                         {"shape_attributes": {"name": "rect", "x": 5, "y": 6, "width": 10, "height": 4},
                          "region_attributes": {}}]},
    }
    data = {"_via_settings": {}, "_via_img_metadata": table} if layout == "project" else table
    path = tmp_path / "via.json"
    path.write_text(json.dumps(data))
    return str(path), str(img_dir)


@pytest.mark.parametrize("layout", ["project", "flat"])
def test_via_to_coco(tmp_path, layout):
    via_json, img_dir = _via_project(tmp_path, layout)
    out = tmp_path / "out"
    assert importers.main(["via", "--via_json", via_json, "--image_dir", img_dir, "--out", str(out),
                           "--category", "balloon"]) == 0
    data = _read(out / "annotations" / "instances_train2017.json")
    assert [(i["id"], i["file_name"], i["height"], i["width"]) for i in data["images"]] == [
        (1, "a.png", 20, 30), (2, "b.png", 25, 35)]
    assert data["categories"] == [{"id": 1, "name": "balloon", "supercategory": "balloon"}]
    first, second = data["annotations"]
    assert first["segmentation"] == [[2, 3, 12, 3, 12, 13, 2, 13]] and first["bbox"] == [2, 3, 10, 10]
    assert first["area"] == 100.0 and second["bbox"] == [5, 6, 10, 4] and second["image_id"] == 2
    cfg = Config().replace(coco_root=str(out), coco_classes=["background", "balloon"])
    ds = COCOSubDataset(str(out), True, cfg)
    _, annos, mask, _ = ds[0]
    np.testing.assert_array_equal(annos, [[2, 3, 12, 13, 1, 0]])
    assert mask[0, 3:13, 2:12].all() and mask[0].sum() == 100


def test_via_polygon_with_two_points(tmp_path):
    bad = [{"shape_attributes": {"name": "polygon", "all_points_x": [1, 5], "all_points_y": [1, 5]}}]
    via_json, img_dir = _via_project(tmp_path, "project", regions_b=bad)
    with pytest.raises(DatasetError, match="b.png region 0: polygon with 2 points"):
        importers.via_to_coco(via_json, img_dir, str(tmp_path / "out"), "balloon")


def test_via_missing_image_and_not_via(tmp_path):
    via_json, img_dir = _via_project(tmp_path, "flat")
    os.remove(os.path.join(img_dir, "b.png"))
    with pytest.raises(DatasetError, match=r"b\.png: image file not found \(listed in"):
        importers.via_to_coco(via_json, img_dir, str(tmp_path / "out"), "balloon")
    (tmp_path / "x.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetError, match="not a VIA project \\(entry 'images' has no 'filename'/'regions'\\)"):
        importers.via_to_coco(str(tmp_path / "x.json"), img_dir, str(tmp_path / "out"), "balloon")
