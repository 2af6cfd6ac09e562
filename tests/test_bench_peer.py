"""benchmarks/bench_peer.py and peer_torchvision.py without training: the peer skipped cleanly,
and the pure helpers that make the peer match the project (canvas size, LR schedule, COCO AP)
pinned against the project's own code."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from src.config import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

import bench_peer  # noqa: E402
import peer_torchvision  # noqa: E402

BENCH = os.path.join(REPO_ROOT, "benchmarks", "bench_peer.py")


def _run_bench(args, env_peer=None):
    env = dict(os.environ)
    env.pop("PEER_PYTHON", None)
    if env_peer is not None:
        env["PEER_PYTHON"] = env_peer
    return subprocess.run([sys.executable, BENCH, "--frameworks", "torchvision", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("how", ["flag", "env", "absent"])
def test_missing_peer_python_is_skipped_with_one_json_line(how, tmp_path):
    missing = str(tmp_path / "no_venv" / "bin" / "python")
    out = tmp_path / "results.jsonl"
    args = ["--out", str(out)] + (["--peer_python", missing] if how == "flag" else [])
    result = _run_bench(args, env_peer=missing if how == "env" else None)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["bench"] == "peer" and record["framework"] == "torchvision"
    assert "python3 -m venv ~/.venvs/torchvision" in record["skipped"]
    assert "pip install torch torchvision pycocotools opencv-python-headless pyyaml" in record["skipped"]
    assert (missing in record["skipped"]) == (how != "absent")
    # Nothing else ran: no synthetic set was generated, and the same line went to --out.
    assert [json.loads(line) for line in out.read_text().splitlines()] == [record]


def test_peer_python_without_torch_is_skipped(tmp_path):
    """A Python that exists but lacks torch (the project's own) is named with the import error."""
    result = _run_bench(["--peer_python", sys.executable])
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0
    assert record["skipped"].startswith(f"{sys.executable} cannot import")
    assert "torch" in record["skipped"]


def test_bad_case_is_a_one_line_error():
    result = _run_bench(["--cases", "train_256", "--peer_python", "/nonexistent"])
    assert result.returncode == 2
    assert "case 'train_256' is not train_HxW, eval_HxW, profile_HxW or ap" in result.stderr


def test_parse_case():
    assert bench_peer.parse_case("train_384x640") == ("train", (384, 640))
    assert bench_peer.parse_case("eval_768x1280") == ("eval", (768, 1280))
    assert bench_peer.parse_case("ap") == ("ap", None)
    assert bench_peer.parse_case("profile_384x640") == ("profile", (384, 640))
    for bad in ("train", "eval_0x64", "speed_256x256", "train_axb"):
        with pytest.raises(ValueError, match=bad):
            bench_peer.parse_case(bad)


@pytest.mark.parametrize("canvas", [(256, 256), (384, 640), (768, 1280), (640, 384)])
def test_keep_ratio_size_is_the_projects_resize(canvas):
    """The peer's canvas mapping gives exactly the size src/transforms.py resizes to,
    including portrait images on a landscape canvas (where torchvision's min/max rule differs)."""
    from src.transforms import rescale_keep_ratio

    rng = np.random.default_rng(0)
    shapes = [(240, 480), (480, 240), (333, 500), (500, 333), (256, 256), (1, 900), (900, 1)]
    shapes += [tuple(int(v) for v in rng.integers(1, 1500, size=2)) for _ in range(40)]
    for height, width in shapes:
        resized, _, _ = rescale_keep_ratio(np.zeros((height, width, 3), np.uint8), *canvas)
        assert peer_torchvision.keep_ratio_size(height, width, *canvas) == resized.shape[:2], (height, width)
    # Portrait 480x240 on 384x640: the project fits the height (384x192); torchvision's own rule
    # (min_size 384, max_size 640) would give 640x320, taller than the canvas.
    assert peer_torchvision.keep_ratio_size(480, 240, 384, 640) == (384, 192)


@pytest.mark.parametrize("overrides,steps_per_epoch", [
    ({}, 48),
    ({"warmup_steps": 5, "epoch_size": 2}, 3),  # warm-up shortened to a third of the run
    ({"lr_schedule": "step", "epoch_size": 12}, 10),
])
def test_learning_rates_are_the_projects_schedule(overrides, steps_per_epoch):
    from src.config import load_config
    from src.engine.lr_schedule import build_lr_schedule

    config = load_config(overrides=overrides)
    ours = build_lr_schedule(config, steps_per_epoch)
    peer = peer_torchvision.learning_rates(len(ours), config.base_lr, config.warmup_steps, config.warmup_ratio,
                                           config.lr_schedule, config.lr_step_ratios, config.lr_step_gamma)
    np.testing.assert_allclose(np.asarray(peer, np.float32), ours, rtol=1e-6)


def test_coco_ap_is_the_projects_evaluation():
    """Same results, same ground truth: the peer's AP/AP50 equal src.evaluation's, with the
    project's maxDets (test_max_per_img below 100, where COCOeval.summarize would find nothing)."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    from src.evaluation.coco_eval import coco_evaluate

    rng = np.random.default_rng(3)
    images = [{"id": i, "height": 64, "width": 80, "file_name": f"{i}.jpg"} for i in (1, 2, 3)]
    categories = [{"id": 7, "name": "book"}, {"id": 9, "name": "disc"}, {"id": 11, "name": "other"}]

    def square(x, y, size):
        mask = np.zeros((64, 80), np.uint8)
        mask[y:y + size, x:x + size] = 1
        rle = mask_utils.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode("ascii")
        return rle, [float(x), float(y), float(size), float(size)]

    annotations, results = [], []
    for index, (image_id, cat) in enumerate([(1, 7), (1, 9), (2, 7), (3, 9), (3, 11)], start=1):
        x, y = (int(v) for v in rng.integers(0, 30, size=2))
        rle, box = square(x, y, 20)
        annotations.append({"id": index, "image_id": image_id, "category_id": cat, "segmentation": rle,
                            "bbox": box, "area": 400.0, "iscrowd": 0})
        for shift, score in ((1, 0.9), (6, 0.6), (12, 0.3)):
            rle_dt, box_dt = square(x + shift, y, 20)
            results.append({"image_id": image_id, "category_id": cat, "bbox": box_dt, "score": score,
                            "segmentation": rle_dt})
    gt = COCO()
    gt.dataset = {"images": images, "categories": categories, "annotations": annotations}
    gt.createIndex()
    for iou_type in ("bbox", "segm"):
        ours, _ = coco_evaluate(gt, results, [7, 9], [1, 2, 3], iou_type, max_dets=2)
        peer = peer_torchvision.coco_ap(gt, results, [7, 9], [1, 2, 3], iou_type, max_dets=2)
        assert 0.0 < ours["AP"] < 1.0
        assert peer["AP"] == pytest.approx(ours["AP"], abs=1e-12)
        assert peer["AP50"] == pytest.approx(ours["AP50"], abs=1e-12)


def test_read_loss_rows_ignores_a_row_being_written(tmp_path):
    path = tmp_path / "losses.csv"
    assert bench_peer.read_loss_rows(str(path)) == []
    path.write_text("epoch,step,total,step_seconds\n1,1,5.0,60.0\n1,2,4.0,2.5\n1,3,3.0,2.")
    rows = bench_peer.read_loss_rows(str(path))
    assert [row["step"] for row in rows] == ["1", "2"]
    path.write_text("epoch,step,total,step_seconds\n1,1,5.0,60.0\n1,2,4.0,2.5\n1,3,3.0,2.7\n1,4,3.0,2.9\n")
    assert bench_peer.steady_step_s(bench_peer.read_loss_rows(str(path)), warmup=1) == 2.7
    assert bench_peer.steady_step_s(bench_peer.read_loss_rows(str(path)), warmup=4) is None


def test_peer_settings_come_from_the_config():
    from src.config import load_config

    config = load_config()
    settings = bench_peer.peer_settings(config, (384, 640), threads=2)
    assert settings["canvas"] == [384, 640] and settings["threads"] == 2
    assert settings["classes"] == config.coco_classes
    for key in bench_peer.PEER_CONFIG_KEYS:
        assert settings[key] == getattr(config, key), key
    # The brief's numbers, as the default recipe has them.
    assert (settings["rpn_pre_nms_top_k_train"], settings["rpn_post_nms_top_k_train"]) == (1000, 500)
    assert (settings["rpn_pre_nms_top_k_test"], settings["rpn_post_nms_top_k_test"]) == (500, 300)
    assert (settings["rcnn_num_samples"], settings["rcnn_pos_fraction"]) == (128, 0.25)
    assert (settings["lr_schedule"], settings["warmup_steps"], settings["grad_clip_norm"]) == ("cosine", 50, 10.0)
    json.dumps(settings)  # the peer reads it as JSON


def test_budget_that_is_not_whole_epochs_is_refused_before_training(tmp_path):
    """12 training images at batch 2 are 6 steps per epoch: a 7-step budget cannot be matched by
    train.py's epochs, so nothing runs (no training), with a one-line error naming the multiple."""
    result = subprocess.run([sys.executable, BENCH, "--frameworks", "mindspore", "--cases", "ap", "--budget_steps",
                             "7", "--train_images", "12", "--val_images", "2", "--work_dir", str(tmp_path)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "--budget_steps 7 is not a whole number of our epochs (6 steps per epoch" in result.stderr
    assert result.stdout.strip() == ""
    assert not (tmp_path / "ours_ap").exists()


def test_trained_eval_fields_name_the_canvas_and_keep_speed_or_error():
    fields = bench_peer.trained_eval_fields({"images_per_s": 1.7, "net_s_per_image": 0.5, "num_detections": 508,
                                             "compile_s": 13.0})
    assert fields == {"trained_eval_384x640_images_per_s": 1.7, "trained_eval_384x640_net_s_per_image": 0.5,
                      "trained_eval_384x640_num_detections": 508}
    assert bench_peer.trained_eval_fields({"error": "bench_eval.py exit 1"}) == {
        "trained_eval_384x640_error": "bench_eval.py exit 1"}


# Kernel names as the two profilers report them (a MindSpore 2.7.2 CPU profile of our training step
# and torch.profiler's key_averages() of torchvision's, both at 384x640).
OUR_KERNELS = [
    ("Conv2DBackpropFilter", "Gradients/Default/network-WithLossCell/net-Mask_Rcnn_Resnet50/mask_head-MaskHead/"
                             "conv4-Conv2d/Grad_Conv2D/Conv2DBackpropFilter-op3", "convolution"),
    ("Conv2D", "Default/network-WithLossCell/net-Mask_Rcnn_Resnet50/backbone-ResNet50/conv1-Conv2d/Conv2D-op0",
     "convolution"),
    ("BiasAddGrad", "Gradients/Default/network-WithLossCell/net-Mask_Rcnn_Resnet50/mask_head-MaskHead/"
                    "mask_logits-Conv2d/Grad_BiasAdd/BiasAddGrad-op1", "convolution"),
    ("BatchNormGrad", "Gradients/Default/network-WithLossCell/net-Mask_Rcnn_Resnet50/backbone-ResNet50/"
                      "bn1-BatchNorm2d/Grad_BatchNorm/BatchNormGrad-op2", "batch_norm"),
    ("ReluGrad", "Gradients/Default/network-WithLossCell/net-Mask_Rcnn_Resnet50/mask_head-MaskHead/relu-ReLU/"
                 "Grad_ReLU/ReluGrad-op5", "relu"),
    ("Custom", "Gradients/Default/network-WithLossCell/net-Mask_Rcnn_Resnet50/box_roi_align-MultiLevelRoIAlign/"
               "Grad_Custom/Custom-op1", "roi_align"),
    ("Custom", "Default/network-WithLossCell/net-Mask_Rcnn_Resnet50/mask_roi_align-MultiLevelRoIAlign/Custom-op4",
     "roi_align"),
    ("Custom", "Default/network-WithLossCell/net-Mask_Rcnn_Resnet50/backbone-ResNet50/maxpool-CpuMaxPool2d/"
               "Custom-op0", "pooling_upsampling"),
    ("Custom", "Gradients/Default/network-WithLossCell/net-Mask_Rcnn_Resnet50/fpn-FPN/Grad_Custom/Custom-op2",
     "pooling_upsampling"),
    ("MaxPool", "Default/network-WithLossCell/net-Mask_Rcnn_Resnet50/fpn-FPN/MaxPool-op0", "pooling_upsampling"),
    ("MatMul", "Default/network-WithLossCell/net-Mask_Rcnn_Resnet50/box_head-BoxHead/fc1-Dense/MatMul-op0",
     "matmul"),
    ("NMSWithMask", "Default/network-WithLossCell/net-Mask_Rcnn_Resnet50/proposals_train-ProposalGenerator/"
                    "NMSWithMask-op0", "nms"),
    ("ApplyMomentum", "Default/optimizer-Momentum/ApplyMomentum-op98", "optimizer"),
    ("StridedSlice", "Default/network-WithLossCell/net-Mask_Rcnn_Resnet50/rpn_targets-RPNTargets/"
                     "StridedSlice-op10", "other"),
]
PEER_KERNELS = [
    ("aten::convolution_backward", "convolution"), ("aten::mkldnn_convolution", "convolution"),
    ("autograd::engine::evaluate_function: ConvolutionBackward0", "convolution"),
    ("aten::native_batch_norm", "batch_norm"), ("aten::native_batch_norm_backward", "batch_norm"),
    ("aten::relu_", "relu"), ("aten::clamp_min_", "relu"), ("aten::threshold_backward", "relu"),
    ("torchvision::_roi_align_backward", "roi_align"), ("GeneratedBackwardFor_torchvision_roi_align_default",
                                                         "roi_align"),
    ("aten::max_pool2d_with_indices_backward", "pooling_upsampling"),
    ("aten::upsample_nearest2d", "pooling_upsampling"),
    ("aten::mm", "matmul"), ("aten::addmm", "matmul"), ("autograd::engine::evaluate_function: AddmmBackward0",
                                                         "matmul"),
    ("torchvision::nms", "nms"), ("Optimizer.step#SGD.step", "optimizer"),
    ("aten::add_", "other"), ("aten::copy_", "other"), ("aten::empty", "other"),
]


@pytest.mark.parametrize("op_type,full_name,category", OUR_KERNELS)
def test_our_kernel_categories(op_type, full_name, category):
    assert bench_peer.our_kernel_category(op_type, full_name) == category


@pytest.mark.parametrize("name,category", PEER_KERNELS)
def test_peer_kernel_categories(name, category):
    assert bench_peer.peer_kernel_category(name) == category


def test_profile_record_sums_each_category_and_the_total():
    record = bench_peer.profile_record([("convolution", 1000.04), ("relu", 20.0), ("convolution", 500.0),
                                        ("other", 3.5)], steps=2)
    assert record["profiled_steps"] == 2
    assert record["kernel_ms_per_step"] == 1523.5
    assert record["ms_convolution"] == 1500.0 and record["ms_relu"] == 20.0 and record["ms_other"] == 3.5
    assert {key for key in record if key.startswith("ms_")} == {f"ms_{c}" for c in bench_peer.KERNEL_CATEGORIES}
    assert record["ms_roi_align"] == 0.0


FAKE_TRAINER = """
import sys, time
path, rows, pause_after = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with open(path, "w") as handle:
    handle.write("step,total\\n")
    handle.flush()
    for step in range(1, rows + 1):
        time.sleep(0.3)
        handle.write(f"{step},1.0\\n")
        handle.flush()
time.sleep(pause_after)  # what a trainer does after its last step: saving, evaluating
"""


def test_run_and_watch_times_the_first_and_last_step_apart_from_the_process_end(tmp_path):
    script = tmp_path / "trainer.py"
    script.write_text(FAKE_TRAINER)
    csv_path = str(tmp_path / "losses.csv")
    run = bench_peer.run_and_watch([sys.executable, str(script), csv_path, "3", "1.5"], csv_path,
                                   str(tmp_path / "log"), dict(os.environ))
    assert [row["step"] for row in run["rows"]] == ["1", "2", "3"]
    assert run["returncode"] == 0
    # Rows every 0.3 s, then 1.5 s of work after the last one: wall_s counts it, last_step_s does not.
    assert 0 < run["first_step_s"] <= run["last_step_s"] - 0.5
    assert run["wall_s"] - run["last_step_s"] >= 1.2


def test_run_and_watch_stops_the_command_after_the_steps_it_needs(tmp_path):
    script = tmp_path / "trainer.py"
    script.write_text(FAKE_TRAINER)
    csv_path = str(tmp_path / "losses.csv")
    run = bench_peer.run_and_watch([sys.executable, str(script), csv_path, "20", "0"], csv_path,
                                   str(tmp_path / "log"), dict(os.environ), stop_after_steps=2)
    assert run["returncode"] is None  # stopped by us
    assert 2 <= len(run["rows"]) < 20
    assert run["wall_s"] < 5


def test_profile_case_record_reads_either_sides_kernels_or_names_the_failure(tmp_path):
    kernels_json = tmp_path / "kernels.json"
    kernels_json.write_text(json.dumps([["aten::mkldnn_convolution", 900.0], ["aten::relu_", 12.5]]))
    done = subprocess.CompletedProcess(["peer"], 0, stdout="", stderr="")
    record = bench_peer.profile_case_record("peer", done, str(kernels_json), 2, bench_peer.peer_kernel_category)
    assert (record["ms_convolution"], record["ms_relu"], record["kernel_ms_per_step"]) == (900.0, 12.5, 912.5)
    ours_json = tmp_path / "ours.json"
    ours_json.write_text(json.dumps([["ReLU", "Default/x/ReLU-op0", 30.0], ["MatMul", "Default/y/MatMul-op1", 5.0]]))
    record = bench_peer.profile_case_record("profile_step.py", done, str(ours_json), 2, bench_peer.our_kernel_category)
    assert (record["ms_relu"], record["ms_matmul"]) == (30.0, 5.0)
    failed = subprocess.CompletedProcess(["peer"], 1, stdout="", stderr="Traceback\nRuntimeError: no torch\n")
    assert bench_peer.profile_case_record("peer", failed, str(kernels_json), 2, bench_peer.peer_kernel_category) == {
        "error": "peer exit 1: Traceback | RuntimeError: no torch"}
    missing = str(tmp_path / "absent.json")
    assert "error" in bench_peer.profile_case_record("peer", done, missing, 2, bench_peer.peer_kernel_category)
