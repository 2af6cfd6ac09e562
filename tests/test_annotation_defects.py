"""Annotation defects: dropped/repaired and counted in one line per split, or a one-line error
with strict_annotations; images in grayscale / RGBA / 16 bit load as RGB; unreadable images are
reported by name when the dataset is built."""

import logging
import os

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from src.annotations import DEFECT_KINDS, DatasetError
from src.dataset import COCOSubDataset
from src.image_header import ImageHeaderError, read_image_size
from test_dataset import _ann, _cfg, _img, _write_set

GOOD = (10, 10, 30, 30)  # the box of annotation 1, a well-formed book in every case


def _empty_rle(h=40, w=60):
    rle = mask_utils.encode(np.zeros((h, w), np.uint8, order="F"))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


# name -> (the defective annotation 2 (image 1 unless said), defect kind, expected rows of item 0
# as (x1, y1, x2, y2, label), strict error pattern)
CASES = {
    "short_polygon_part": (
        _ann(2, 1, 44, (40, 5, 50, 15), segm=[[40, 5, 50, 5, 50, 15, 40, 15], [1, 1, 2, 2]]),
        "polygon_part", [[10, 10, 30, 30, 1], [40, 5, 50, 15, 2]],
        r"annotation 2 \(image 1\) has a polygon with 2 points \(need at least 3\)"),
    "odd_coordinates_only_part": (
        _ann(2, 1, 44, (40, 5, 50, 15), segm=[[40, 5, 50, 5, 50, 15, 40]]),
        "polygon_part", [[10, 10, 30, 30, 1]],
        r"annotation 2 \(image 1\) has a polygon with an odd number of coordinates \(7\)"),
    "empty_polygon_list": (
        _ann(2, 1, 44, (40, 5, 50, 15), segm=[]),
        "no_segmentation", [[10, 10, 30, 30, 1]],
        r"annotation 2 \(image 1\) has an empty polygon list"),
    "rle_of_another_size": (
        _ann(2, 1, 44, (40, 5, 50, 15), segm=_empty_rle(20, 20)),
        "no_segmentation", [[10, 10, 30, 30, 1]],
        r"annotation 2 \(image 1\) has an RLE of size \[20, 20\], not the image size \[40, 60\]"),
    "zero_area_box": (
        _ann(2, 1, 44, (40, 5, 40, 15)),
        "zero_area_box", [[10, 10, 30, 30, 1]],
        r"annotation 2 \(image 1\) has a zero-area box \[40, 5, 0, 10\]"),
    "empty_mask": (
        _ann(2, 1, 44, (40, 5, 50, 15), segm=_empty_rle()),
        "empty_mask", [[10, 10, 30, 30, 1]],
        r"annotation 2 \(image 1\) has an empty mask"),
    "box_far_from_mask": (
        dict(_ann(2, 1, 44, (40, 5, 50, 15)), bbox=[0, 30, 12, 8]),
        "box_from_mask", [[10, 10, 30, 30, 1], [40, 5, 50, 15, 2]],
        r"annotation 2 \(image 1\) has bbox \[0, 30, 12, 8\] far from its mask's extent "
        r"\[40\.0, 5\.0, 10\.0, 10\.0\] \(IoU 0\.00\)"),
    "unknown_image": (
        _ann(2, 99, 44, (40, 5, 50, 15)),
        "unknown_image", [[10, 10, 30, 30, 1]],
        r"annotation 2 refers to image id 99, which is not in 'images'"),
    "unknown_category": (
        _ann(2, 1, 555, (40, 5, 50, 15)),
        "unknown_category", [[10, 10, 30, 30, 1]],
        r"annotation 2 \(image 1\) has category id 555, which is not in 'categories'"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_defect_dropped_and_counted_or_strict_error(tmp_path, caplog, name):
    defective, kind, rows, strict_error = CASES[name]
    _write_set(str(tmp_path), [_img(1)], [_ann(1, 1, 84, GOOD), defective])
    with caplog.at_level(logging.WARNING, logger="src.dataset"):
        ds = COCOSubDataset(str(tmp_path), True, _cfg(tmp_path))
    assert ds.defect_counts[kind] == 1
    assert sum(ds.defect_counts.values()) == 1 + (kind == "polygon_part" and len(rows) == 1)
    _, annos, masks, _ = ds[0]
    np.testing.assert_array_equal(annos[:, :5], rows)
    for k, (x1, y1, x2, y2, _label) in enumerate(rows):  # each mask fills its box
        assert masks[k].sum() == (x2 - x1) * (y2 - y1) and masks[k, y1:y2, x1:x2].all()
    lines = [r.getMessage() for r in caplog.records if "strict_annotations" in r.getMessage()]
    assert len(lines) == 1 and f"1 {DEFECT_KINDS[kind]} (e.g. annotation 2)" in lines[0]
    assert "split 'train2017'" in lines[0] and "\n" not in lines[0]

    with pytest.raises(DatasetError, match=r"instances_train2017\.json: " + strict_error) as info:
        COCOSubDataset(str(tmp_path), True, _cfg(tmp_path, strict_annotations=True))
    assert "\n" not in str(info.value)


def test_one_summary_line_for_many_defects_with_a_few_example_ids(tmp_path, caplog):
    anns = [_ann(1, 1, 84, GOOD)] + [_ann(10 + k, 1, 44, (40, 5, 40, 15)) for k in range(5)] + [
        _ann(20, 1, 555, GOOD), _ann(21, 1, 44, (40, 5, 50, 15), segm=_empty_rle())]
    _write_set(str(tmp_path), [_img(1)], anns)
    with caplog.at_level(logging.WARNING, logger="src.dataset"):
        ds = COCOSubDataset(str(tmp_path), True, _cfg(tmp_path))
    lines = [r.getMessage() for r in caplog.records if "strict_annotations" in r.getMessage()]
    assert len(lines) == 1
    assert ("1 annotations of unknown category ids dropped (e.g. annotation 20); "
            "5 zero-area boxes dropped (e.g. annotation 10, 11, 12); "
            "1 empty masks dropped (e.g. annotation 21)") in lines[0]
    assert len(ds[0][1]) == 1


@pytest.mark.parametrize("kind", ["gray", "rgba", "gray16", "rgb16"])
def test_grayscale_rgba_and_16_bit_images_load_as_rgb(tmp_path, kind):
    _write_set(str(tmp_path), [_img(1)], [_ann(1, 1, 84, GOOD)])
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    if kind == "gray":
        pixels, expected = np.full((40, 60), 90, np.uint8), (90, 90, 90)
    elif kind == "rgba":
        pixels, expected = np.dstack([rgb[..., ::-1], np.full((40, 60), 7, np.uint8)]), (200, 100, 50)
    elif kind == "gray16":
        pixels, expected = np.full((40, 60), 90 * 256, np.uint16), (90, 90, 90)
    else:
        pixels, expected = rgb[..., ::-1].astype(np.uint16) * 256, (200, 100, 50)
    cv2.imwrite(os.path.join(tmp_path, "train2017", "1.png"), pixels)
    ds = COCOSubDataset(str(tmp_path), True, _cfg(tmp_path))
    img = ds.decode(0)
    assert img.shape == (40, 60, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[5, 5], expected)


def test_image_size_other_than_the_json_is_reported_at_build_time(tmp_path):
    _write_set(str(tmp_path), [_img(1)], [_ann(1, 1, 84, GOOD)])
    cv2.imwrite(os.path.join(tmp_path, "train2017", "1.png"), np.zeros((30, 60, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"1\.png: image is 30x60 but the annotation file says 40x60 "
                                           r"\(image id 1\)"):
        COCOSubDataset(str(tmp_path), True, _cfg(tmp_path))


def test_read_image_size_from_headers(tmp_path):
    img = np.zeros((37, 53, 3), np.uint8)
    for ext in ("jpg", "png", "bmp"):
        path = str(tmp_path / f"a.{ext}")
        cv2.imwrite(path, img)
        assert read_image_size(path) == (37, 53), ext
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:20])
    (tmp_path / "empty.png").write_bytes(b"")
    for bad, why in (("cut.jpg", "no frame size"), ("empty.png", "empty file")):
        with pytest.raises(ImageHeaderError, match=why):
            read_image_size(str(tmp_path / bad))
