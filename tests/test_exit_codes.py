"""The exit-code table (src/engine/runtime.py) as the tools apply it: bad input is one line and
exit 2 (a recipe path that is a folder or not UTF-8, a NaN/Inf or out-of-range number, an empty
anchor list, a device export cannot use), the machine's failures are exit 3 (an unwritable
output folder: tests/test_bad_input.py), never a traceback."""

import os
import subprocess
import sys

import pytest

import eval as eval_cli
import export
import predict
import train
from conftest import REPO_ROOT
from src.engine.runtime import EXIT_BAD_INPUT


def _usage_error(main, argv, capsys):
    """Run a CLI whose config is refused by argparse; returns its one 'error:' line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err
    return errors[0]


def _cli_args(cli, tmp_path):
    """Arguments each CLI needs besides the config (nothing is read: the config fails first)."""
    if cli == "train":
        return [train.main, ["--run_dir", str(tmp_path / "run")]]
    ckpt = str(tmp_path / "any.ckpt")
    if cli == "eval":
        return [eval_cli.main, ["--ckpt", ckpt, "--out", str(tmp_path / "out")]]
    if cli == "predict":
        return [predict.main, ["--ckpt", ckpt, "--input", str(tmp_path / "a.png"), "--out", str(tmp_path / "out")]]
    return [export.main, ["--ckpt", ckpt, "--out", str(tmp_path / "model")]]


@pytest.mark.parametrize("cli", ["train", "eval", "predict", "export"])
def test_config_path_naming_a_folder_is_one_line(cli, tmp_path, capsys):
    main, argv = _cli_args(cli, tmp_path)
    line = _usage_error(main, argv + ["--config_path", str(tmp_path)], capsys)
    assert line.endswith(f"error: {tmp_path}: is a folder, not a YAML config file"), line


@pytest.mark.parametrize("cli", ["train", "eval", "predict"])
def test_a_recipe_that_is_not_utf8_is_one_line(cli, tmp_path, capsys):
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes("# r\xe9glages\nbase_lr: 0.01\n".encode("latin-1"))
    main, argv = _cli_args(cli, tmp_path)
    line = _usage_error(main, argv + ["--config_path", str(recipe)], capsys)
    assert line.endswith(f"error: {recipe}: not a UTF-8 text file (byte 3 is b'\\xe9'); save the recipe as UTF-8"), line


@pytest.mark.parametrize("override, message", [
    (["--base_lr", ".nan"], "key 'base_lr' must be a finite number, got nan"),
    (["--base_lr", ".inf"], "key 'base_lr' must be a finite number, got inf"),
    (["--loss_scale", ".nan"], "key 'loss_scale' must be a finite number, got nan"),
    (["--mask_loss_weight", ".nan"], "key 'mask_loss_weight' must be a finite number, got nan"),
    (["--grad_clip_norm", ".nan"], "key 'grad_clip_norm' must be a finite number, got nan"),
    (["--weight_decay", "-0.0001"], "key 'weight_decay' = -0.0001 must not be negative"),
    (["--momentum", "-0.9"], "key 'momentum' = -0.9 must be in [0, 1)"),
    (["--lr_step_gamma", "-0.1"], "key 'lr_step_gamma' = -0.1 must be positive"),
    (["--seed", "-1"], "key 'seed' = -1 must not be negative"),
    (["--anchor_scales", "[]"], "key 'anchor_scales' = [] must not be empty"),
    (["--anchor_ratios", "[-1.0]"], "key 'anchor_ratios' = [-1.0] must be positive"),
], ids=["base_lr_nan", "base_lr_inf", "loss_scale_nan", "mask_loss_weight_nan", "grad_clip_norm_nan",
        "negative_weight_decay", "negative_momentum", "negative_lr_step_gamma", "negative_seed",
        "empty_anchor_scales", "negative_anchor_ratio"])
def test_config_numbers_that_cannot_work_are_one_line_exit_2(override, message, tmp_path, capsys):
    line = _usage_error(train.main, ["--run_dir", str(tmp_path / "run")] + override, capsys)
    assert line.endswith(f"error: {os.path.join(REPO_ROOT, 'FineTune', 'default.yaml')} + command line: {message}"), line
    assert not (tmp_path / "run").exists()


def test_the_same_values_in_a_yaml_recipe_name_the_file(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("base_lr: .nan\n")
    line = _usage_error(train.main, ["--config_path", str(recipe)], capsys)
    assert line.endswith(f"error: {recipe}: key 'base_lr' must be a finite number, got nan"), line


def test_log_every_must_be_positive(tmp_path, capsys):
    line = _usage_error(train.main, ["--run_dir", str(tmp_path / "run"), "--log_every", "-5"], capsys)
    assert line.endswith("error: --log_every must be a positive number of steps, got -5"), line


def test_export_to_a_device_this_machine_lacks_is_one_line(tmp_path):
    """As a user runs it: the whole stderr is the one error line."""
    ckpt = tmp_path / "any.ckpt"
    ckpt.write_bytes(b"not read: the device is checked first")
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "export.py"), "--ckpt", str(ckpt),
                             "--out", str(tmp_path / "model"), "--device_target", "Ascend"], cwd=REPO_ROOT,
                            capture_output=True, text=True, env=dict(os.environ, GLOG_v="3", PYTHONPATH=REPO_ROOT),
                            timeout=300)
    assert result.returncode == EXIT_BAD_INPUT
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and " ERROR " in lines[0], result.stderr
    assert "device_target 'Ascend' is not available with this MindSpore" in lines[0]
    assert lines[0].endswith("it can run: CPU; run with --device_target CPU")
