"""src/checkpoint/: rename tables, conversion, loading into the network, atomic saving."""

import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn

from src.checkpoint.convert import convert_resnet50, convert_zoo_maskrcnn, detect_checkpoint_kind
from src.checkpoint.io import CheckpointError, read_checkpoint, save_checkpoint_atomic
from src.checkpoint.load import SkippedParam, load_pretrained, load_train_state
from src.checkpoint.names import (KIND_BACKBONE, KIND_FULL, KIND_ZOO_MASKRCNN, KIND_ZOO_RESNET50,
                                  RECOMPUTED_ON_RESUME, RESNET50_SHAPES, ZOO_MASKRCNN_TO_OURS,
                                  ZOO_MASKRCNN_TRANSPOSED, ZOO_RESNET50_TO_OURS)
from src.config import Config
from src.maskrcnn.resnet50 import ResNet50
from zoo_checkpoints import (ZOO_MASKRCNN_LIST, ZOO_OPTIMIZER_STATE, ZOO_RESNET50_LIST, random_arrays, read_param_list,
                             save_arrays, zoo_checkpoint)

NUM_RESNET50_TENSORS = 265
# Class-dependent layers of a 2-class model against the 81-class zoo file: (file shape, model shape).
CLASS_LAYERS_81_VS_2 = {
    "box_head.cls_score.weight": ((81, 1024), (2, 1024)),
    "box_head.cls_score.bias": ((81,), (2,)),
    "box_head.box_deltas.weight": ((324, 1024), (8, 1024)),
    "box_head.box_deltas.bias": ((324,), (8,)),
    "mask_head.mask_logits.weight": ((81, 256, 1, 1), (2, 256, 1, 1)),
    "mask_head.mask_logits.bias": ((81,), (2,)),
}


def _values(net):
    return {p.name: p.asnumpy().copy() for p in net.get_parameters()}


def _small_config(**changes):
    """128x128 input, 2 classes, small sample counts: graph construction only, never compiled."""
    values = dict(img_height=128, img_width=128, coco_classes=["background", "book"],
                  rpn_pre_nms_top_k_train=64, rpn_post_nms_top_k_train=32, rpn_pre_nms_top_k_test=64,
                  rpn_post_nms_top_k_test=32, rcnn_num_samples=16, test_max_per_img=8, device_target="CPU")
    values.update(changes)
    return Config().replace(**values)


def _build_model(**changes):
    from src.maskrcnn.builder import build_model

    return build_model(_small_config(**changes), pretrained_backbone=True)


@pytest.fixture(scope="module")
def zoo_resnet50(zoo_lists_dir, tmp_path_factory):
    """A random model-zoo ResNet50 checkpoint (+ optimizer state): (path, arrays by zoo name)."""
    return zoo_checkpoint(zoo_lists_dir, ZOO_RESNET50_LIST, str(tmp_path_factory.mktemp("zoo") / "resnet50.ckpt"),
                          seed=1, extra_shapes=ZOO_OPTIMIZER_STATE)


@pytest.fixture(scope="module")
def zoo_maskrcnn(zoo_lists_dir, tmp_path_factory):
    """A random 81-class model-zoo Mask R-CNN checkpoint (+ optimizer state): (path, arrays)."""
    optimizer_state = {"moments.backbone.conv1.weight": (64, 3, 7, 7), "learning_rate": (1,), "global_step": (1,)}
    return zoo_checkpoint(zoo_lists_dir, ZOO_MASKRCNN_LIST, str(tmp_path_factory.mktemp("zoo") / "maskrcnn.ckpt"),
                          seed=2, extra_shapes=optimizer_state)


# ---- tables ---------------------------------------------------------------------------------


def test_resnet50_table_is_the_zoo_list(zoo_lists_dir):
    zoo = read_param_list(zoo_lists_dir, ZOO_RESNET50_LIST)
    expected = {n: s for n, s in zoo.items() if not n.startswith("end_point.")}
    assert list(RESNET50_SHAPES.items()) == list(expected.items())
    assert len(ZOO_RESNET50_TO_OURS) == NUM_RESNET50_TENSORS
    assert ZOO_RESNET50_TO_OURS["layer1.0.down_sample_layer.1.gamma"] == "backbone.layer1.0.down_sample_layer.1.gamma"
    # Our backbone has exactly these names and shapes.
    assert [(p.name, tuple(p.shape)) for p in ResNet50(0, "frozen").get_parameters()] == list(expected.items())


def test_maskrcnn_table_covers_every_zoo_name_once(zoo_lists_dir):
    zoo = read_param_list(zoo_lists_dir, ZOO_MASKRCNN_LIST)
    assert set(ZOO_MASKRCNN_TO_OURS) == set(zoo)
    assert len(set(ZOO_MASKRCNN_TO_OURS.values())) == len(zoo) == 307
    assert ZOO_MASKRCNN_TO_OURS["backbone.layer3.0.conv_down_sample.weight"] == \
        "backbone.layer3.0.down_sample_layer.0.weight"
    assert ZOO_MASKRCNN_TO_OURS["backbone.layer4.0.bn_down_sample.moving_variance"] == \
        "backbone.layer4.0.down_sample_layer.1.moving_variance"
    assert ZOO_MASKRCNN_TO_OURS["fpn_ncek.fpn_convs_list.2.bias"] == "fpn.output_convs.2.bias"
    assert ZOO_MASKRCNN_TO_OURS["rpn_with_loss.rpn_convs_list.0.rpn_cls.weight"] == "rpn_head.objectness.weight"
    assert ZOO_MASKRCNN_TO_OURS["rcnn_cls.fpn_cls.reg_scores.bias"] == "box_head.box_deltas.bias"
    assert ZOO_MASKRCNN_TO_OURS["rcnn_mask.fpn_mask.mask_deconv5.weight"] == "mask_head.deconv.weight"
    assert ZOO_MASKRCNN_TO_OURS["rcnn_mask.fpn_mask.mask_conv6.bias"] == "mask_head.mask_logits.bias"
    backbone = {v for v in ZOO_MASKRCNN_TO_OURS.values() if v.startswith("backbone.")}
    assert backbone == set(ZOO_RESNET50_TO_OURS.values())
    # Exactly the fully connected weights are stored [in, out] in the zoo list.
    two_d = {n for n, s in zoo.items() if len(s) == 2}
    assert ZOO_MASKRCNN_TRANSPOSED == two_d


@pytest.mark.parametrize("names, kind", [
    (["conv1.weight", "end_point.bias", "moments.conv1.weight"], KIND_ZOO_RESNET50),
    (["backbone.conv1.weight", "fpn_ncek.lateral_convs_list.0.weight"], KIND_ZOO_MASKRCNN),
    (["backbone.conv1.weight", "global_step"], KIND_BACKBONE),
    (["backbone.conv1.weight", "mask_head.conv1.weight", "moments.fpn.lateral_convs.0.weight"], KIND_FULL),
])
def test_detect_checkpoint_kind(names, kind):
    assert detect_checkpoint_kind(names) == kind


def test_detect_checkpoint_kind_rejects_unknown_names():
    with pytest.raises(CheckpointError, match=r"x\.ckpt: not a model-zoo or torchvision ResNet50 / Mask R-CNN checkpoint.*"
                                              r"unrecognised parameter names "
                                              r"\(classifier\.bias, features\.0\.weight\)"):
        detect_checkpoint_kind(["features.0.weight", "classifier.bias"], source="x.ckpt")
    with pytest.raises(CheckpointError, match=r"x\.ckpt: holds no network parameters"):
        detect_checkpoint_kind(["learning_rate", "moments.a"], source="x.ckpt")


# ---- conversion -----------------------------------------------------------------------------


def test_convert_resnet50_renames_drops_and_reports(zoo_resnet50):
    _, arrays = zoo_resnet50
    arrays = dict(arrays, **{"extra.thing": np.zeros(3, np.float32)})
    converted, report = convert_resnet50(arrays, source="zoo.ckpt")
    assert len(converted) == NUM_RESNET50_TENSORS == len(report.converted)
    assert all(n.startswith("backbone.") for n in converted)
    for zoo_name, array in arrays.items():
        if zoo_name in ZOO_RESNET50_TO_OURS:
            np.testing.assert_array_equal(converted["backbone." + zoo_name], array)
    assert report.dropped_classifier == ["end_point.weight", "end_point.bias"]
    assert report.dropped_optimizer == ["moments.conv1.weight", "learning_rate", "global_step"]
    assert report.unexpected == ["extra.thing"]
    assert report.summary() == ("zoo.ckpt (zoo_resnet50): 265 tensors converted (0 transposed), "
                                "2 classifier + 3 optimizer-state tensors dropped, 1 unexpected")


def test_convert_resnet50_rejects_other_networks():
    lenet = {"conv1.weight": np.zeros((6, 1, 5, 5), np.float32), "fc1.weight": np.zeros((120, 400), np.float32)}
    with pytest.raises(CheckpointError) as info:
        convert_resnet50(lenet, source="lenet.ckpt")
    message = str(info.value)
    assert message.startswith("lenet.ckpt: not a model-zoo ResNet50 checkpoint: found 1 of the 265 expected "
                              "parameter names; missing: bn1.moving_mean, bn1.moving_variance, bn1.gamma, bn1.beta, "
                              "layer1.0.conv1.weight (+259 more); wrong shapes: conv1.weight file (6, 1, 5, 5) "
                              "expected (64, 3, 7, 7)")
    assert "\n" not in message


def test_convert_resnet50_names_wrong_shapes(zoo_resnet50):
    _, arrays = zoo_resnet50
    arrays = dict(arrays)
    arrays["layer3.2.conv2.weight"] = np.zeros((256, 256, 1, 1), np.float32)
    with pytest.raises(CheckpointError, match=r"^r\.ckpt: not a model-zoo ResNet50 checkpoint: found 265 of the "
                                              r"265 expected parameter names; wrong shapes: layer3\.2\.conv2\.weight "
                                              r"file \(256, 256, 1, 1\) expected \(256, 256, 3, 3\)$"):
        convert_resnet50(arrays, source="r.ckpt")


def test_convert_zoo_maskrcnn_renames_and_transposes(zoo_maskrcnn):
    _, arrays = zoo_maskrcnn
    converted, report = convert_zoo_maskrcnn(arrays, source="m.ckpt")
    assert len(converted) == 307 == len(report.converted)
    assert report.dropped_optimizer == ["moments.backbone.conv1.weight", "learning_rate", "global_step"]
    assert report.unexpected == [] and report.dropped_classifier == []
    assert sorted(report.transposed) == ["box_head.box_deltas.weight", "box_head.cls_score.weight",
                                         "box_head.fc1.weight", "box_head.fc2.weight"]
    fc1 = arrays["rcnn_cls.fpn_cls.shared_fc_0.weight"]  # zoo [in, out] = (12544, 1024)
    assert converted["box_head.fc1.weight"].shape == (1024, 12544)
    assert converted["box_head.fc1.weight"][7, 300] == fc1[300, 7]
    np.testing.assert_array_equal(converted["box_head.fc2.weight"], arrays["rcnn_cls.fpn_cls.shared_fc_1.weight"].T)
    assert converted["box_head.box_deltas.weight"].shape == (324, 1024)
    np.testing.assert_array_equal(converted["backbone.layer2.0.down_sample_layer.0.weight"],
                                  arrays["backbone.layer2.0.conv_down_sample.weight"])
    np.testing.assert_array_equal(converted["backbone.layer2.0.down_sample_layer.1.beta"],
                                  arrays["backbone.layer2.0.bn_down_sample.beta"])
    np.testing.assert_array_equal(converted["mask_head.deconv.weight"],
                                  arrays["rcnn_mask.fpn_mask.mask_deconv5.weight"])
    np.testing.assert_array_equal(converted["rpn_head.box_deltas.bias"],
                                  arrays["rpn_with_loss.rpn_convs_list.0.rpn_reg.bias"])
    np.testing.assert_array_equal(converted["fpn.lateral_convs.3.weight"],
                                  arrays["fpn_ncek.lateral_convs_list.3.weight"])


def test_convert_zoo_maskrcnn_names_missing_layers(zoo_maskrcnn):
    _, arrays = zoo_maskrcnn
    arrays = {n: v for n, v in arrays.items() if not n.startswith("rcnn_mask.fpn_mask.mask_conv6")}
    with pytest.raises(CheckpointError, match=r"^m\.ckpt: not a model-zoo Mask R-CNN checkpoint: found 305 of the "
                                              r"307 expected parameter names; missing: "
                                              r"rcnn_mask\.fpn_mask\.mask_conv6\.weight, "
                                              r"rcnn_mask\.fpn_mask\.mask_conv6\.bias$"):
        convert_zoo_maskrcnn(arrays, source="m.ckpt")


# ---- reading --------------------------------------------------------------------------------


def test_read_checkpoint_missing_file(tmp_path):
    path = str(tmp_path / "nowhere.ckpt")
    with pytest.raises(CheckpointError, match=f"^checkpoint file not found: {path}$"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match=f"^checkpoint file not found: {path}$"):
        load_pretrained(ResNet50(), path)


def test_read_checkpoint_corrupt_and_truncated_files(tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match=f"^{garbage}: cannot read the checkpoint \\(corrupt, truncated"):
        read_checkpoint(str(garbage))
    good = save_arrays({"backbone.conv1.weight": np.ones((64, 3, 7, 7), np.float32)}, str(tmp_path / "good.ckpt"))
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(open(good, "rb").read()[:5000])
    with pytest.raises(CheckpointError, match=f"^{truncated}: cannot read the checkpoint"):
        read_checkpoint(str(truncated))
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"^{empty}: "):
        read_checkpoint(str(empty))
    not_ckpt = tmp_path / "weights.bin"
    not_ckpt.write_bytes(b"x")
    with pytest.raises(CheckpointError, match=f"^{not_ckpt}: a MindSpore checkpoint file name must end with .ckpt$"):
        read_checkpoint(str(not_ckpt))


# ---- loading: logic on a tiny stand-in network ----------------------------------------------

TINY_SHAPES = {
    "fpn.lateral_convs.0.weight": (4, 3, 1, 1),
    "fpn.lateral_convs.0.bias": (4,),
    "box_head.fc1.weight": (5, 4),
    "box_head.cls_score.weight": (3, 5),
    "box_head.cls_score.bias": (3,),
    "mask_head.mask_logits.weight": (3, 4, 1, 1),
}


def _tiny_net(shapes=None):
    """A Cell whose parameters have exactly the given dotted names (zeros)."""
    tree = {}
    for name, shape in (shapes or TINY_SHAPES).items():
        node = tree
        *path, leaf = name.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = shape

    def make(node):
        cell = nn.Cell()
        for key, value in node.items():
            if isinstance(value, dict):
                setattr(cell, key, make(value))
            else:
                setattr(cell, key, Parameter(Tensor(np.zeros(value, np.float32)), name=key))
        return cell

    return make(tree)


def _tiny_file(tmp_path, changes=None, drop=(), name="tiny.ckpt"):
    arrays = random_arrays(TINY_SHAPES, seed=3)
    for key in drop:
        del arrays[key]
    arrays.update(changes or {})
    path = str(tmp_path / name)
    save_checkpoint_atomic(arrays, path)
    return path, arrays


def test_load_full_checkpoint_ignores_optimizer_state(tmp_path):
    state = {"moments.box_head.fc1.weight": np.ones((5, 4), np.float32), "learning_rate": np.ones(1, np.float32),
             "global_step": np.array([7], np.int32), "loss_scale": np.array(1.0, np.float32)}
    path, arrays = _tiny_file(tmp_path, changes=state)
    net = _tiny_net()
    report = load_pretrained(net, path)
    assert report.kind == KIND_FULL and report.converted_from is None
    assert sorted(report.loaded) == sorted(TINY_SHAPES)
    assert sorted(report.dropped) == sorted(state)
    assert report.skipped == [] and report.left_at_init == []
    for name, value in _values(net).items():
        np.testing.assert_array_equal(value, arrays[name])


def test_load_casts_to_the_model_dtype(tmp_path):
    half = {n: np.full(s, 0.5, np.float16) for n, s in TINY_SHAPES.items()}
    path, _ = _tiny_file(tmp_path, changes=half)
    net = _tiny_net()
    load_pretrained(net, path)
    for param in net.get_parameters():
        assert param.dtype == ms.float32
        np.testing.assert_array_equal(param.asnumpy(), np.full(param.shape, 0.5, np.float32))


def test_class_dependent_layers_are_skipped_by_name(tmp_path):
    path, arrays = _tiny_file(tmp_path, changes={
        "box_head.cls_score.weight": np.ones((81, 5), np.float32), "box_head.cls_score.bias": np.ones(81, np.float32),
        "mask_head.mask_logits.weight": np.ones((81, 4, 1, 1), np.float32)})
    net = _tiny_net()
    report = load_pretrained(net, path)
    reason = "class-dependent layer, class count differs"
    assert report.skipped == [SkippedParam("box_head.cls_score.weight", (81, 5), (3, 5), reason),
                              SkippedParam("box_head.cls_score.bias", (81,), (3,), reason),
                              SkippedParam("mask_head.mask_logits.weight", (81, 4, 1, 1), (3, 4, 1, 1), reason)]
    assert str(report.skipped[0]) == ("box_head.cls_score.weight: class-dependent layer, class count differs "
                                      "(file (81, 5) vs model (3, 5))")
    assert sorted(report.loaded) == ["box_head.fc1.weight", "fpn.lateral_convs.0.bias", "fpn.lateral_convs.0.weight"]
    values = _values(net)
    np.testing.assert_array_equal(values["box_head.fc1.weight"], arrays["box_head.fc1.weight"])
    assert not values["box_head.cls_score.weight"].any()  # left at its initial zeros


def test_other_shape_mismatches_are_all_listed(tmp_path):
    path, _ = _tiny_file(tmp_path, changes={
        "fpn.lateral_convs.0.weight": np.ones((4, 3, 3, 3), np.float32),
        "box_head.fc1.weight": np.ones((4, 5), np.float32),
        "box_head.cls_score.bias": np.ones(81, np.float32)})
    net = _tiny_net()
    with pytest.raises(CheckpointError) as info:
        load_pretrained(net, path)
    assert str(info.value) == (f"{path}: does not fit the model: 2 shape mismatches: fpn.lateral_convs.0.weight "
                               f"file (4, 3, 3, 3) model (4, 3, 1, 1); box_head.fc1.weight file (4, 5) model (5, 4)")
    assert not any(v.any() for v in _values(net).values())  # nothing loaded


def test_missing_and_unknown_parameters_of_a_full_checkpoint(tmp_path):
    path, _ = _tiny_file(tmp_path, drop=["fpn.lateral_convs.0.bias"],
                         changes={"fpn.extra.weight": np.ones(2, np.float32)})
    with pytest.raises(CheckpointError) as info:
        load_pretrained(_tiny_net(), path)
    assert str(info.value) == (f"{path}: does not fit the model: 1 parameters not in the model: fpn.extra.weight | "
                               f"1 model parameters missing from the full checkpoint: fpn.lateral_convs.0.bias")


def test_what_load_param_into_net_did_not_load_is_an_error(tmp_path, monkeypatch):
    path, _ = _tiny_file(tmp_path)

    def loads_nothing_of_fc1(net, parameter_dict, strict_load=False):
        return ["box_head.fc1.weight"], []

    monkeypatch.setattr(ms, "load_param_into_net", loads_nothing_of_fc1)
    with pytest.raises(CheckpointError, match=r"load_param_into_net did not load 1 parameters that should have "
                                              r"loaded: box_head\.fc1\.weight$"):
        load_pretrained(_tiny_net(), path)


# ---- loading: the real backbone and model ---------------------------------------------------


def test_zoo_resnet50_loads_into_the_backbone(zoo_resnet50):
    path, arrays = zoo_resnet50
    net = ResNet50(frozen_stages=1, norm="frozen")
    report = load_pretrained(net, path)  # raw zoo file: converted on the fly
    assert report.converted_from == KIND_ZOO_RESNET50 and report.kind == KIND_BACKBONE
    assert len(report.loaded) == NUM_RESNET50_TENSORS
    assert report.left_at_init == [] and report.skipped == []
    assert sorted(report.dropped) == sorted(["end_point.weight", "end_point.bias", *ZOO_OPTIMIZER_STATE])
    values = _values(net)
    assert len(values) == NUM_RESNET50_TENSORS
    for name, value in values.items():
        np.testing.assert_array_equal(value, arrays[name], err_msg=name)


def test_backbone_checkpoint_into_the_full_model(zoo_resnet50, tmp_path):
    _, arrays = zoo_resnet50
    converted, _ = convert_resnet50(arrays)
    path = str(tmp_path / "backbone.ckpt")
    save_checkpoint_atomic(converted, path)
    net = _build_model()
    before = _values(net)
    report = load_pretrained(net, path)
    assert report.kind == KIND_BACKBONE and report.converted_from is None
    assert sorted(report.loaded) == sorted(converted)
    assert sorted(report.left_at_init) == sorted(n for n in before if not n.startswith("backbone."))
    assert len(report.left_at_init) == len(before) - NUM_RESNET50_TENSORS > 0
    for name, value in _values(net).items():
        expected = converted[name] if name.startswith("backbone.") else before[name]
        np.testing.assert_array_equal(value, expected, err_msg=name)


def test_zoo_maskrcnn_loads_into_a_two_class_model(zoo_maskrcnn):
    path, arrays = zoo_maskrcnn
    net = _build_model()
    before = _values(net)
    report = load_pretrained(net, path)
    assert report.converted_from == KIND_ZOO_MASKRCNN and report.kind == KIND_FULL
    assert {s.name: (s.file_shape, s.model_shape) for s in report.skipped} == CLASS_LAYERS_81_VS_2
    assert report.left_at_init == []
    assert len(report.loaded) == len(before) - len(CLASS_LAYERS_81_VS_2) == 307 - 6
    after = _values(net)
    for zoo_name, our_name in ZOO_MASKRCNN_TO_OURS.items():
        if our_name in CLASS_LAYERS_81_VS_2:
            np.testing.assert_array_equal(after[our_name], before[our_name], err_msg=our_name)
        else:
            expected = arrays[zoo_name].T if zoo_name in ZOO_MASKRCNN_TRANSPOSED else arrays[zoo_name]
            np.testing.assert_array_equal(after[our_name], expected, err_msg=our_name)
    # The square fc layer proves the transposition (same shape either way).
    assert not np.array_equal(after["box_head.fc2.weight"], arrays["rcnn_cls.fpn_cls.shared_fc_1.weight"])
    assert "box_head.cls_score.weight: class-dependent layer, class count differs (file (81, 1024) vs model " \
           "(2, 1024))" in report.summary()


def test_full_checkpoint_with_a_wrong_shape_elsewhere_is_refused(zoo_maskrcnn, tmp_path):
    _, arrays = zoo_maskrcnn
    converted, _ = convert_zoo_maskrcnn(arrays)
    converted["fpn.output_convs.1.weight"] = np.zeros((256, 256, 1, 1), np.float32)
    converted["rpn_head.conv.bias"] = np.zeros(128, np.float32)
    path = str(tmp_path / "bad.ckpt")
    save_checkpoint_atomic(converted, path)
    net = _build_model()
    before = _values(net)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(net, path)
    assert str(info.value) == (f"{path}: does not fit the model: 2 shape mismatches: fpn.output_convs.1.weight file "
                               f"(256, 256, 1, 1) model (256, 256, 3, 3); rpn_head.conv.bias file (128,) model (256,)")
    for name, value in _values(net).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


# ---- atomic saving --------------------------------------------------------------------------


def _write_old(path):
    save_checkpoint_atomic({"w": np.full(4, 1.0, np.float32)}, path)


def test_save_atomic_replaces_and_leaves_no_temp_files(tmp_path):
    path = str(tmp_path / "last.ckpt")
    _write_old(path)
    net = _tiny_net()
    save_checkpoint_atomic(net, path)
    assert sorted(read_checkpoint(path)) == sorted(TINY_SHAPES)
    assert os.listdir(tmp_path) == ["last.ckpt"]
    with pytest.raises(CheckpointError, match=r"last\.bin: a MindSpore checkpoint file name must end with \.ckpt"):
        save_checkpoint_atomic(net, str(tmp_path / "last.bin"))


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
@pytest.mark.parametrize("partial_name", ["target", "mindspore_tmp"])
def test_crash_mid_write_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, error, partial_name):
    path = str(tmp_path / "last.ckpt")
    _write_old(path)
    good_bytes = open(path, "rb").read()
    real_save = ms.save_checkpoint

    def crashing_save(save_obj, ckpt_file_name, **kwargs):
        """Writes half of a real checkpoint (to its target or to MindSpore's '.tmp'), then fails."""
        real_save(save_obj, ckpt_file_name, **kwargs)
        data = open(ckpt_file_name, "rb").read()
        os.chmod(ckpt_file_name, 0o600)
        os.remove(ckpt_file_name)
        written = ckpt_file_name if partial_name == "target" else ckpt_file_name[:-len(".ckpt")] + ".tmp"
        with open(written, "wb") as handle:
            handle.write(data[: len(data) // 2])
        raise error

    monkeypatch.setattr(ms, "save_checkpoint", crashing_save)
    new = {"w": np.full(4, 2.0, np.float32), "v": np.zeros(1000, np.float32)}
    if isinstance(error, OSError):
        with pytest.raises(CheckpointError, match=f"^{path}: writing the checkpoint failed, the previous file "
                                                  f"\\(if any\\) is kept: .*No space left on device"):
            save_checkpoint_atomic(new, path)
    else:
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint_atomic(new, path)
    assert os.listdir(tmp_path) == ["last.ckpt"]
    assert open(path, "rb").read() == good_bytes
    monkeypatch.setattr(ms, "save_checkpoint", real_save)
    np.testing.assert_array_equal(read_checkpoint(path)["w"].asnumpy(), np.full(4, 1.0, np.float32))


def test_crash_on_first_write_leaves_nothing(tmp_path, monkeypatch):
    def failing_save(save_obj, ckpt_file_name, **kwargs):
        with open(ckpt_file_name, "wb") as handle:
            handle.write(b"\x0a\x05half")
        raise RuntimeError("device lost")

    monkeypatch.setattr(ms, "save_checkpoint", failing_save)
    path = str(tmp_path / "sub" / "first.ckpt")
    with pytest.raises(CheckpointError, match=r"first\.ckpt: writing the checkpoint failed.*device lost"):
        save_checkpoint_atomic({"w": np.zeros(2, np.float32)}, path)
    assert os.listdir(tmp_path / "sub") == []


# ---- training state (train.py --resume) -----------------------------------------------------


def _train_cell(shapes=None):
    from src.engine.train_step import TrainOneStepCell

    net = _tiny_net(shapes)
    optimizer = nn.Momentum(net.trainable_params(), learning_rate=0.1, momentum=0.9)
    return net, TrainOneStepCell(net, optimizer, loss_scale=128.0)


def test_training_checkpoint_round_trip(tmp_path):
    net, cell = _train_cell()
    saved = {}
    for i, param in enumerate(cell.get_parameters()):
        value = np.full(param.shape, i + 1, ms.dtype_to_nptype(param.dtype))
        param.set_data(Tensor(value))
        saved[param.name] = value
    path = str(tmp_path / "last.ckpt")
    save_checkpoint_atomic(cell, path)
    assert {"global_step", "moments.box_head.fc1.weight", "loss_scale", "loss_scale_good_steps"} <= set(saved)

    _, fresh_cell = _train_cell()
    fresh_lr = {p.name: p.asnumpy().copy() for p in fresh_cell.get_parameters() if p.name == "learning_rate"}
    assert load_train_state(fresh_cell, path) == saved["global_step"][0]
    for param in fresh_cell.get_parameters():
        if param.name in RECOMPUTED_ON_RESUME:
            # The LR schedule comes from the resumed run's config, not from the file.
            np.testing.assert_array_equal(param.asnumpy(), fresh_lr[param.name])
        else:
            np.testing.assert_array_equal(param.asnumpy(), saved[param.name], err_msg=param.name)

    # The same file gives pre-trained weights (eval.py / --pre_trained): optimizer state ignored.
    bare = _tiny_net()
    report = load_pretrained(bare, path)
    assert sorted(report.loaded) == sorted(TINY_SHAPES)
    assert sorted(report.dropped) == sorted(set(saved) - set(TINY_SHAPES))
    for param in bare.get_parameters():
        np.testing.assert_array_equal(param.asnumpy(), saved[param.name])


def test_training_checkpoint_of_another_set_up_is_refused(tmp_path):
    path, _ = _tiny_file(tmp_path)
    _, cell = _train_cell()
    with pytest.raises(CheckpointError) as info:
        load_train_state(cell, path)
    # one line naming the file, the run's last.ckpt beside it and --pre_trained
    assert str(info.value) == (f"{path}: holds weights only (no optimizer state, no 'global_step'), it cannot "
                               f"be resumed: resume from the run's last.ckpt ({tmp_path / 'last.ckpt'}), or start "
                               f"a new run from these weights with --pre_trained")
    _, other_cell = _train_cell(dict(TINY_SHAPES, **{"box_head.fc1.weight": (6, 4)}))
    other_path = str(tmp_path / "other.ckpt")
    save_checkpoint_atomic(other_cell, other_path)
    with pytest.raises(CheckpointError) as info:
        load_train_state(cell, other_path)
    assert str(info.value) == (f"{other_path}: does not match the training set-up: 2 shape mismatches: "
                               f"box_head.fc1.weight file (6, 4) model (5, 4); moments.box_head.fc1.weight file "
                               f"(6, 4) model (5, 4)")
