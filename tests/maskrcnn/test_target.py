"""float16 plan and loss scaling: src/maskrcnn/target.py decides which cells compute in float16, and
TrainOneStepCell skips a step whose scaled gradient overflows (the dynamic scale is halved).

MindSpore 2.7.2 runs float16 convolutions on the CPU, so a whole float16 training step with the
CPU kernels runs there too, and its losses are finite. It runs in PyNative mode: the float16 graph
takes some 40 s to compile here, more than this one step; the float16 training graph in graph
mode (the device recipe's, native kernels, dynamic loss scale) is compiled and trained in
tests/test_device_check.py.
"""

import numpy as np
import pytest

from src.config import load_config
from src.maskrcnn.target import FLOAT16_CELLS, built_dtypes, planned_dtypes, op_kernels

pytestmark = pytest.mark.slow(10)

LIGHT = {"img_height": 64, "img_width": 64, "fpn_channels": 32, "box_head_channels": 64, "mask_head_channels": 32}


@pytest.mark.parametrize("compute_dtype,device,expected", [
    ("float16", "CPU", "float16"), ("float32", "CPU", "float32"), ("auto", "CPU", "float32"),
    ("auto", "Ascend", "float16"), ("float32", "Ascend", "float32"),
])
def test_planned_dtypes_follow_the_config(compute_dtype, device, expected):
    config = load_config(None, {**LIGHT, "compute_dtype": compute_dtype, "device_target": device})
    assert planned_dtypes(config) == {name: expected for name in FLOAT16_CELLS}


def test_op_kernels_is_chosen_explicitly():
    cpu = load_config(None, {"device_target": "CPU"})
    assert op_kernels(cpu) == "cpu"
    assert op_kernels(cpu, for_export=True) == "native"
    assert op_kernels(load_config(None, {"device_target": "Ascend"})) == "native"


@pytest.fixture(scope="module")
def fp16_net():
    import mindspore as ms

    from src.maskrcnn.builder import build_model

    config = load_config(None, {**LIGHT, "compute_dtype": "float16"})
    ms.set_seed(2)
    return config, build_model(config)


def test_built_network_computes_in_the_planned_dtypes(fp16_net):
    from src.maskrcnn.builder import build_model

    config, net = fp16_net
    assert built_dtypes(net) == planned_dtypes(config) == {name: "float16" for name in FLOAT16_CELLS}
    fp32 = build_model(config.replace(compute_dtype="float32"))
    assert built_dtypes(fp32) == {name: "float32" for name in FLOAT16_CELLS}


def test_float16_features_are_cast_back_to_float32(fp16_net):
    """PyNative forward of the float16 backbone/FPN/RPN on the CPU: float16 inside, float32 out."""
    import mindspore as ms

    config, net = fp16_net
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        image = ms.Tensor(np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32))
        c2 = net.backbone(image.astype(ms.float16))[0]
        pyramid, objectness, deltas = net._features(image)  # pylint: disable=protected-access
    finally:
        ms.set_context(mode=previous)
    assert c2.dtype == ms.float16
    assert {p.dtype for p in pyramid} == {ms.float32}
    assert objectness.dtype == deltas.dtype == ms.float32
    assert np.isfinite(objectness.asnumpy()).all()


def test_a_float16_training_step_on_the_cpu_has_finite_losses(tmp_path):
    import mindspore as ms
    from mindspore import nn

    from src.dataset import create_new_dataset
    from src.maskrcnn.builder import build_model
    from src.engine.train_step import LossNet, TrainOneStepCell, WithLossCell
    from src.synthetic import generate

    generate(str(tmp_path), 2, 1, seed=0)
    config = load_config(None, {**LIGHT, "compute_dtype": "float16", "coco_root": str(tmp_path),
                                "rpn_pre_nms_top_k_train": 200, "rpn_post_nms_top_k_train": 64,
                                "rcnn_num_samples": 32})
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        ms.set_seed(1)
        batch = next(create_new_dataset(str(tmp_path), 2, is_training=True, num_parallel_workers=1,
                                        config=config).create_tuple_iterator())
        net = build_model(config)
        assert built_dtypes(net) == {name: "float16" for name in FLOAT16_CELLS}
        optimizer = nn.Momentum(net.trainable_params(), learning_rate=0.001, momentum=0.9)
        cell = TrainOneStepCell(WithLossCell(net, LossNet()), optimizer, loss_scale=256.0)
        cell.set_train(True)
        weight = net.fpn.trainable_params()[0]
        before = weight.asnumpy().copy()
        outputs = cell(*batch)
    finally:
        ms.set_context(mode=previous)
    losses = np.array([float(o.asnumpy()) for o in outputs[:6]])  # total + the 5 named losses
    assert np.isfinite(losses).all() and losses[0] > 0, losses
    assert bool(outputs[6].asnumpy())  # finite gradients: the step was applied
    assert weight.dtype == ms.float32  # float32 master weights, float16 compute
    assert not np.array_equal(weight.asnumpy(), before)


class _Quadratic:
    """A 6-input cell with the training signature whose losses are (w - target)^2 terms."""

    @staticmethod
    def build():
        import mindspore as ms
        from mindspore import Parameter, Tensor, nn

        class Quadratic(nn.Cell):
            def __init__(self):
                super().__init__()
                self.w = Parameter(Tensor(np.array([1.0, -2.0], np.float32)), name="w")

            def construct(self, image, image_shape, box, label, instance_valid, mask, sampling_step=None):
                loss = ((self.w - image) ** 2).sum()
                zero = loss * 0.0
                return loss, loss, zero, zero, zero, zero

        return Quadratic(), ms


def _step_cell(loss_scale, dynamic):
    from mindspore import nn

    from src.engine.train_step import TrainOneStepCell

    net, _ = _Quadratic.build()
    optimizer = nn.Momentum(net.trainable_params(), learning_rate=0.1, momentum=0.0)
    return net, TrainOneStepCell(net, optimizer, loss_scale=loss_scale, dynamic_loss_scale=dynamic)


def _inputs(ms):
    target = ms.Tensor(np.array([3.0, 1.0], np.float32))
    dummy = ms.Tensor(np.zeros((1,), np.float32))
    return target, dummy, dummy, dummy, dummy, dummy


@pytest.mark.parametrize("dynamic", [True, False])
def test_an_overflowing_step_is_skipped(dynamic):
    import mindspore as ms

    # |grad| * scale = 4 * 1e38 overflows float32: the scaled gradient is inf
    huge = 1e38
    net, cell = _step_cell(huge, dynamic)
    before = net.w.asnumpy().copy()
    outputs = cell(*_inputs(ms))
    finite, scale_used = bool(outputs[6].asnumpy()), float(outputs[7].asnumpy())
    assert not finite and scale_used == pytest.approx(huge, rel=1e-6)
    np.testing.assert_array_equal(net.w.asnumpy(), before)  # the update was skipped
    expected_scale = huge / 2 if dynamic else huge
    assert float(cell.loss_scale.asnumpy()) == pytest.approx(expected_scale, rel=1e-6)


def test_a_finite_scaled_step_updates_with_the_unscaled_gradient():
    import mindspore as ms

    net, cell = _step_cell(1024.0, True)
    outputs = cell(*_inputs(ms))
    assert bool(outputs[6].asnumpy())
    # w - lr * 2 (w - target) with w = (1, -2), target = (3, 1), lr = 0.1
    np.testing.assert_allclose(net.w.asnumpy(), [1.4, -1.4], rtol=1e-6)
    assert float(cell.loss_scale.asnumpy()) == 1024.0
