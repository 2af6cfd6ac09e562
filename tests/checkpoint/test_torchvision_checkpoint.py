"""torchvision checkpoints: rename tables, .safetensors / .pth reading, conversion, loading, preset warnings.

The name/shape lists in tests/data (``torchvision_resnet50_params.txt``,
``torchvision_maskrcnn_params.txt``) were listed from torchvision itself; random values in those
names stand for the published weights (nothing is downloaded, torch is not needed).
"""

import logging
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

import convert_checkpoint
from src.checkpoint.convert import convert_torchvision_maskrcnn, detect_checkpoint_kind
from src.checkpoint.io import CheckpointError, read_checkpoint_with_metadata, read_weights
from src.checkpoint.load import load_pretrained
from src.checkpoint.names import (KIND_BACKBONE, KIND_FULL, KIND_TV_MASKRCNN, KIND_TV_RESNET50,
                                  KIND_ZOO_RESNET50, NUMERICS_KEY, RESNET50_SHAPES, TORCHVISION_LEGACY_NAMES,
                                  TORCHVISION_MASKRCNN_TO_OURS, TORCHVISION_RESNET50_TO_OURS)
from src.config import Config
from src.maskrcnn.resnet50 import ResNet50
from src.engine.runtime import EXIT_BAD_INPUT
from zoo_checkpoints import read_param_list

TV_RESNET50_LIST = "torchvision_resnet50_params.txt"
TV_MASKRCNN_LIST = "torchvision_maskrcnn_params.txt"
NUM_RESNET50_TENSORS = 265
NUM_MASKRCNN_TENSORS = 307
NUM_BATCHNORMS = 53  # ResNet50: stem + 16 blocks x 3 + 4 shortcuts
# Class-dependent layers of a 2-class model against the 91-class COCO file: (file shape, model shape).
CLASS_LAYERS_91_VS_2 = {
    "box_head.cls_score.weight": ((91, 1024), (2, 1024)),
    "box_head.cls_score.bias": ((91,), (2,)),
    "box_head.box_deltas.weight": ((364, 1024), (8, 1024)),
    "box_head.box_deltas.bias": ((364,), (8,)),
    "mask_head.mask_logits.weight": ((91, 256, 1, 1), (2, 256, 1, 1)),
    "mask_head.mask_logits.bias": ((91,), (2,)),
}


@pytest.fixture(autouse=True)
def keep_pytest_logging(monkeypatch):
    """convert_checkpoint.main() reconfigures the root logger, which would detach caplog's handler."""
    monkeypatch.setattr("src.engine.runtime.setup_logging", lambda *args, **kwargs: None)


def _arrays(shapes, seed):
    """Random float32 values; BatchNorm update counters are int64 scalars as in PyTorch, running
    variances positive as in any real checkpoint (loading refuses negative ones)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            arrays[name] = np.asarray(7, np.int64)
        else:
            arrays[name] = rng.standard_normal(shape, dtype=np.float32)
            if name.endswith("running_var"):
                arrays[name] = np.abs(arrays[name]) + np.float32(1e-3)
    return arrays


@pytest.fixture(scope="module")
def tv_resnet50(zoo_lists_dir, tmp_path_factory):
    """A random torchvision resnet50 state dict (classifier and num_batches_tracked included) as .safetensors."""
    arrays = _arrays(read_param_list(zoo_lists_dir, TV_RESNET50_LIST), seed=21)
    path = str(tmp_path_factory.mktemp("tv") / "resnet50.safetensors")
    save_file(arrays, path)
    return path, arrays


@pytest.fixture(scope="module")
def tv_maskrcnn_legacy(zoo_lists_dir, tmp_path_factory):
    """A random 91-class torchvision Mask R-CNN in the spelling of the published COCO file
    (``rpn.head.conv.*``, ``roi_heads.mask_head.mask_fcn1..4.*``), as .safetensors."""
    current_to_legacy = {current: legacy for legacy, current in TORCHVISION_LEGACY_NAMES.items()}
    shapes = {current_to_legacy.get(name, name): shape
              for name, shape in read_param_list(zoo_lists_dir, TV_MASKRCNN_LIST).items()}
    arrays = _arrays(shapes, seed=22)
    path = str(tmp_path_factory.mktemp("tv") / "maskrcnn_coco.safetensors")
    save_file(arrays, path)
    return path, arrays


def _small_model(numerics):
    from src.maskrcnn.builder import build_model

    config = Config().replace(img_height=128, img_width=128, coco_classes=["background", "book"],
                              rpn_pre_nms_top_k_train=64, rpn_post_nms_top_k_train=32, rpn_pre_nms_top_k_test=64,
                              rpn_post_nms_top_k_test=32, rcnn_num_samples=16, test_max_per_img=8,
                              numerics=numerics)
    return build_model(config, pretrained_backbone=True)


def _numerics_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "numerics" in r.getMessage()]


# ---- tables ---------------------------------------------------------------------------------

def test_tables_cover_every_torchvision_name_once(zoo_lists_dir):
    resnet = read_param_list(zoo_lists_dir, TV_RESNET50_LIST)
    weights = [n for n in resnet if not n.endswith("num_batches_tracked") and not n.startswith("fc.")]
    assert sorted(TORCHVISION_RESNET50_TO_OURS) == sorted(weights)
    assert sorted(TORCHVISION_RESNET50_TO_OURS.values()) == sorted("backbone." + n for n in RESNET50_SHAPES)
    for tv_name, our_name in TORCHVISION_RESNET50_TO_OURS.items():  # same tensor, same shape
        assert resnet[tv_name] == RESNET50_SHAPES[our_name[len("backbone."):]], tv_name
    maskrcnn = read_param_list(zoo_lists_dir, TV_MASKRCNN_LIST)
    assert sorted(TORCHVISION_MASKRCNN_TO_OURS) == sorted(maskrcnn)
    assert len(set(TORCHVISION_MASKRCNN_TO_OURS.values())) == NUM_MASKRCNN_TENSORS
    assert set(TORCHVISION_LEGACY_NAMES.values()) <= set(maskrcnn)


@pytest.mark.parametrize("names, kind", [
    (["conv1.weight", "bn1.running_mean", "fc.weight"], KIND_TV_RESNET50),
    (["layer1.0.downsample.0.weight"], KIND_TV_RESNET50),
    (["backbone.body.conv1.weight", "roi_heads.box_head.fc6.weight"], KIND_TV_MASKRCNN),
    (["rpn.head.conv.weight"], KIND_TV_MASKRCNN),
    (["conv1.weight", "bn1.moving_mean", "end_point.weight"], KIND_ZOO_RESNET50),
])
def test_detect_torchvision_kinds(names, kind):
    assert detect_checkpoint_kind(names) == kind


# ---- conversion -----------------------------------------------------------------------------

def test_torchvision_resnet50_converted_and_loaded(tv_resnet50, tmp_path, caplog, capsys):
    path, arrays = tv_resnet50
    out = str(tmp_path / "backbone.ckpt")
    caplog.set_level(logging.INFO)
    assert convert_checkpoint.main(["--ckpt_file", path, "--output_file", out]) == 0  # kind detected
    assert f"{path}: detected a torchvision_resnet50 checkpoint" in caplog.text
    assert f"{path} (torchvision_resnet50): 265 tensors converted (0 transposed), 2 classifier + " \
           f"{NUM_BATCHNORMS} optimizer-state tensors dropped, 0 unexpected" in caplog.text
    assert "dropped classifier: fc.bias, fc.weight" in caplog.text  # .safetensors keeps names sorted
    assert "`numerics: torchvision`" in capsys.readouterr().out
    params, metadata = read_checkpoint_with_metadata(out)
    assert len(params) == NUM_RESNET50_TENSORS and metadata[NUMERICS_KEY] == "torchvision"

    net = ResNet50(frozen_stages=1, norm="frozen")
    report = load_pretrained(net, out)
    assert len(report.loaded) == NUM_RESNET50_TENSORS and report.numerics == "torchvision"
    values = {p.name: p.asnumpy() for p in net.get_parameters()}
    # BatchNorm: weight -> gamma, bias -> beta, running_mean -> moving_mean, running_var -> moving_variance.
    np.testing.assert_array_equal(values["bn1.gamma"], arrays["bn1.weight"])
    np.testing.assert_array_equal(values["bn1.beta"], arrays["bn1.bias"])
    np.testing.assert_array_equal(values["layer2.0.down_sample_layer.1.moving_variance"],
                                  arrays["layer2.0.downsample.1.running_var"])
    for tv_name, our_name in TORCHVISION_RESNET50_TO_OURS.items():
        np.testing.assert_array_equal(values[our_name[len("backbone."):]], arrays[tv_name], err_msg=tv_name)


def test_coco_maskrcnn_in_legacy_names_loads_into_a_two_class_model(tv_maskrcnn_legacy, caplog):
    """The raw .safetensors file straight into train.py's loader: converted on the fly, the class
    layers skipped and listed, everything else loaded with torchvision's values."""
    path, arrays = tv_maskrcnn_legacy
    net = _small_model("torchvision")
    before = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
    caplog.set_level(logging.INFO)
    report = load_pretrained(net, path)
    assert report.converted_from == KIND_TV_MASKRCNN and report.kind == KIND_FULL
    assert {s.name: (s.file_shape, s.model_shape) for s in report.skipped} == CLASS_LAYERS_91_VS_2
    assert len(report.loaded) == NUM_MASKRCNN_TENSORS - len(CLASS_LAYERS_91_VS_2) and not report.left_at_init
    assert "box_head.cls_score.weight: class-dependent layer, class count differs (file (91, 1024) vs model " \
           "(2, 1024))" in report.summary()
    assert not _numerics_warnings(caplog)  # same preset
    after = {p.name: p.asnumpy() for p in net.get_parameters()}
    for tv_name, our_name in TORCHVISION_MASKRCNN_TO_OURS.items():
        file_name = next((old for old, new in TORCHVISION_LEGACY_NAMES.items() if new == tv_name), tv_name)
        expected = before[our_name] if our_name in CLASS_LAYERS_91_VS_2 else arrays[file_name]
        np.testing.assert_array_equal(after[our_name], expected, err_msg=our_name)
    # Legacy names used: the RPN conv and the mask convs came from them.
    np.testing.assert_array_equal(after["mask_head.conv1.weight"], arrays["roi_heads.mask_head.mask_fcn1.weight"])
    np.testing.assert_array_equal(after["rpn_head.conv.weight"], arrays["rpn.head.conv.weight"])


def test_loading_into_another_preset_warns_by_name(tv_maskrcnn_legacy, tmp_path, caplog):
    path, _ = tv_maskrcnn_legacy
    out = str(tmp_path / "converted.ckpt")
    assert convert_checkpoint.main(["--ckpt_file", path, "--output_file", out]) == 0
    caplog.set_level(logging.INFO)
    report = load_pretrained(_small_model("native"), out)
    assert report.numerics == "torchvision"
    assert _numerics_warnings(caplog) == [
        f"{out}: these weights were computed with the numerics preset 'torchvision', but the network uses "
        f"'native': their features and boxes will differ from the source; set `numerics: torchvision` to "
        f"reproduce them"]


def test_backbone_files_do_not_warn(tv_resnet50, caplog):
    path, _ = tv_resnet50
    caplog.set_level(logging.INFO)
    report = load_pretrained(_small_model("native"), path)
    assert report.converted_from == KIND_TV_RESNET50 and report.kind == KIND_BACKBONE
    assert len(report.loaded) == NUM_RESNET50_TENSORS and report.left_at_init
    assert not _numerics_warnings(caplog)


def test_wrong_mode_and_other_architectures_are_one_line_errors(tv_maskrcnn_legacy, zoo_lists_dir, tmp_path,
                                                                caplog):
    path, arrays = tv_maskrcnn_legacy
    assert convert_checkpoint.main(["--ckpt_file", path, "--output_file", str(tmp_path / "o.ckpt"),
                                    "--mode", "torchvision_resnet50"]) == EXIT_BAD_INPUT
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"{path}: not a torchvision resnet50 checkpoint: its names are those of a torchvision "
                      f"Mask R-CNN (use --mode torchvision_maskrcnn)"]
    # maskrcnn_resnet50_fpn_v2: its box head is four convs and a linear layer, no fc6/fc7.
    v2 = {n: v for n, v in arrays.items() if ".box_head." not in n}
    v2["roi_heads.box_head.0.0.weight"] = np.zeros((256, 256, 3, 3), np.float32)
    with pytest.raises(CheckpointError, match=r"v2\.st: not a torchvision maskrcnn_resnet50_fpn \(v1\) checkpoint: "
                                              r"found 303 of the 307 expected parameter names; missing: "
                                              r"roi_heads\.box_head\.fc6\.weight"):
        convert_torchvision_maskrcnn(v2, source="v2.st")
    both = dict(arrays)
    both["rpn.head.conv.0.0.weight"] = arrays["rpn.head.conv.weight"]
    with pytest.raises(CheckpointError, match=r"holds both 'rpn\.head\.conv\.weight' and 'rpn\.head\.conv\.0\.0\."
                                              r"weight' \(two spellings of the same torchvision tensor\)"):
        convert_torchvision_maskrcnn(both, source="both.st")


# ---- reading --------------------------------------------------------------------------------

def test_pth_without_torch_names_the_pip_command(tmp_path, monkeypatch, caplog):
    pth = tmp_path / "maskrcnn.pth"
    pth.write_bytes(b"PK\x03\x04 not really a zip")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError, even where it is installed
    with pytest.raises(CheckpointError) as info:
        read_weights(str(pth))
    assert str(info.value) == (f"{pth}: reading a PyTorch .pth file needs torch (at conversion time only): "
                               f"python -m pip install torch, or save the state dict as .safetensors")
    assert convert_checkpoint.main(["--ckpt_file", str(pth), "--output_file", str(tmp_path / "o.ckpt")]) == EXIT_BAD_INPUT
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [str(info.value)]


def test_bad_safetensors_and_unknown_formats(tmp_path):
    truncated = tmp_path / "cut.safetensors"
    good = tmp_path / "good.safetensors"
    save_file({"conv1.weight": np.ones((64, 3, 7, 7), np.float32)}, str(good))
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"^{truncated}: cannot read the .safetensors file"):
        read_weights(str(truncated))
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(CheckpointError, match=f"^{other}: unknown checkpoint format; expected .ckpt \\(MindSpore\\), "
                                              f".safetensors or .pth/.pt \\(PyTorch\\)$"):
        read_weights(str(other))
    with pytest.raises(CheckpointError, match="^checkpoint file not found: "):
        read_weights(str(tmp_path / "missing.safetensors"))
    params, metadata = read_weights(str(good))
    assert list(params) == ["conv1.weight"] and metadata == {}
