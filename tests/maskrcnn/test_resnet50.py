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
        norms = [cell for _, cell in net.cells_and_names() if isinstance(cell, nn.BatchNorm2d)]
        assert len(norms) == 53  # stem + 3 per bottleneck x 16 + 4 down-sample norms
        rng = np.random.default_rng(2)
        # An input far from zero mean, so batch statistics differ clearly from the initial
        # moving ones (mean 0, variance 1).
        image = (5.0 + 3.0 * rng.standard_normal((2, 3, 64, 64))).astype(np.float32)
        means_before = [bn.moving_mean.asnumpy().copy() for bn in norms]
        stem = net.conv1(Tensor(image)).asnumpy()
        c2 = net(Tensor(image))[0].asnumpy()
        # Every norm moved its running mean; the stem's by exactly (1 - momentum) x batch mean
        # (its moving mean started at 0).
        for bn, before in zip(norms, means_before):
            assert not np.allclose(bn.moving_mean.asnumpy(), before), bn.moving_mean.name
        np.testing.assert_allclose(net.bn1.moving_mean.asnumpy(), 0.1 * stem.mean(axis=(0, 2, 3)),
                                   rtol=1e-4, atol=1e-6)
        # Normalised with the batch's own statistics: per channel mean ~0 and variance ~1
        # (gamma 1, beta 0), not (x - moving mean) / moving std.
        normed = net.bn1(Tensor(stem)).asnumpy()
        np.testing.assert_allclose(normed.mean(axis=(0, 2, 3)), 0.0, atol=1e-3)
        np.testing.assert_allclose(normed.var(axis=(0, 2, 3)), 1.0, rtol=1e-2)
        # ...so a sample's features depend on the other samples in its batch.
        other = image.copy()
        other[1] = 2.0 * other[1] - 4.0
        c2_other = net(Tensor(other))[0].asnumpy()
        assert np.abs(c2_other[0] - c2[0]).max() > 1e-2
        net.set_train(False)
        frozen = ResNet50(0, "frozen")
        frozen.set_train(True)
        frozen_mean = frozen.bn1.moving_mean.asnumpy().copy()
        frozen_c2 = frozen(Tensor(image))[0].asnumpy()
        np.testing.assert_array_equal(frozen.bn1.moving_mean.asnumpy(), frozen_mean)
        np.testing.assert_allclose(frozen(Tensor(other))[0].asnumpy()[0], frozen_c2[0], rtol=1e-5, atol=1e-5)
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)
