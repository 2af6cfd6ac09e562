"""src/dataset.py: label mapping, crowd/padding layout, alignment through the pipeline, bad input."""

import json
import logging
import os

import cv2
import numpy as np
import pytest

from src import synthetic
from src.batch import CROWD_LABEL, EVAL_COLUMNS, TRAIN_COLUMNS
from src.batch import PAD_IMAGE_ID
from src.dataset import COCOSubDataset, DatasetError, create_new_dataset
from helpers import RED, GREEN, coco_annotation, coco_image, dataset_config, write_coco_set

@pytest.fixture()
def small_set(tmp_path):
    """Image 5: a small disc (44), a large book (84), a cup (not chosen), a crowd book region
    (uncompressed RLE); image 6: only a cup; image 7: one book."""
    crowd_mask = np.zeros((48, 64), np.uint8)
    crowd_mask[30:40, 0:10] = 1
    runs = np.diff(np.concatenate([[0], np.flatnonzero(np.diff(crowd_mask.ravel(order="F"))) + 1, [48 * 64]]))
    crowd_rle = {"size": [48, 64], "counts": [int(r) for r in runs]}
    anns = [coco_annotation(1, 5, 44, (40, 20, 50, 30)), coco_annotation(2, 5, 84, (5, 5, 35, 25)), coco_annotation(3, 5, 7, (0, 0, 4, 4)),
            coco_annotation(4, 5, 84, (0, 30, 10, 40), crowd=1, segm=crowd_rle), coco_annotation(5, 6, 7, (1, 1, 9, 9)),
            coco_annotation(6, 7, 84, (10, 10, 20, 30))]
    pixels = {5: [((40, 20, 50, 30), GREEN), ((5, 5, 35, 25), RED), ((0, 30, 10, 40), RED)],
              7: [((10, 10, 20, 30), RED)]}
    write_coco_set(str(tmp_path), [coco_image(i, 48, 64) for i in (5, 6, 7)], anns, pixels=pixels)
    return tmp_path


def test_items_labels_order_and_mapping(small_set, caplog):
    with caplog.at_level(logging.INFO, logger="src.dataset"):
        ds = COCOSubDataset(str(small_set), True, dataset_config(small_set))
    assert ds.label_to_cat_id == {1: 84, 2: 44} and ds.cat_id_to_label == {84: 1, 44: 2}
    assert ds.class_names == ["book", "disc"]
    assert ds.image_ids == [5, 7]  # image 6 has no book/disc
    assert "skipped 1 training images" in caplog.text
    raw, annos, mask, shape = ds[0]
    assert raw.dtype == np.uint8 and cv2.imdecode(raw, cv2.IMREAD_COLOR).shape == (48, 64, 3)
    # Real instances by area (book 600 px, disc 100 px), then the crowd region; the cup is gone.
    np.testing.assert_array_equal(annos, [[5, 5, 35, 25, 1, 0], [40, 20, 50, 30, 2, 0], [0, 30, 10, 40, 1, 1]])
    np.testing.assert_array_equal(shape, [48, 64])
    assert mask.shape == (3, 48, 64) and mask.dtype == np.uint8
    assert mask[2].sum() == 100 and mask[2, 30:40, 0:10].all()  # crowd RLE decoded
    assert mask[1, 20:30, 40:50].all() and mask[1].sum() == 100
    assert ds.get_image_info(1) == {"id": 7, "file_name": "7.png", "height": 48, "width": 64}


def test_eval_split_keeps_images_without_instances(small_set):
    cfg = dataset_config(small_set, val_data_type="train2017")
    ds = COCOSubDataset(str(small_set), False, cfg)
    assert ds.image_ids == [5, 6, 7]


def test_max_instance_count_keeps_largest_and_warns_once(small_set, caplog):
    with caplog.at_level(logging.WARNING, logger="src.dataset"):
        ds = COCOSubDataset(str(small_set), True, dataset_config(small_set, max_instance_count=1))
    _, annos, mask, _ = ds[0]
    np.testing.assert_array_equal(annos, [[5, 5, 35, 25, 1, 0]])
    assert mask.shape == (1, 48, 64)
    warnings = [r for r in caplog.records if "max_instance_count" in r.getMessage()]
    assert len(warnings) == 1 and "1 images have more than max_instance_count=1 instances (up to 3)" in warnings[0].getMessage()


def test_training_batch_layout_and_alignment(small_set):
    cfg = dataset_config(small_set, flip_ratio=1.0, img_height=96, img_width=128)  # always flip
    pipeline = create_new_dataset(str(small_set), 2, True, 1, cfg, shuffle=False)
    assert pipeline.get_col_names() == list(TRAIN_COLUMNS)
    batches = list(pipeline.create_dict_iterator(num_epochs=1, output_numpy=True))
    assert len(batches) == 1
    b = batches[0]
    assert b["image"].shape == (2, 3, 96, 128) and b["mask"].shape == (2, 4, 96, 128)
    assert b["box"].shape == (2, 4, 4) and b["label"].dtype == np.int32
    np.testing.assert_array_equal(b["label"], [[1, 2, CROWD_LABEL, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(b["instance_valid"], [[1, 1, 0, 0], [1, 0, 0, 0]])
    # 48x64 -> 96x128 (scale 2); flipped about x = 64: book x 10..70 -> 58..118.
    np.testing.assert_allclose(b["image_shape"][0], [96, 128, 2, 2], rtol=1e-6)
    np.testing.assert_allclose(b["box"][0], [[58, 10, 118, 50], [28, 40, 48, 60], [108, 60, 128, 80],
                                             [0, 0, 0, 0]], atol=1e-4)
    rgb = b["image"][0].transpose(1, 2, 0) * np.array(cfg.img_std) + np.array(cfg.img_mean)
    for k, colour in ((0, RED), (1, GREEN), (2, RED)):
        m = b["mask"][0, k].astype(bool)
        ys, xs = np.nonzero(m)
        np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], b["box"][0, k])
        # At scale 2 bilinear edges are >= 56% object: every mask pixel is nearer the object's
        # colour than the grey background, and no pixel off the mask is.
        box = b["box"][0, k].astype(int)
        region = np.zeros(m.shape, bool)
        region[max(box[1] - 3, 0):box[3] + 3, max(box[0] - 3, 0):box[2] + 3] = True
        nearer = np.abs(rgb - np.array(colour)).sum(-1) < np.abs(rgb - 128.0).sum(-1)
        np.testing.assert_array_equal(nearer & region, m & region)
    assert not b["mask"][0, 3].any() and not b["mask"][1, 1:].any()


def test_eval_pipeline_pads_last_batch_with_minus_one(small_set):
    cfg = dataset_config(small_set, val_data_type="train2017")
    pipeline = create_new_dataset(str(small_set), 2, False, 1, cfg)
    assert pipeline.get_col_names() == list(EVAL_COLUMNS)
    batches = list(pipeline.create_dict_iterator(num_epochs=1, output_numpy=True))
    ids = np.concatenate([b["image_id"] for b in batches])
    np.testing.assert_array_equal(ids, [5, 6, 7, PAD_IMAGE_ID])
    assert batches[0]["image"].shape == (2, 3, 64, 96)


def test_synthetic_set_with_two_workers_labels_map_to_coco_ids(tmp_path):
    synthetic.generate(str(tmp_path), 6, 0, seed=1, style="solid")
    cfg = dataset_config(tmp_path, coco_classes=["background", "book", "disc", "triangle"], max_instance_count=8,
               img_height=128, img_width=160, num_parallel_workers=2)
    ds = COCOSubDataset(str(tmp_path), True, cfg)
    assert ds.label_to_cat_id == {1: 84, 2: 44, 3: 90}
    name_of = {84: "book", 44: "disc", 90: "triangle"}
    pipeline = create_new_dataset(str(tmp_path), 2, True, 2, cfg)
    seen = 0
    for b in pipeline.create_dict_iterator(num_epochs=1, output_numpy=True):
        rgb = b["image"].transpose(0, 2, 3, 1) * np.array(cfg.img_std) + np.array(cfg.img_mean)
        for i in range(2):
            real = int(b["instance_valid"][i].sum())
            assert (b["label"][i, :real] > 0).all() and (b["label"][i, real:] <= 0).all()
            for k in range(real):
                m = b["mask"][i, k].astype(bool)
                colour = synthetic.SOLID_COLORS[name_of[ds.label_to_cat_id[int(b["label"][i, k])]]]
                close = np.abs(rgb[i][m] - np.array(colour)).max(axis=1) < 60
                assert close.mean() > 0.85
                ys, xs = np.nonzero(m)
                x1, y1, x2, y2 = b["box"][i, k]
                assert xs.min() >= x1 - 1 and xs.max() + 1 <= x2 + 1 and ys.min() >= y1 - 1 and ys.max() + 1 <= y2 + 1
                seen += 1
    assert seen >= 6


# ---- bad input ------------------------------------------------------------------------------

def test_missing_image_file(small_set):
    os.remove(os.path.join(small_set, "train2017", "7.png"))
    with pytest.raises(DatasetError, match=r"7\.png: image file not found \(image id 7\)"):
        COCOSubDataset(str(small_set), True, dataset_config(small_set))


def test_corrupt_image(small_set):
    path = os.path.join(small_set, "train2017", "7.png")
    with open(path, "rb") as handle:
        header = handle.read(40)  # a valid PNG header, no image data
    with open(path, "wb") as handle:
        handle.write(b"not a png at all")
    # Reported by name when the dataset is built, before any worker decodes it.
    with pytest.raises(DatasetError, match=r"7\.png: corrupt or unreadable image \(image id 7\): not an image"):
        COCOSubDataset(str(small_set), True, dataset_config(small_set))
    with open(path, "wb") as handle:
        handle.write(header)
    ds = COCOSubDataset(str(small_set), True, dataset_config(small_set))
    with pytest.raises(DatasetError, match=r"7\.png: corrupt or unreadable image \(image id 7\)"):
        ds.decode(1)


def test_annotation_file_that_is_not_coco(tmp_path):
    os.makedirs(tmp_path / "annotations")
    (tmp_path / "annotations" / "instances_train2017.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetError, match=r"instances_train2017\.json: not a COCO annotation file \(no list 'annotations'\)"):
        COCOSubDataset(str(tmp_path), True, dataset_config(tmp_path))
    (tmp_path / "annotations" / "instances_train2017.json").write_text("[1, 2")
    with pytest.raises(DatasetError, match="not valid JSON"):
        COCOSubDataset(str(tmp_path), True, dataset_config(tmp_path))


def test_category_not_in_file_lists_available(small_set):
    with pytest.raises(DatasetError, match="category 'sofa' is not in the file; available: book, cup, disc"):
        COCOSubDataset(str(small_set), True, dataset_config(small_set, coco_classes=["background", "book", "sofa"]))


def test_polygon_with_two_points(tmp_path):
    write_coco_set(str(tmp_path), [coco_image(1)], [coco_annotation(9, 1, 84, (1, 1, 5, 5), segm=[[1, 1, 5, 5]])])
    with pytest.raises(DatasetError, match="annotation 9 \\(image 1\\) has a polygon with 2 points"):
        COCOSubDataset(str(tmp_path), True, dataset_config(tmp_path, strict_annotations=True))


def test_zero_area_dropped_and_outside_clipped_are_counted(tmp_path, caplog):
    anns = [coco_annotation(1, 1, 84, (10, 10, 10, 20)), coco_annotation(2, 1, 84, (30, 5, 30, 9)),
            coco_annotation(3, 1, 84, (50, 30, 70, 45)), coco_annotation(4, 1, 44, (-5, 2, 8, 9))]
    write_coco_set(str(tmp_path), [coco_image(1)], anns)
    with caplog.at_level(logging.WARNING, logger="src.dataset"):
        ds = COCOSubDataset(str(tmp_path), True, dataset_config(tmp_path))
    assert "2 zero-area boxes dropped (e.g. annotation 1, 2)" in caplog.text
    assert "clipped 2 boxes that reached outside their image" in caplog.text
    _, annos, mask, _ = ds[0]
    np.testing.assert_array_equal(annos[:, :5], [[50, 30, 60, 40, 1], [0, 2, 8, 9, 2]])
    assert mask.shape == (2, 40, 60)


def test_annotation_with_unknown_image_id(tmp_path):
    write_coco_set(str(tmp_path), [coco_image(1)], [coco_annotation(3, 1, 84, (1, 1, 9, 9)), coco_annotation(4, 77, 84, (1, 1, 9, 9))])
    with pytest.raises(DatasetError, match="annotation 4 refers to image id 77, which is not in 'images'"):
        COCOSubDataset(str(tmp_path), True, dataset_config(tmp_path, strict_annotations=True))


def test_empty_dataset_after_filtering(tmp_path):
    write_coco_set(str(tmp_path), [coco_image(1), coco_image(2)], [coco_annotation(1, 1, 7, (1, 1, 9, 9))])
    with pytest.raises(DatasetError, match=r"no images left for split 'train2017' with classes \['book', 'disc'\] \(2 images"):
        COCOSubDataset(str(tmp_path), True, dataset_config(tmp_path))
