"""Tests of src/maskrcnn/roi_align.py against a small NumPy aligned-RoIAlign reference."""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from src.maskrcnn.roi_align import MultiLevelRoIAlign, roi_levels
from src.maskrcnn.target import CPU_KERNELS

STRIDES = (4, 8, 16, 32)
OUT = 3
SAMPLING = 2


def _bilinear(feature, y, x):
    """Bilinear sample of ``feature [H, W]`` at feature coords (pixel centres at integers)."""
    height, width = feature.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * feature[y0, x0] + (1 - ly) * lx * feature[y0, x1]
            + ly * (1 - lx) * feature[y1, x0] + ly * lx * feature[y1, x1])


def reference_roi_align(feature, box, stride, out, sampling):
    """Aligned RoIAlign of one box on ``feature [C, H, W]`` -> ``[C, out, out]``."""
    x1, y1, x2, y2 = (c / stride - 0.5 for c in box)
    bin_w, bin_h = (x2 - x1) / out, (y2 - y1) / out
    result = np.zeros((feature.shape[0], out, out))
    for c in range(feature.shape[0]):
        for i in range(out):
            for j in range(out):
                total = 0.0
                for a in range(sampling):
                    for b in range(sampling):
                        y = y1 + i * bin_h + (a + 0.5) * bin_h / sampling
                        x = x1 + j * bin_w + (b + 0.5) * bin_w / sampling
                        total += _bilinear(feature[c], y, x)
                result[c, i, j] = total / sampling ** 2
    return result


# sqrt(w*h): 38.7 -> P2, 139.6 -> P3, 289.8 -> P4 | 489.9 -> P5, 94.8 at the border -> P2, 512 -> P5
ROIS = np.array([[[10, 20, 60, 50], [30, 40, 180, 170], [100, 50, 400, 330]],
                 [[0, 0, 500, 480], [0, 0, 120, 75], [0, 0, 512, 512]]], np.float32)
EXPECTED_LEVELS = [[2, 3, 4], [5, 2, 5]]
IMAGE = 512


def _features(batch=2, channels=2, seed=7):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, channels, IMAGE // s, IMAGE // s)).astype(np.float32) for s in STRIDES]


def test_roi_levels_exact(mode):
    sides = np.array([10, 56, 111.9, 112, 223, 224, 447, 448, 2000], np.float32)
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], axis=1)
    np.testing.assert_array_equal(roi_levels(Tensor(boxes)).asnumpy(), [2, 2, 2, 3, 3, 4, 4, 5, 5])
    np.testing.assert_array_equal(roi_levels(Tensor(ROIS)).asnumpy(), EXPECTED_LEVELS)


def test_multilevel_matches_numpy_reference(mode):
    features = _features()
    pool = MultiLevelRoIAlign(OUT, SAMPLING, STRIDES, kernels=CPU_KERNELS)
    out = pool(tuple(Tensor(f) for f in features), Tensor(ROIS)).asnumpy()
    assert out.shape == (6, 2, OUT, OUT)
    for b in range(2):
        for r in range(3):
            level = EXPECTED_LEVELS[b][r] - 2
            expected = reference_roi_align(features[level][b], ROIS[b, r], STRIDES[level], OUT, SAMPLING)
            np.testing.assert_allclose(out[b * 3 + r], expected, rtol=1e-5, atol=1e-5)


def test_roi_outside_the_map_is_clipped_to_it(mode):
    features = tuple(Tensor(f) for f in _features(batch=1))
    pool = MultiLevelRoIAlign(OUT, SAMPLING, STRIDES, kernels=CPU_KERNELS)
    # 90 x 90 (P2) box hanging over the top-left corner: pooled as its part inside the map.
    outside = pool(features, Tensor(np.array([[[-30, -40, 60, 50]]], np.float32))).asnumpy()
    expected = reference_roi_align(_features(batch=1)[0][0], [0, 0, 60, 50], 4, OUT, SAMPLING)
    np.testing.assert_allclose(outside[0], expected, rtol=1e-5, atol=1e-5)


class _WeightedSum(nn.Cell):
    def __init__(self):
        super().__init__()
        self.pool = MultiLevelRoIAlign(OUT, SAMPLING, STRIDES, kernels=CPU_KERNELS)

    def construct(self, p2, p3, p4, p5, rois, weights):
        return (self.pool((p2, p3, p4, p5), rois) * weights).sum()


def _grads(features, rois, weights):
    net = ops.GradOperation(get_all=True)(_WeightedSum())
    grads = net(*(Tensor(f) for f in features), Tensor(rois), Tensor(weights))
    return [g.asnumpy() for g in grads[:4]]


def test_gradient_is_the_adjoint_of_the_reference(graph_mode):
    # RoIAlign is linear in the features, so for any direction D:
    # <d/dF sum(W * pool(F)), D> == sum(W * reference_pool(D)).
    weights = np.random.default_rng(1).standard_normal((6, 2, OUT, OUT)).astype(np.float32)
    grads = _grads(_features(), ROIS, weights)
    direction = _features(seed=11)
    lhs = sum(float((g.astype(np.float64) * d).sum()) for g, d in zip(grads, direction))
    rhs = 0.0
    for b in range(2):
        for r in range(3):
            level = EXPECTED_LEVELS[b][r] - 2
            rhs += float((reference_roi_align(direction[level][b], ROIS[b, r], STRIDES[level], OUT, SAMPLING)
                          * weights[b * 3 + r]).sum())
    assert lhs == pytest.approx(rhs, rel=1e-4)


def test_gradient_reaches_only_the_roi_level(graph_mode):
    rois = np.array([[[30, 40, 180, 170]]], np.float32)  # P3, well inside the map
    grads = _grads(_features(batch=1), rois, np.ones((1, 2, OUT, OUT), np.float32))
    sums = [float(np.abs(g).sum()) for g in grads]
    assert sums[0] == 0.0 and sums[2] == 0.0 and sums[3] == 0.0
    # every output cell averages bilinear weights summing to 1: 2 channels x 3 x 3 cells
    np.testing.assert_allclose(grads[1].sum(), 2 * OUT * OUT, rtol=1e-5)


def test_bad_strides_message():
    with pytest.raises(ValueError, match=r"strides must double level by level"):
        MultiLevelRoIAlign(7, 2, (4, 8, 12), kernels=CPU_KERNELS)


def test_cpu_kernel_matches_the_native_op_forward_and_gradient():
    """The CPU op (sparse interpolation matrix) computes exactly what ops.ROIAlign computes."""
    from src.maskrcnn.ops.roi_align_cpu import cpu_roi_align_op

    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(3)
    features = Tensor(rng.standard_normal((2, 3, 9, 11)).astype(np.float32))
    x1 = rng.uniform(-2.0, 10.0, 40)
    y1 = rng.uniform(-2.0, 8.0, 40)
    rois = np.stack([np.repeat([0.0, 1.0], 20), x1, y1, x1 + rng.uniform(-0.5, 6.0, 40),
                     y1 + rng.uniform(-0.5, 6.0, 40)], axis=1).astype(np.float32)
    weights = Tensor(rng.standard_normal((40, 3, 5, 5)).astype(np.float32))

    class Loss(nn.Cell):
        def __init__(self, pool):
            super().__init__()
            self.pool = pool

        def construct(self, feature, boxes):
            return (self.pool(feature, boxes) * weights).sum()

    class Grad(nn.Cell):
        def __init__(self, loss):
            super().__init__()
            self.loss = loss
            self.grad = ops.GradOperation()

        def construct(self, feature, boxes):
            return self.grad(self.loss)(feature, boxes)

    native, cpu = ops.ROIAlign(5, 5, 1.0, 2, 1), cpu_roi_align_op(5, 2)
    np.testing.assert_allclose(Loss(cpu)(features, Tensor(rois)).asnumpy(),
                               Loss(native)(features, Tensor(rois)).asnumpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(Grad(Loss(cpu))(features, Tensor(rois)).asnumpy(),
                               Grad(Loss(native))(features, Tensor(rois)).asnumpy(), rtol=1e-5, atol=1e-5)
