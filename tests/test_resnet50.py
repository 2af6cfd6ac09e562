"""ResNet50 backbone: zoo parameter names, output shapes, frozen vs batch norm."""

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn

from src.maskrcnn.resnet50 import ResNet50
from zoo_checkpoints import ZOO_RESNET50_LIST, read_param_list


def _zoo_params(zoo_lists_dir):
    """[(name, shape)] of the zoo ResNet50 checkpoint without the classifier end_point.*."""
    shapes = read_param_list(zoo_lists_dir, ZOO_RESNET50_LIST)
    return [(name, shape) for name, shape in shapes.items() if not name.startswith("end_point.")]


@pytest.mark.parametrize("norm", ["batch", "frozen"])
def test_parameter_names_and_shapes_equal_zoo(norm, zoo_lists_dir):
    zoo = _zoo_params(zoo_lists_dir)
    assert len(zoo) == 265
    ours = [(p.name, tuple(p.shape)) for p in ResNet50(0, norm).get_parameters()]
    assert sorted(ours) == sorted(zoo)


def test_output_shapes_graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)
    net = ResNet50(0, "batch")
    net.set_train(False)
    image = Tensor(np.random.default_rng(0).standard_normal((2, 3, 64, 96)).astype(np.float32))
    outputs = net(image)
    shapes = [tuple(o.shape) for o in outputs]
    assert shapes == [(2, 256, 16, 24), (2, 512, 8, 12), (2, 1024, 4, 6), (2, 2048, 2, 3)]
    for o in outputs:
        assert np.isfinite(o.asnumpy()).all()


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="norm must be one of"):
        ResNet50(0, "group")
    with pytest.raises(ValueError, match="frozen_stages must be in 0..4, got 5"):
        ResNet50(5, "batch")


def _trainable(net):
    return {p.name for p in net.trainable_params()}


def test_frozen_mode_trains_nothing_in_frozen_stages():
    net = ResNet50(2, "frozen")
    trainable = _trainable(net)
    # Frozen norm: no gamma/beta anywhere; stem + layer1 + layer2 have no trainable conv.
    assert not any(name.split(".")[-1] in ("gamma", "beta") for name in trainable)
    assert not any(name.startswith(("conv1.", "bn1.", "layer1.", "layer2.")) for name in trainable)
    convs_layer3_4 = 6 * 3 + 1 + 3 * 3 + 1
    assert len(trainable) == convs_layer3_4
    assert "layer3.0.down_sample_layer.0.weight" in trainable


def test_batch_mode_without_freezing_trains_everything():
    net = ResNet50(0, "batch")
    # Everything except the moving statistics is trainable.
    expected = {p.name for p in net.get_parameters() if "moving_" not in p.name}
    assert _trainable(net) == expected
    # Random init: each residual branch starts as zero (last norm's gamma 0), the rest at 1.
    for p in net.get_parameters():
        if p.name.endswith(".gamma"):
            value = 0.0 if p.name.endswith("bn3.gamma") else 1.0
            assert (p.asnumpy() == value).all(), p.name


def test_frozen_norm_gammas_start_at_one():
    gammas = [p for p in ResNet50(0, "frozen").get_parameters() if p.name.endswith(".gamma")]
    assert len(gammas) == 53
    assert all((p.asnumpy() == 1.0).all() for p in gammas)


def _train_one_step(net, image):
    class SumLoss(nn.Cell):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone

        def construct(self, x):
            c2, c3, c4, c5 = self.backbone(x)
            return c2.mean() + c3.mean() + c4.mean() + c5.mean()

    loss_net = SumLoss(net)
    step = nn.TrainOneStepCell(loss_net, nn.SGD(net.trainable_params(), learning_rate=0.1))
    step.set_train(True)
    return step(image)


def test_frozen_step_changes_only_unfrozen_parameters_and_keeps_moving_stats():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        net = ResNet50(1, "frozen")
        before = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
        image = Tensor(np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32))
        loss = _train_one_step(net, image)
        assert np.isfinite(loss.asnumpy())
        after = {p.name.removeprefix("backbone."): p.asnumpy() for p in net.get_parameters()}
        unchanged = {n for n in before if np.array_equal(before[n], after[n])}
        for name in before:
            if name.startswith(("conv1.", "bn1.", "layer1.")) or "bn" in name or \
                    "down_sample_layer.1." in name:
                assert name in unchanged, f"{name} changed although frozen"
        assert "layer2.0.conv2.weight" not in unchanged
        assert "layer4.2.conv3.weight" not in unchanged
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


def test_batch_mode_uses_batch_statistics_and_updates_moving_stats():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        net = ResNet50(0, "batch")
        net.set_train(True)
        rng = np.random.default_rng(2)
        # An input far from zero mean: with batch statistics C2 is still normalised per channel
        # before the last ReLU, so its scale stays moderate; moving stats move towards the data.
        image = Tensor((5.0 + 3.0 * rng.standard_normal((2, 3, 64, 64))).astype(np.float32))
        mean_before = net.bn1.moving_mean.asnumpy().copy()
        net(image)
        mean_after = net.bn1.moving_mean.asnumpy()
        assert not np.allclose(mean_before, mean_after)
        net.set_train(False)
        frozen = ResNet50(0, "frozen")
        frozen.set_train(True)
        frozen_mean = frozen.bn1.moving_mean.asnumpy().copy()
        frozen(image)
        np.testing.assert_array_equal(frozen.bn1.moving_mean.asnumpy(), frozen_mean)
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)
