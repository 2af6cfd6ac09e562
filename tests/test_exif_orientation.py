"""EXIF-rotated photos: the image is what a viewer shows, in the header check, decoding, the
dataset's items, evaluation's ground truth, predict's reader and the VIA importer; an annotation
file in either orientation is accepted where the two sizes differ, any other size is an error."""

import json
import os

import cv2
import numpy as np
import pytest

from helpers import painted, rect_ann, tiny_config, write_json, write_photo
from src.annotations import DatasetError
from src.dataset import COCOSubDataset
from src.image_header import jpeg_is_complete, orient_array, orient_points, read_image_geometry, read_image_size

HEIGHT, WIDTH = 48, 80  # the upright photo: landscape
BOOK, DISC = (8, 6, 40, 30), (50, 20, 72, 44)  # upright boxes (x1, y1, x2, y2)
COLOURS = ((220, 40, 40), (40, 40, 220))


def _upright():
    return painted(HEIGHT, WIDTH, [(BOOK, COLOURS[0]), (DISC, COLOURS[1])])


def _stored_box(box, orientation):
    """The upright box on the stored pixels (the inverse turn of the points)."""
    from helpers import INVERSE_ORIENTATION

    inverse = INVERSE_ORIENTATION[orientation]
    upright_h, upright_w = HEIGHT, WIDTH
    corners = orient_points(np.array([[box[0], box[1]], [box[2], box[3]]], float), inverse, upright_h, upright_w)
    x1, y1 = corners.min(axis=0)
    x2, y2 = corners.max(axis=0)
    return tuple(int(v) for v in (x1, y1, x2, y2))


def _write_split(folder, orientation, json_orientation="upright"):
    """images/photo.jpg (EXIF ``orientation``) and ann.json with the upright or the stored geometry."""
    stored = write_photo(os.path.join(folder, "images", "photo.jpg"), _upright(), orientation)
    if json_orientation == "upright":
        height, width, boxes = HEIGHT, WIDTH, (BOOK, DISC)
    else:
        height, width = stored.shape[:2]
        boxes = tuple(_stored_box(b, orientation) for b in (BOOK, DISC))
    data = {"images": [{"id": 1, "file_name": "photo.jpg", "height": height, "width": width}],
            "annotations": [rect_ann(1, 1, 84, boxes[0]), rect_ann(2, 1, 44, boxes[1])],
            "categories": [{"id": 84, "name": "book"}, {"id": 44, "name": "disc"}]}
    ann_file = write_json(os.path.join(folder, "ann.json"), data)
    return ann_file, os.path.join(folder, "images")


def _dataset(ann_file, image_dir, training=True):
    keys = ("train_ann_file", "train_image_dir") if training else ("val_ann_file", "val_image_dir")
    return COCOSubDataset(None, training, tiny_config(**dict(zip(keys, (ann_file, image_dir)))))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_header_size_and_decoded_pixels_are_the_upright_photo(tmp_path, orientation):
    path = str(tmp_path / "photo.jpg")
    stored = write_photo(path, _upright(), orientation)
    geometry = read_image_geometry(path)
    assert (geometry.stored_height, geometry.stored_width, geometry.orientation) == (*stored.shape[:2], orientation)
    assert read_image_size(path) == (HEIGHT, WIDTH)
    decoded = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert decoded.shape == (HEIGHT, WIDTH, 3)
    # JPEG noise only: every pixel within a few levels of the upright picture (the turn is right).
    assert np.abs(decoded.astype(int) - _upright()).max() < 24
    assert orient_array(stored, orientation).shape == decoded.shape


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("json_orientation", ["upright", "stored"])
def test_training_and_eval_items_match_an_upright_copy(tmp_path, orientation, json_orientation):
    """Dataset masks, the training source's columns and the eval ground truth of an EXIF-rotated
    photo are those of the same photo saved upright, whichever orientation the JSON uses."""
    from src.data_sources import TrainSource

    rotated = _write_split(str(tmp_path / "rotated"), orientation, json_orientation)
    upright = _write_split(str(tmp_path / "upright"), 1)
    if json_orientation == "stored" and orientation == 3:  # same size both ways: taken as upright
        rotated = _write_split(str(tmp_path / "rotated"), orientation, "upright")
    ds_rot, ds_up = _dataset(*rotated), _dataset(*upright)
    assert ds_rot.get_image_info(0)["height"] == HEIGHT and ds_rot.get_image_info(0)["width"] == WIDTH
    annos_rot, masks_rot = ds_rot.annotations(0)
    annos_up, masks_up = ds_up.annotations(0)
    np.testing.assert_array_equal(annos_rot, annos_up)
    np.testing.assert_array_equal(masks_rot, masks_up)
    assert masks_up[0][BOOK[1]:BOOK[3], BOOK[0]:BOOK[2]].all() and masks_up[0].sum() == 32 * 24
    cols_rot, cols_up = TrainSource(ds_rot, ds_rot.config)[0], TrainSource(ds_up, ds_up.config)[0]
    for name, a, b in zip(("image", "image_shape", "box", "label", "valid", "mask"), cols_rot, cols_up):
        if name == "image":
            assert np.abs(a - b).max() < 0.5, name  # JPEG noise of two encodings, normalised
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)
    gt_rot, gt_up = _dataset(*rotated, training=False).cleaned_coco, _dataset(*upright, training=False).cleaned_coco
    assert gt_rot["images"][0]["height"] == HEIGHT and gt_rot["images"][0]["width"] == WIDTH
    assert [a["bbox"] for a in gt_rot["annotations"]] == [a["bbox"] for a in gt_up["annotations"]]
    assert [a["segmentation"] for a in gt_rot["annotations"]] == [a["segmentation"] for a in gt_up["annotations"]]


def test_json_of_neither_orientation_is_a_one_line_error(tmp_path):
    ann_file, image_dir = _write_split(str(tmp_path), 6)
    data = json.loads(open(ann_file).read())
    data["images"][0].update(height=50, width=80)
    write_json(ann_file, data)
    with pytest.raises(DatasetError) as info:
        _dataset(ann_file, image_dir)
    assert str(info.value) == (f"{os.path.join(image_dir, 'photo.jpg')}: image is 48x80 as shown (stored 80x48, "
                               f"EXIF orientation 6) but the annotation file says 50x80 (image id 1)")


@pytest.mark.parametrize("orientation", [6, 8])
def test_predict_reads_the_upright_photo(tmp_path, orientation):
    """predict.py's reader gives the pixels the masks are pasted on: the upright photo."""
    from src.predictor import read_image

    path = str(tmp_path / "photo.jpg")
    write_photo(path, _upright(), orientation)
    image = read_image(path)
    assert image.shape == (HEIGHT, WIDTH, 3)
    assert np.abs(image.astype(int) - _upright()).max() < 24


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_via_import_writes_the_upright_size_and_keeps_the_polygons(tmp_path, orientation):
    from src import importers

    write_photo(str(tmp_path / "photos" / "photo.jpg"), _upright(), orientation)
    x1, y1, x2, y2 = DISC  # drawn on the upright photo, as a browser shows it
    via = {"photo.jpg1": {"filename": "photo.jpg", "size": 1, "file_attributes": {}, "regions": [
        {"shape_attributes": {"name": "polygon", "all_points_x": [x1, x2, x2, x1], "all_points_y": [y1, y1, y2, y2]},
         "region_attributes": {}}]}}
    via_json = write_json(str(tmp_path / "via.json"), via)
    importers.via_to_coco(via_json, str(tmp_path / "photos"), str(tmp_path / "out"), "disc")
    data = json.loads((tmp_path / "out" / "annotations" / "instances_train2017.json").read_text())
    assert (data["images"][0]["height"], data["images"][0]["width"]) == (HEIGHT, WIDTH)
    assert data["annotations"][0]["segmentation"] == [[x1, y1, x2, y1, x2, y2, x1, y2]]


def test_orient_points_and_arrays_agree_for_all_eight_orientations():
    """A pixel's corner box turned with orient_points covers that pixel in orient_array's output."""
    grid = np.arange(5 * 7).reshape(5, 7)
    for orientation in range(1, 9):
        turned = orient_array(grid, orientation)
        for y, x in ((0, 0), (1, 5), (4, 6), (3, 2)):
            corners = orient_points(np.array([[x, y], [x + 1, y + 1]], float), orientation, 5, 7)
            nx, ny = corners.min(axis=0).astype(int)
            assert turned[ny, nx] == grid[y, x], (orientation, x, y)


def test_jpeg_cut_short_is_found_and_a_complete_one_passes(tmp_path):
    path = str(tmp_path / "photo.jpg")
    write_photo(path, _upright(), 6)
    data = open(path, "rb").read()
    assert jpeg_is_complete(data)
    assert not jpeg_is_complete(data[:len(data) // 2])
    assert jpeg_is_complete(b"\x89PNG not a jpeg")
