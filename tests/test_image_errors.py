"""Images that cannot be decoded (a JPEG cut after its header): skipped and counted in training,
found at build time with check_images, left out and counted in evaluation (eval.py: metrics.json
and the report page), a one-line error and exit 2 with strict_images."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import painted, rect_ann, tiny_config, write_json, write_photo
from src.annotations import DatasetError
from src.config import REPO_ROOT
from src.dataset import COCOSubDataset

BOX = (8, 8, 40, 40)


def _split_with_a_cut_jpeg(folder, cut_index=1, count=4):
    """``count`` 64x64 JPEGs (image k painted with value 40 k) and their JSON; image ``cut_index``
    is cut after its header (half of the file)."""
    images, anns = [], []
    for k in range(count):
        path = os.path.join(folder, "photos", f"{k}.jpg")
        write_photo(path, painted(64, 64, [(BOX, (40 * k, 200, 60))]))
        images.append({"id": k + 1, "file_name": f"{k}.jpg", "height": 64, "width": 64})
        anns.append(rect_ann(k + 1, k + 1, 84, BOX))
    cut = os.path.join(folder, "photos", f"{cut_index}.jpg")
    data = open(cut, "rb").read()
    with open(cut, "wb") as handle:
        handle.write(data[:len(data) // 2])
    ann_file = write_json(os.path.join(folder, "export.json"), {
        "images": images, "annotations": anns, "categories": [{"id": 84, "name": "book"}]})
    return ann_file, os.path.join(folder, "photos"), cut


def _config(ann_file, image_dir, **values):
    return tiny_config(train_ann_file=ann_file, train_image_dir=image_dir, batch_size=2,
                       coco_classes=["background", "book"], **values)


def test_cut_jpeg_in_training_is_skipped_with_one_warning_and_training_data_goes_on(tmp_path, caplog):
    from src.data_sources import TrainSource
    from src.dataset import create_new_dataset

    ann_file, image_dir, cut = _split_with_a_cut_jpeg(str(tmp_path))
    config = _config(ann_file, image_dir)
    dataset = COCOSubDataset(None, True, config)
    assert len(dataset) == 4  # the header is fine: found only when decoded
    source = TrainSource(dataset, config)
    with caplog.at_level(logging.WARNING, logger="src.dataset"):
        for key in range(2 * len(dataset)):  # two epochs
            image = source[key][0]
            if key % len(dataset) == 1:  # the cut image: the next one (red channel 80) instead
                red = image[0, 20, 20] * config.img_std[0] + config.img_mean[0]
                assert abs(red - 80) < 8
    warnings = [r.getMessage() for r in caplog.records if cut in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith(f"{cut}: corrupt or unreadable image (image id 2); skipped")
    pipeline = create_new_dataset(None, 2, True, 1, config)  # the MindSpore pipeline runs through
    batches = list(pipeline.create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert len(batches) == 2 and all(np.isfinite(b[0]).all() for b in batches)


def test_check_images_finds_the_cut_jpeg_at_build_time_and_counts_it(tmp_path, caplog):
    ann_file, image_dir, cut = _split_with_a_cut_jpeg(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="src.dataset"):
        dataset = COCOSubDataset(None, True, _config(ann_file, image_dir, check_images=True))
    assert dataset.image_ids == [1, 3, 4] and dataset.image_counts["unreadable"] == 1
    assert any(f"skipped 1 images that cannot be decoded (cut off or corrupt, e.g. {cut})" in r.getMessage()
               for r in caplog.records)


def test_strict_images_makes_the_cut_jpeg_a_one_line_error(tmp_path):
    ann_file, image_dir, cut = _split_with_a_cut_jpeg(str(tmp_path))
    with pytest.raises(DatasetError) as info:
        COCOSubDataset(None, True, _config(ann_file, image_dir, strict_images=True))
    assert str(info.value) == f"{cut}: cannot be decoded, cut off or corrupt (image id 2; strict_images is true)"


def test_train_with_strict_images_exits_2_with_one_line_naming_the_file(tmp_path):
    ann_file, image_dir, cut = _split_with_a_cut_jpeg(str(tmp_path))
    run = subprocess.run(
        [sys.executable, "train.py", "--train_ann_file", ann_file, "--train_image_dir", image_dir,
         "--coco_classes", "[background, book]", "--strict_images", "true", "--run_dir", str(tmp_path / "run"),
         "--img_height", "64", "--img_width", "64", "--compile_cache_dir", "null"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and errors[0].endswith(
        f"{cut}: cannot be decoded, cut off or corrupt (image id 2; strict_images is true)")
    assert "Traceback" not in run.stderr


def test_eval_split_leaves_out_and_counts_an_image_that_cannot_be_decoded(tmp_path):
    """Evaluation decodes every image once when its split is built: the cut JPEG is neither
    inferred nor in the ground truth scored against."""
    from src.evaluation.inference import build_eval_split

    ann_file, image_dir, _ = _split_with_a_cut_jpeg(str(tmp_path))
    config = tiny_config(val_ann_file=ann_file, val_image_dir=image_dir, coco_classes=["background", "book"])
    _, evaluator, sub = build_eval_split(config, batch_size=1, num_parallel_workers=1)
    assert sub.image_counts["unreadable"] == 1
    assert evaluator.image_ids == [1, 3, 4] and sorted(sub.coco.imgs) == [1, 3, 4]


def test_eval_skips_and_counts_a_cut_jpeg_and_strict_images_makes_it_exit_2(tmp_path, monkeypatch, request, capsys):
    """Through eval.py with a random-init 64x64 network (PyNative: no graph compile): the cut JPEG
    is left out of inference and ground truth, warned about once, counted in metrics.json and on
    the report page; with strict_images it is the one ERROR line and exit 2, nothing written."""
    import json

    import mindspore as ms

    import eval as eval_cli
    from src.checkpoint.io import save_checkpoint_atomic
    from src.engine import runtime
    from src.maskrcnn.builder import build_model

    graph_context = runtime.set_mindspore_context
    monkeypatch.setattr(runtime, "set_mindspore_context",
                        lambda device, seed=None, graph_mode=True: graph_context(device, seed, graph_mode=False))
    request.addfinalizer(lambda previous=ms.get_context("mode"): ms.set_context(mode=previous))
    ann_file, image_dir, cut = _split_with_a_cut_jpeg(str(tmp_path), count=3)
    tiny = {"fpn_channels": 32, "box_head_channels": 64, "mask_head_channels": 32, "rpn_pre_nms_top_k_test": 100,
            "rpn_post_nms_top_k_test": 50}
    runtime.set_mindspore_context("CPU", seed=1)
    ckpt = str(tmp_path / "random.ckpt")
    save_checkpoint_atomic(build_model(tiny_config(coco_classes=["background", "book"], **tiny)), ckpt)
    args = ["--ckpt", ckpt, "--val_ann_file", ann_file, "--val_image_dir", image_dir, "--no_progress",
            "--coco_classes", "[background, book]", "--img_height", "64", "--img_width", "64", "--batch_size", "2",
            "--num_parallel_workers", "1", "--compile_cache_dir", "null",
            *[str(part) for key, value in tiny.items() for part in (f"--{key}", value)]]

    out = tmp_path / "out"
    assert eval_cli.main(args + ["--out", str(out), "--report", str(tmp_path / "report")]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if cut in line]
    assert len(warnings) == 1 and " WARNING " in warnings[0] and "Traceback" not in err
    assert warnings[0].endswith(f"{ann_file}: skipped 1 images that cannot be decoded (cut off or corrupt, e.g. "
                                f"{cut}); strict_images: true makes this an error")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["image_counts"]["unreadable"] == 1 and metrics["num_images"] == 2
    assert sorted(img["id"] for img in json.loads((out / "ground_truth_val2017.json").read_text())["images"]) == [1, 3]
    detections = json.loads((out / "detections_val2017.json").read_text())
    assert detections and {d["image_id"] for d in detections} <= {1, 3}
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["info"]["images left out"] == "1 that cannot be decoded (cut off or corrupt)"
    assert "images left out: 1 that cannot be decoded" in (tmp_path / "report" / "report.html").read_text()

    strict_out = tmp_path / "strict_out"
    assert eval_cli.main(args + ["--out", str(strict_out), "--strict_images", "true"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in err
    assert errors[0].endswith(f"{cut}: cannot be decoded, cut off or corrupt (image id 2; strict_images is true)")
    assert not (strict_out / "metrics.json").exists()
