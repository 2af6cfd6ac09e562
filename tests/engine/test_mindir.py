"""export.py: the MindIR of a checkpoint gives the checkpoint's detections through eval.py and
predict.py (``--mindir``, no config needed: the metadata file beside the graph); the graph is fully
static (the device check's inspection); ONNX stops with a one-line message naming the operator
that blocks it.

One tiny network (64x64 input, light heads, random weights) is exported once; eval.py runs the
checkpoint (CPU RoIAlign kernel, dynamic mask rows, batch 2) and the MindIR (native RoIAlign
kernel, static mask rows, batch 1) on the same synthetic val split.
"""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

import eval as eval_cli
import export
import predict
from src.config import load_config
from src.synthetic import generate
from src.engine.runtime import EXIT_BAD_INPUT

pytestmark = pytest.mark.slow(45)

TINY = {
    "img_height": 64, "img_width": 64, "fpn_channels": 32, "box_head_channels": 64, "mask_head_channels": 32,
    "rpn_pre_nms_top_k_test": 64, "rpn_post_nms_top_k_test": 32, "test_max_per_img": 10,
    "num_parallel_workers": 1,
}


def _args(data_dir):
    args = ["--coco_root", str(data_dir)]
    for key, value in TINY.items():
        args += [f"--{key}", str(value)]
    return args


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import mindspore as ms

    from src.maskrcnn.builder import build_model

    root = tmp_path_factory.mktemp("export")
    data_dir = root / "data"
    generate(str(data_dir), 1, 3, seed=11)
    config = load_config(None, {"coco_root": str(data_dir), **TINY})
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(4)
    ckpt = root / "random.ckpt"
    ms.save_checkpoint(build_model(config), str(ckpt))
    code = export.main(["--ckpt", str(ckpt), "--file_format", "MINDIR", "--out", str(root / "model"),
                        "--run_dir", str(root / "run")] + _args(data_dir))
    assert code == export.EXIT_OK
    return root, data_dir, ckpt, root / "model.mindir"


@pytest.fixture(scope="module")
def evaluations(exported):
    root, data_dir, ckpt, mindir = exported
    results = {}
    for kind, weights in (("ckpt", ckpt), ("mindir", mindir)):
        out = root / f"eval_{kind}"
        assert eval_cli.main([f"--{kind}", str(weights), "--out", str(out), "--no_progress"] + _args(data_dir)) == 0
        with open(out / "metrics.json") as handle:
            metrics = json.load(handle)
        with open(out / "detections_val2017.json") as handle:
            detections = json.load(handle)
        results[kind] = (metrics, detections)
    return results


def _by_image(detections):
    grouped = {}
    for det in detections:
        grouped.setdefault(det["image_id"], []).append(det)
    return {k: sorted(v, key=lambda d: -d["score"]) for k, v in grouped.items()}


def test_eval_of_the_mindir_gives_the_checkpoints_detections_and_ap(evaluations):
    (m_ckpt, d_ckpt), (m_mindir, d_mindir) = evaluations["ckpt"], evaluations["mindir"]
    assert len(d_ckpt) > 0 and len(d_mindir) == len(d_ckpt)
    ckpt_images, mindir_images = _by_image(d_ckpt), _by_image(d_mindir)
    assert ckpt_images.keys() == mindir_images.keys()
    for image_id, dets in ckpt_images.items():
        others = mindir_images[image_id]
        np.testing.assert_allclose([d["score"] for d in others], [d["score"] for d in dets], atol=1e-5)
        np.testing.assert_allclose([d["bbox"] for d in others], [d["bbox"] for d in dets], atol=1e-2)
        assert [d["category_id"] for d in others] == [d["category_id"] for d in dets]
        for a, b in zip(dets, others):
            mask_a, mask_b = mask_utils.decode(a["segmentation"]), mask_utils.decode(b["segmentation"])
            # a pixel whose probability sits on mask_thr may flip; allow 0.1 % of the object
            assert np.sum(mask_a != mask_b) <= max(1, 0.001 * mask_a.sum())
    for iou_type in ("bbox", "segm"):
        for name in ("AP", "AP50", "AP75"):
            assert m_mindir[iou_type][name] == pytest.approx(m_ckpt[iou_type][name], abs=1e-6)


def test_the_mindir_has_its_metadata_beside_it(exported):
    _, _, _, mindir = exported
    with open(str(mindir) + ".json") as handle:
        metadata = json.load(handle)
    config = load_config(None, TINY)
    assert metadata["graph"] == "model.mindir" and metadata["batch"] == 1
    assert metadata["classes"] == config.coco_classes
    assert metadata["input_size"] == [64, 64]
    assert (metadata["img_mean"], metadata["img_std"]) == (config.img_mean, config.img_std)
    assert (metadata["keep_ratio"], metadata["mask_thr"], metadata["numerics"]) == (True, 0.5, "native")
    assert (metadata["max_detections"], metadata["mask_size"]) == (10, 28)
    assert metadata["score_thresholds"] is None  # no report.json in the run folder


def test_the_exported_graph_is_fully_static_and_device_safe(exported):
    from src.device_check import check_mindir

    report = check_mindir(str(exported[3]))
    assert report.safe, report.refusals
    # the mask head's convolutions and RoIAlign are in the file, NonZero is not
    assert report.counts["ROIAlign"] >= 1 and report.counts["Conv2DTranspose"] == 1
    assert "NonZero" not in report.counts and "Custom" not in report.counts


def test_predict_with_the_mindir_alone_draws_the_checkpoints_detections(exported, evaluations, tmp_path):
    _, data_dir, _, mindir = exported
    image = sorted((data_dir / "val2017").iterdir())[0]
    image_id = int(image.stem)
    # No config: the default recipe (320x320) would not fit the 64x64 graph; the metadata does.
    code = predict.main(["--mindir", str(mindir), "--input", str(image), "--out", str(tmp_path),
                         "--score_thr", "0"])
    assert code == predict.EXIT_OK
    with open(tmp_path / f"{image.stem}.json") as handle:
        drawn = json.load(handle)["detections"]
    expected = _by_image(evaluations["ckpt"][1]).get(image_id, [])
    assert len(drawn) == len(expected) > 0
    drawn = sorted(drawn, key=lambda d: -d["score"])
    np.testing.assert_allclose([d["score"] for d in drawn], [d["score"] for d in expected], atol=1e-4)
    # predict: x1, y1, x2, y2; COCO results: x, y, w, h (both in original pixels)
    as_xywh = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in (d["box"] for d in drawn)]
    np.testing.assert_allclose(as_xywh, [d["bbox"] for d in expected], atol=2e-2)
    assert (tmp_path / f"{image.stem}_overlay.png").is_file()


def _error_lines(text, logger_name):
    # the CLIs' setup_logging replaces pytest's log handlers, so read what they print
    return [line.split(f"ERROR {logger_name}: ", 1)[1] for line in text.splitlines() if f"ERROR {logger_name}: " in line]


def test_onnx_export_names_the_blocking_operator(exported, tmp_path, capfd):
    _, data_dir, ckpt, _ = exported
    code = export.main(["--ckpt", str(ckpt), "--file_format", "ONNX", "--out", str(tmp_path / "m.onnx")]
                       + _args(data_dir))
    assert code == EXIT_BAD_INPUT
    (message,) = _error_lines(capfd.readouterr().err, "export")
    # the FPN's nearest-neighbour upsampling has no ONNX converter in MindSpore 2.7.2
    assert message.startswith("ONNX export failed:") and "ResizeNearestNeighborV2" in message
    assert not (tmp_path / "m.onnx").exists()


def test_predict_auto_thresholds_come_from_the_mindir_metadata(exported, evaluations, tmp_path, capfd):
    import shutil

    from src.engine.mindir import write_metadata

    _, data_dir, _, mindir = exported
    copy = tmp_path / "model.mindir"
    shutil.copy(mindir, copy)
    config = load_config(None, TINY)
    image = sorted((data_dir / "val2017").iterdir())[0]
    scores = sorted(d["score"] for d in _by_image(evaluations["ckpt"][1])[int(image.stem)])
    cut = (scores[0] + scores[-1]) / 2  # between the image's weakest and strongest detection
    write_metadata(str(copy), config, 1, {label: cut for label in range(1, config.num_classes)})
    code = predict.main(["--mindir", str(copy), "--input", str(image), "--out", str(tmp_path / "out"),
                         "--score_thr", "auto"])
    assert code == predict.EXIT_OK
    assert f"score thresholds from {copy}.json" in capfd.readouterr().err
    with open(tmp_path / "out" / f"{image.stem}.json") as handle:
        drawn = json.load(handle)["detections"]
    assert len(drawn) == sum(s >= cut for s in scores) > 0
    assert len(drawn) < len(scores)


def test_a_mindir_without_its_metadata_is_a_bad_input(exported, tmp_path, capfd):
    import shutil

    _, data_dir, _, mindir = exported
    copy = tmp_path / "alone.mindir"
    shutil.copy(mindir, copy)
    image = sorted((data_dir / "val2017").iterdir())[0]
    code = predict.main(["--mindir", str(copy), "--input", str(image), "--out", str(tmp_path / "out")])
    assert code == EXIT_BAD_INPUT
    assert _error_lines(capfd.readouterr().err, "predict") == [
        f"{copy}.json: metadata of alone.mindir not found (export.py writes it beside the graph; export again)"]


def test_missing_mindir_is_a_bad_input(tmp_path, capfd):
    code = eval_cli.main(["--mindir", str(tmp_path / "nope.mindir"), "--no_progress"])
    assert code == EXIT_BAD_INPUT
    assert _error_lines(capfd.readouterr().err, "eval") == [f"MindIR file not found: {tmp_path / 'nope.mindir'}"]
