"""src/synthetic.py: deterministic files that pycocotools loads, masks on their objects."""

import contextlib
import hashlib
import io
import os

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from src import synthetic

NUM_TRAIN, NUM_VAL = 25, 3  # 25 train images include one empty image (every 25th)


def _hash_tree(root):
    digest = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            digest.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()


def _load(root, split):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(os.path.join(root, "annotations", f"instances_{split}.json"))


@pytest.fixture(scope="module")
def solid_set(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("solid"))
    assert synthetic.main(["--out", root, "--train", str(NUM_TRAIN), "--val", str(NUM_VAL),
                           "--seed", "0", "--style", "solid"]) == 0
    return root


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    synthetic.generate(str(tmp_path / "a"), 4, 2, seed=3)
    synthetic.generate(str(tmp_path / "b"), 4, 2, seed=3)
    synthetic.generate(str(tmp_path / "c"), 4, 2, seed=4)
    assert _hash_tree(tmp_path / "a") == _hash_tree(tmp_path / "b")
    assert _hash_tree(tmp_path / "a") != _hash_tree(tmp_path / "c")
    assert len(os.listdir(tmp_path / "a" / "train2017")) == 4
    assert len(os.listdir(tmp_path / "a" / "val2017")) == 2


def test_categories_are_coco_style_and_non_contiguous(solid_set):
    coco = _load(solid_set, "train2017")
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert names == {12: "cross", 44: "disc", 84: "book", 90: "triangle"}
    val = _load(solid_set, "val2017")
    assert min(val.getImgIds()) == 100001
    train_ann_ids = set(coco.getAnnIds())
    assert not train_ann_ids & set(val.getAnnIds())


def test_image_sizes_counts_empty_and_crowd(solid_set):
    coco = _load(solid_set, "train2017")
    sizes = [(img["height"], img["width"]) for img in coco.loadImgs(coco.getImgIds())]
    assert all(synthetic.MIN_SIDE <= s <= synthetic.MAX_SIDE for hw in sizes for s in hw)
    assert len(set(sizes)) > 10
    per_image = [len(coco.getAnnIds(imgIds=i, iscrowd=False)) for i in coco.getImgIds()]
    assert per_image[synthetic.EMPTY_EVERY - 1] == 0
    assert max(per_image) <= synthetic.MAX_OBJECTS and min(per_image[:synthetic.EMPTY_EVERY - 1]) >= 1
    anns = coco.loadAnns(coco.getAnnIds())
    crowd = [a for a in anns if a["iscrowd"]]
    assert crowd and all(isinstance(a["segmentation"]["counts"], list) for a in crowd)
    # Fragmented visible regions are stored as compressed RLE, the rest as one polygon.
    assert any(isinstance(a["segmentation"], dict) and not a["iscrowd"] for a in anns)
    assert any(isinstance(a["segmentation"], list) for a in anns)


def test_masks_are_visible_parts_on_their_colour(solid_set):
    coco = _load(solid_set, "train2017")
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    for img_id in coco.getImgIds():
        info = coco.imgs[img_id]
        img = cv2.imread(os.path.join(solid_set, "train2017", info["file_name"]))[:, :, ::-1]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=False))
        masks = [coco.annToMask(a) for a in anns]
        if masks:
            # Visible parts only: masks of one image never overlap.
            assert np.stack(masks).sum(axis=0).max() <= 1
        for ann, mask in zip(anns, masks):
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann["bbox"]
            # bbox and area describe exactly the mask pycocotools decodes.
            assert [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] == [x, y, w, h]
            assert mask.sum() == ann["area"]
            colour = np.array(synthetic.SOLID_COLORS[names[ann["category_id"]]])
            # JPEG chroma subsampling blurs colour edges; the interior keeps the colour.
            diff = np.abs(img[mask.astype(bool)].astype(int) - colour).max(axis=1)
            assert (diff < 60).mean() > 0.9, (img_id, ann["id"])


def test_objects_are_large_enough_to_learn(solid_set):
    coco = _load(solid_set, "train2017")
    for ann in coco.loadAnns(coco.getAnnIds(iscrowd=False)):
        info = coco.imgs[ann["image_id"]]
        if ann["area"] >= 0.6 * ann["bbox"][2] * ann["bbox"][3]:  # not heavily occluded
            assert max(ann["bbox"][2:]) >= 0.1 * min(info["height"], info["width"])


def test_bad_style_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="style must be one of"):
        synthetic.generate_split(str(tmp_path), "train2017", 1, 0, style="neon")
