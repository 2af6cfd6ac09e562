"""convert_checkpoint.py: zoo ResNet50 / Mask R-CNN checkpoints -> this project's names."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import convert_checkpoint
from src.checkpoint.io import read_checkpoint
from src.checkpoint.load import load_pretrained
from src.checkpoint.names import ZOO_MASKRCNN_TO_OURS, ZOO_MASKRCNN_TRANSPOSED
from src.maskrcnn.resnet50 import ResNet50
from src.engine.runtime import EXIT_BAD_INPUT
from src.config import REPO_ROOT
from zoo_checkpoints import (ZOO_MASKRCNN_LIST, ZOO_OPTIMIZER_STATE, ZOO_RESNET50_LIST, random_arrays, save_arrays,
                             zoo_checkpoint)

LENET_SHAPES = {"conv1.weight": (6, 1, 5, 5), "conv2.weight": (16, 6, 5, 5), "fc1.weight": (120, 400)}


@pytest.fixture(autouse=True)
def keep_pytest_logging(monkeypatch):
    """main() reconfigures the root logger (force=True), which would detach caplog's handler."""
    monkeypatch.setattr("src.engine.runtime.setup_logging", lambda *args, **kwargs: None)


@pytest.fixture(scope="module")
def zoo_resnet50(zoo_lists_dir, tmp_path_factory):
    return zoo_checkpoint(zoo_lists_dir, ZOO_RESNET50_LIST, str(tmp_path_factory.mktemp("zoo") / "resnet50.ckpt"),
                          seed=11, extra_shapes=ZOO_OPTIMIZER_STATE)


@pytest.fixture(scope="module")
def zoo_maskrcnn(zoo_lists_dir, tmp_path_factory):
    return zoo_checkpoint(zoo_lists_dir, ZOO_MASKRCNN_LIST, str(tmp_path_factory.mktemp("zoo") / "maskrcnn.ckpt"),
                          seed=12)


@pytest.fixture
def lenet_ckpt(tmp_path):
    return save_arrays(random_arrays(LENET_SHAPES, seed=0), str(tmp_path / "lenet.ckpt"))


def _errors(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_resnet50_conversion_then_load_into_the_backbone(zoo_resnet50, tmp_path, caplog):
    path, arrays = zoo_resnet50
    out = str(tmp_path / "backbone.ckpt")
    caplog.set_level(logging.INFO)
    assert convert_checkpoint.main(["--ckpt_file", path, "--output_file", out, "--mode", "resnet50"]) == 0
    log = caplog.text
    assert f"{path} (zoo_resnet50): 265 tensors converted (0 transposed), 2 classifier + 3 optimizer-state " \
           f"tensors dropped, 0 unexpected" in log
    assert "dropped classifier: end_point.weight, end_point.bias" in log
    assert f"wrote 265 tensors to {out}" in log
    assert os.listdir(tmp_path) == ["backbone.ckpt"]

    written = read_checkpoint(out)
    assert len(written) == 265 and all(n.startswith("backbone.") for n in written)
    net = ResNet50(frozen_stages=1, norm="frozen")
    before = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
    report = load_pretrained(net, out)
    assert report.converted_from is None and len(report.loaded) == 265
    assert report.left_at_init == [] and report.skipped == [] and report.dropped == []
    for param in net.get_parameters():  # every tensor loaded with the zoo value, none left at init
        np.testing.assert_array_equal(param.asnumpy(), arrays[param.name], err_msg=param.name)
        assert not np.array_equal(param.asnumpy(), before[param.name]), param.name


def test_maskrcnn_detected_and_converted(zoo_maskrcnn, tmp_path, caplog, monkeypatch):
    path, arrays = zoo_maskrcnn
    out = str(tmp_path / "converted.ckpt")
    monkeypatch.setitem(convert_checkpoint.DEFAULT_OUTPUT_FILES, "maskrcnn", out)
    caplog.set_level(logging.INFO)
    assert convert_checkpoint.main(["--ckpt_file", path]) == 0  # no --mode, no --output_file
    assert f"{path}: detected a zoo_maskrcnn checkpoint" in caplog.text
    assert "307 tensors converted (4 transposed), 0 classifier + 0 optimizer-state tensors dropped, " \
           "0 unexpected" in caplog.text
    written = read_checkpoint(out)
    assert sorted(written) == sorted(ZOO_MASKRCNN_TO_OURS.values())
    for zoo_name, our_name in ZOO_MASKRCNN_TO_OURS.items():
        expected = arrays[zoo_name].T if zoo_name in ZOO_MASKRCNN_TRANSPOSED else arrays[zoo_name]
        np.testing.assert_array_equal(written[our_name].asnumpy(), expected, err_msg=our_name)
    assert written["box_head.cls_score.weight"].shape == (81, 1024)


def test_not_a_resnet_is_a_one_line_error(lenet_ckpt, tmp_path, caplog):
    out = str(tmp_path / "out.ckpt")
    assert convert_checkpoint.main(["--ckpt_file", lenet_ckpt, "--output_file", out, "--mode", "resnet50"]) == EXIT_BAD_INPUT
    (message,) = _errors(caplog)
    assert message.startswith(f"{lenet_ckpt}: not a model-zoo ResNet50 checkpoint: found 1 of the 265 expected "
                              f"parameter names; missing: bn1.moving_mean")
    assert "wrong shapes: conv1.weight file (6, 1, 5, 5) expected (64, 3, 7, 7)" in message
    assert "\n" not in message
    assert not os.path.exists(out)


def test_unrecognised_names_without_mode(tmp_path, caplog):
    path = save_arrays(random_arrays({"features.0.weight": (2, 2)}, seed=0), str(tmp_path / "other.ckpt"))
    assert convert_checkpoint.main(["--ckpt_file", path, "--output_file", str(tmp_path / "o.ckpt")]) == EXIT_BAD_INPUT
    assert _errors(caplog) == [f"{path}: not a model-zoo or torchvision ResNet50 / Mask R-CNN checkpoint nor "
                               f"one of this project: unrecognised parameter names (features.0.weight)"]


def test_wrong_mode_and_already_converted_inputs(zoo_maskrcnn, tmp_path, caplog):
    path, _ = zoo_maskrcnn
    assert convert_checkpoint.main(["--ckpt_file", path, "--output_file", str(tmp_path / "o.ckpt"),
                                    "--mode", "resnet50"]) == EXIT_BAD_INPUT
    assert _errors(caplog) == [f"{path}: not a model-zoo ResNet50 checkpoint: its names are those of a "
                               f"model-zoo Mask R-CNN (use --mode maskrcnn)"]
    caplog.clear()
    ours = save_arrays(random_arrays({"backbone.conv1.weight": (64, 3, 7, 7)}, seed=0), str(tmp_path / "ours.ckpt"))
    assert convert_checkpoint.main(["--ckpt_file", ours, "--output_file", str(tmp_path / "o.ckpt")]) == EXIT_BAD_INPUT
    assert _errors(caplog) == [f"{ours}: already uses this project's names (backbone checkpoint); nothing to convert"]
    assert sorted(os.listdir(tmp_path)) == ["ours.ckpt"]


def test_missing_input_file(tmp_path, caplog):
    missing = str(tmp_path / "resnet50.ckpt")
    assert convert_checkpoint.main(["--ckpt_file", missing, "--output_file", str(tmp_path / "o.ckpt")]) == EXIT_BAD_INPUT
    assert _errors(caplog) == [f"checkpoint file not found: {missing}"]


def test_command_line_exit_code_and_single_error_line(lenet_ckpt, tmp_path):
    """The real process: exit status 2 and exactly one error line on stderr, no traceback."""
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "convert_checkpoint.py"), "--ckpt_file",
                             lenet_ckpt, "--output_file", str(tmp_path / "o.ckpt")],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
                            env=dict(os.environ, GLOG_v="3"))
    assert result.returncode == EXIT_BAD_INPUT == 2
    error_lines = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(error_lines) == 1, result.stderr
    assert f"{lenet_ckpt}: not a model-zoo ResNet50 checkpoint: found 1 of the 265" in error_lines[0]
    assert "Traceback" not in result.stderr


def test_bn_eps_is_recorded_and_can_be_given(zoo_resnet50, tmp_path, capsys):
    """The output records the BatchNorm eps the weights ran with (the source's: 1e-5 for the zoo;
    torchvision's COCO file: 0, see tests/maskrcnn/test_torchvision_parity.py); --bn_eps sets it; a value
    outside [0, 1) is a usage error naming it (exit 2)."""
    zoo_resnet50, _ = zoo_resnet50
    from src.checkpoint.io import read_checkpoint_with_metadata
    from src.checkpoint.names import BN_EPS_KEY

    output = str(tmp_path / "o.ckpt")
    assert convert_checkpoint.main(["--ckpt_file", zoo_resnet50, "--output_file", output]) == 0
    assert read_checkpoint_with_metadata(output)[1][BN_EPS_KEY] == "1e-05"
    assert convert_checkpoint.main(["--ckpt_file", zoo_resnet50, "--output_file", output, "--bn_eps", "0"]) == 0
    assert read_checkpoint_with_metadata(output)[1][BN_EPS_KEY] == "0.0"
    assert "their BatchNorm eps is 0.0" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        convert_checkpoint.main(["--ckpt_file", zoo_resnet50, "--bn_eps", "2"])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert "convert_checkpoint.py: error: --bn_eps must be in [0, 1), got 2.0" in capsys.readouterr().err


def test_loading_weights_of_another_bn_eps_warns_naming_both(zoo_resnet50, tmp_path, caplog):
    """A file that records eps 0 loaded into a backbone built with 1e-5 loads, with a warning that
    names both values and the config key; the same eps loads silently."""
    zoo_resnet50, _ = zoo_resnet50
    output = str(tmp_path / "o.ckpt")
    assert convert_checkpoint.main(["--ckpt_file", zoo_resnet50, "--output_file", output, "--bn_eps", "0"]) == 0
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_pretrained(ResNet50(norm="frozen"), output)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("ran with BatchNorm eps 0.0, but the network uses 1e-05" in w and "`bn_eps: 0.0`" in w
               for w in warnings), warnings
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_pretrained(ResNet50(norm="frozen", bn_eps=0.0), output)
    assert not [r for r in caplog.records if "BatchNorm eps" in r.getMessage()]
