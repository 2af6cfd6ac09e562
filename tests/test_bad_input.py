"""Bad input a newcomer meets, and the one line each gets: an unavailable device, poisoned
checkpoint values, a losses.csv left by a killed run, data listed twice, a config value of the
wrong type, an output folder that cannot be written, a checkpoint of another network.

No graph is compiled here: every case fails before the network runs.
"""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import convert_checkpoint
import eval as eval_cli
import predict
import train
from src.checkpoint.io import CheckpointError, read_checkpoint, save_checkpoint_atomic
from src.checkpoint.load import load_pretrained, load_train_state
from src.config import REPO_ROOT, ConfigError, load_config
from src.annotations import DatasetError, load_coco_json
from src.engine.loss_log import drop_rows_after_step
from src.engine.runtime import (EXIT_BAD_INPUT, EXIT_ENVIRONMENT, DeviceUnavailableError, OutputFolderError,
                                ensure_writable_folder, set_mindspore_context)

CHANNELS = 4


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """The CLIs point the root logger at this test's captured stderr; undo that afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _error_lines(text):
    return [line for line in text.splitlines() if " ERROR " in line]


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------------------------
# device


def test_unavailable_device_in_train_is_one_line_naming_devices_and_override(tmp_path):
    """As a user runs it: the whole stderr is the one error line (no traceback)."""
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "train.py"), "--device_target", "Ascend",
                             "--run_dir", str(tmp_path / "run")], cwd=REPO_ROOT, capture_output=True, text=True,
                            env=dict(os.environ, GLOG_v="3", PYTHONPATH=REPO_ROOT), timeout=300)
    assert result.returncode == EXIT_BAD_INPUT == train.EXIT_BAD_INPUT
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "device_target 'Ascend' is not available with this MindSpore" in lines[0]
    # asked before MindSpore tries (and fails verbosely): no MindSpore reason in brackets
    assert lines[0].endswith("install on this machine; it can run: CPU; run with --device_target CPU")


@pytest.mark.parametrize("cli", ["eval", "predict"])
def test_unavailable_device_in_eval_and_predict(cli, tmp_path, capsys):
    ckpt = _write(tmp_path / "any.ckpt", "not read: the device is checked first")
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    if cli == "eval":
        code = eval_cli.main(["--ckpt", ckpt, "--out", str(tmp_path / "out"), "--device_target", "GPU"])
    else:
        code = predict.main(["--ckpt", ckpt, "--input", str(image), "--out", str(tmp_path / "out"),
                             "--device_target", "GPU"])
    assert code == EXIT_BAD_INPUT
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "device_target 'GPU' is not available" in errors[0], errors
    assert errors[0].endswith("install on this machine; it can run: CPU; run with --device_target CPU")


def test_device_that_mindspore_refuses_itself_gives_its_reason(monkeypatch):
    """Plug-in present but no device on the machine: MindSpore's own first line is kept."""
    import mindspore as ms
    from mindspore import hal

    def refuse(device):
        raise RuntimeError("no Ascend device found\n(long C++ stack)")

    monkeypatch.setattr(hal, "is_available", lambda device: True)
    monkeypatch.setattr(ms, "set_device", refuse)
    previous = ms.get_context("mode")
    try:
        with pytest.raises(DeviceUnavailableError, match=r"^device_target 'Ascend' is not available .* machine "
                                                         r"\(no Ascend device found\); it can run: CPU, Ascend, "
                                                         r"GPU; run with --device_target CPU$"):
            set_mindspore_context("Ascend")
    finally:
        ms.set_context(mode=previous)


# ---------------------------------------------------------------------------------------------
# checkpoint values


def _bn_params(variance):
    return {"backbone.bn1.gamma": np.ones(CHANNELS, np.float32), "backbone.bn1.beta": np.zeros(CHANNELS, np.float32),
            "backbone.bn1.moving_mean": np.zeros(CHANNELS, np.float32),
            "backbone.bn1.moving_variance": np.asarray(variance, np.float32)}


def test_negative_moving_variance_is_refused_naming_tensor_and_file(tmp_path):
    path = str(tmp_path / "backbone.ckpt")
    save_checkpoint_atomic(_bn_params([1.0, -0.5, 2.0, -3.0]), path)
    with pytest.raises(CheckpointError, match=rf"^{path}: values that cannot be right, refusing to load .*: "
                                              r"negative BatchNorm moving variance in 1 tensors: "
                                              r"backbone\.bn1\.moving_variance \(2 of 4, min -3\)$"):
        load_pretrained(None, path)  # refused before the network is touched


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_any_tensor_is_refused(tmp_path, bad):
    params = _bn_params([1.0] * CHANNELS)
    params["backbone.bn1.gamma"][2] = bad
    params["box_head.fc6.weight"] = np.full((3, 2), bad, np.float32)
    path = str(tmp_path / "full.ckpt")
    save_checkpoint_atomic(params, path)
    with pytest.raises(CheckpointError, match=r"NaN/Inf values in 2 tensors: backbone\.bn1\.gamma \(1 of 4\), "
                                              r"box_head\.fc6\.weight \(6 of 6\)$"):
        read_checkpoint(path)


def test_resume_from_a_checkpoint_with_non_finite_optimizer_state_is_refused(tmp_path):
    params = _bn_params([1.0] * CHANNELS)
    params["moments.backbone.bn1.gamma"] = np.array([0.0, np.nan, 0.0, 0.0], np.float32)
    params["global_step"] = np.array([12], np.int32)
    path = str(tmp_path / "last.ckpt")
    save_checkpoint_atomic(params, path)
    with pytest.raises(CheckpointError, match=r"last\.ckpt: values .* moments\.backbone\.bn1\.gamma \(1 of 4\)"):
        load_train_state(None, path)


def test_healthy_values_load_zero_variance_included(tmp_path):
    path = str(tmp_path / "ok.ckpt")
    params = _bn_params([0.0, 1.0, 2.0, 3.0])
    params["global_step"] = np.array([-1], np.int32)  # integers are not value-checked
    save_checkpoint_atomic(params, path)
    assert sorted(read_checkpoint(path)) == sorted(params)


def test_convert_checkpoint_refuses_a_poisoned_zoo_file(tmp_path, capsys):
    path = str(tmp_path / "resnet50.ckpt")
    save_checkpoint_atomic({"conv1.weight": np.ones((2, 3, 1, 1), np.float32),
                            "bn1.moving_variance": np.array([-1.0, 1.0], np.float32)}, path)
    out = tmp_path / "out.ckpt"
    assert convert_checkpoint.main(["--ckpt_file", path, "--output_file", str(out)]) == EXIT_BAD_INPUT
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "negative BatchNorm moving variance in 1 tensors: bn1.moving_variance" in errors[0]
    assert path in errors[0] and not out.exists()


def test_checkpoint_of_another_architecture_is_refused_naming_it(tmp_path):
    """A plain classification net (LeNet-like names) and a dict of random names."""
    lenet = str(tmp_path / "lenet.ckpt")
    save_checkpoint_atomic({"conv1.weight": np.ones((6, 1, 5, 5), np.float32),
                            "fc1.weight": np.ones((120, 400), np.float32)}, lenet)
    with pytest.raises(CheckpointError, match=r"lenet\.ckpt: not a model-zoo ResNet50 checkpoint: found 1 of "
                                              r"the 265 .*conv1\.weight file \(6, 1, 5, 5\) expected \(64, 3, 7, 7\)"):
        load_pretrained(None, lenet)
    random_names = str(tmp_path / "random.ckpt")
    save_checkpoint_atomic({"alpha": np.ones(3, np.float32), "beta.gamma": np.ones(2, np.float32)}, random_names)
    with pytest.raises(CheckpointError, match=r"random\.ckpt: not a model-zoo or torchvision ResNet50 / Mask R-CNN checkpoint "
                                              r"nor one of this project: unrecognised parameter names "
                                              r"\(alpha, beta\.gamma\)"):
        load_pretrained(None, random_names)


# ---------------------------------------------------------------------------------------------
# losses.csv after a kill

HEADER = "epoch,step,total,lr\r\n"


def _rows(steps):
    return "".join(f"1,{s},0.5,0.01\r\n" for s in steps)


def test_rows_after_the_resumed_step_are_dropped(tmp_path):
    path = tmp_path / "losses.csv"
    # killed at step 16 with the checkpoint at 12, the last row cut in the middle
    _write(path, HEADER + _rows(range(1, 17)) + "2,17,0.4")
    assert drop_rows_after_step(str(path), 12) == 5
    assert path.read_bytes().decode() == HEADER + _rows(range(1, 13))
    assert os.listdir(tmp_path) == ["losses.csv"]  # no temporary file left
    assert drop_rows_after_step(str(path), 12) == 0
    assert drop_rows_after_step(str(tmp_path / "absent.csv"), 12) == 0 and not (tmp_path / "absent.csv").exists()


def test_a_failed_rewrite_leaves_the_log_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "losses.csv"
    before = HEADER + _rows(range(1, 6))
    _write(path, before)

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        drop_rows_after_step(str(path), 2)
    assert path.read_bytes().decode() == before and os.listdir(tmp_path) == ["losses.csv"]


def test_a_foreign_losses_csv_in_the_run_dir_is_an_error(tmp_path):
    path = _write(tmp_path / "losses.csv", "a,b\n1,2\n")
    with pytest.raises(ConfigError, match=r"losses\.csv: not a losses\.csv written by train\.py \(no 'step' "
                                          r"column\); move it away or choose another run_dir$"):
        drop_rows_after_step(path, 3)


# ---------------------------------------------------------------------------------------------
# data listed twice


def _coco(images, annotations):
    return {"images": [{"id": i, "file_name": name, "height": 8, "width": 8} for i, name in images],
            "annotations": [{"id": a, "image_id": img, "category_id": 1, "bbox": [0, 0, 2, 2],
                             "segmentation": [[0, 0, 2, 0, 2, 2]]} for a, img in annotations],
            "categories": [{"id": 1, "name": "book"}]}


@pytest.mark.parametrize("images, annotations, message", [
    ([(1, "a.jpg"), (2, "b.jpg"), (1, "c.jpg")], [(1, 1)], r"image id 1 is used twice \(images\[0\] and images\[2\]\)"),
    ([(1, "a.jpg"), (5, "a.jpg")], [(1, 1)],
     r"image file 'a\.jpg' is listed twice, under image ids 1 and 5 \(images\[0\] and images\[1\]\)"),
    ([(1, "a.jpg"), (2, "b.jpg")], [(7, 1), (8, 2), (7, 2)],
     r"annotation id 7 is used twice \(annotations\[0\] and annotations\[2\]\)"),
], ids=["same-image-id", "same-file-two-ids", "same-annotation-id"])
def test_image_or_annotation_listed_twice_is_an_error_naming_both(tmp_path, images, annotations, message):
    path = _write(tmp_path / "instances_train2017.json", json.dumps(_coco(images, annotations)))
    with pytest.raises(DatasetError, match=rf"^{path}: {message}$"):
        load_coco_json(path)


# ---------------------------------------------------------------------------------------------
# config in YAML


def test_yaml_value_of_the_wrong_type_names_file_and_key(tmp_path):
    path = _write(tmp_path / "recipe.yaml", "img_height: 256\nbase_lr: fast\n")
    with pytest.raises(ConfigError, match=rf"^{path}: key 'base_lr' must be a number, got 'fast'$"):
        load_config(path)
    path = _write(tmp_path / "recipe2.yaml", "keep_ratio: 1\n")
    with pytest.raises(ConfigError, match=r"key 'keep_ratio' must be true or false, got 1$"):
        load_config(path)


def test_yaml_syntax_error_and_missing_file(tmp_path):
    path = _write(tmp_path / "broken.yaml", "img_height: [256\n")
    with pytest.raises(ConfigError, match=rf"^{path}: not valid YAML: "):
        load_config(path)
    with pytest.raises(ConfigError, match=r"^config file not found: .*absent\.yaml$"):
        load_config(str(tmp_path / "absent.yaml"))


def test_train_cli_wrong_type_in_yaml_exits_2_with_the_key(tmp_path, capsys):
    path = _write(tmp_path / "recipe.yaml", "batch_size: two\n")
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config_path", path])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert f"error: {path}: key 'batch_size' must be an integer, got 'two'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# output folders


def test_output_folder_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OutputFolderError, match=rf"^{blocker}/out/sub: cannot write the out folder there "
                                                rf"\({blocker} is not a folder\); choose a writable folder with --out$"):
        ensure_writable_folder(str(blocker / "out" / "sub"), "out")
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    with pytest.MonkeyPatch.context() as patch:  # root may write anywhere: stand in for a read-only folder
        patch.setattr(os, "access", lambda p, mode: os.path.abspath(p) != str(read_only))
        with pytest.raises(OutputFolderError, match=rf"\({read_only} is not writable\); choose a writable "
                                                    r"folder with --run_dir$"):
            ensure_writable_folder(str(read_only / "run"), "run_dir")
    assert ensure_writable_folder(str(tmp_path / "new" / "out"), "out") == str(tmp_path / "new" / "out")
    assert not (tmp_path / "new").exists()  # the check creates nothing


@pytest.mark.parametrize("cli", ["train", "eval", "predict", "export"])
def test_clis_refuse_an_unwritable_output_folder_before_any_work(cli, tmp_path, capsys):
    import export

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = str(blocker / "out")
    ckpt = _write(tmp_path / "any.ckpt", "not read: the folder is checked first")
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    if cli == "train":
        code = train.main(["--run_dir", out])
        what = "run_dir"
    elif cli == "eval":
        code = eval_cli.main(["--ckpt", ckpt, "--out", out])
        what = "out"
    elif cli == "predict":
        code = predict.main(["--ckpt", ckpt, "--input", str(image), "--out", out])
        what = "out"
    else:
        code = export.main(["--ckpt", ckpt, "--out", os.path.join(out, "model")])
        what = "out"
    assert code == EXIT_ENVIRONMENT
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].endswith(
        f"{out}: cannot write the {what} folder there ({blocker} is not a folder); choose a writable folder "
        f"with --{what}")


# ---------------------------------------------------------------------------------------------
# predict.py command line


@pytest.mark.parametrize("make_input, message", [
    (lambda d: d / "absent.jpg", "input not found: {path}"),
    (lambda d: d / "notes.txt", "{path}: unsupported file type; expected an image (.jpg, .jpeg, .png, .bmp, .tif, "
                                ".tiff, .webp) or a video (.mp4, .avi, .mov, .mkv)"),
    (lambda d: d / "empty_folder", "{path}: no image or video files (.jpg, .jpeg, .png, .bmp, .tif, .tiff, .webp, "
                                   ".mp4, .avi, .mov, .mkv)"),
], ids=["missing", "unsupported-type", "folder-without-images"])
def test_predict_cli_input_that_is_not_an_image_or_video(tmp_path, capsys, make_input, message):
    path = make_input(tmp_path)
    if path.name == "notes.txt":
        path.write_text("hello")
    elif path.name == "empty_folder":
        path.mkdir()
        (path / "readme.md").write_text("no pictures here")
    code = predict.main(["--ckpt", str(tmp_path / "any.ckpt"), "--input", str(path), "--out", str(tmp_path / "o")])
    assert code == EXIT_BAD_INPUT
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].endswith(message.format(path=path)), errors


def test_predict_cli_score_threshold_out_of_range(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--ckpt", "x.ckpt", "--input", "x.jpg", "--out", str(tmp_path), "--score_thr", "1.5"])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert "error: --score_thr must be between 0 and 1, got 1.5" in capsys.readouterr().err
