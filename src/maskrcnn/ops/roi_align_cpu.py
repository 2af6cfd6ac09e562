"""RoIAlign on the CPU backend as a sparse interpolation matrix (SciPy, in a ``pyfunc`` Custom op).

MindSpore's CPU ROIAlign kernel (and above all its gradient) is slow: ~2 s for the
forward + backward of 1024 RoIs of 7x7x256. On the CPU backend this module therefore runs the
same arithmetic as a sparse interpolation matrix (``sparse_roi_align_matrix``): each output cell
is a weighted sum of at most 16 feature cells, so the forward is ``W @ F`` and the gradient
``W.T @ dOut`` (SciPy, in a ``pyfunc`` Custom op: :func:`cpu_roi_align_op`), ~8x faster. A plain
C loop over the NCHW maps (as ``src/maskrcnn/ops/cpu_kernels.c`` does for other ops) was measured no
faster: SciPy's product runs vectorised over the 256 channels. Ascend and GPU use the native op.
The Cell that uses it is ``src.maskrcnn.roi_align.MultiLevelRoIAlign``; the target
(``src/maskrcnn/target.py``) decides when.
"""

import numpy as np
import scipy.sparse
from mindspore import ops

from src.maskrcnn.ops.cpu_ops import pyfunc_key, stable_pyfunc


def _bilinear_taps(coords, size):
    """Neighbour indices and weights of ROIAlign's bilinear sampling along one axis.

    Args:
        coords: sample coordinates in feature cells, any shape.
        size: the feature map's extent along the axis.

    Returns:
        ``(index [..., 2] int64, weight [..., 2] float32)``: the low/high neighbour and their
        weights; samples more than one cell outside the map get weight 0, samples in the last
        cell or beyond are clamped to it (the native kernel's rules).
    """
    inside = (coords >= -1.0) & (coords <= size)
    coords = np.maximum(coords, 0.0)
    low = np.floor(coords).astype(np.int64)
    at_end = low >= size - 1
    low = np.where(at_end, size - 1, low)
    high = np.where(at_end, size - 1, low + 1)
    frac = np.where(at_end, 0.0, coords - low)
    weight = np.stack((1.0 - frac, frac), axis=-1) * inside[..., None]
    return np.stack((low, high), axis=-1), weight.astype(np.float32)


def sparse_roi_align_matrix(rois, feature_shape, out_size, sampling_ratio):
    """ROIAlign (``roi_end_mode=1``, spatial scale 1) as a sparse matrix.

    Args:
        rois: ``[R, 5]`` (batch index, x1, y1, x2, y2) in feature cells, end inclusive.
        feature_shape: ``(B, C, H, W)`` of the pooled map.
        out_size, sampling_ratio: as for ``ops.ROIAlign``.

    Returns:
        CSR ``[R * out * out, B * H * W]``: row ``(r * out + i) * out + j`` holds the weights of
        output cell (i, j) of RoI r over the map's cells flattened as ``(b * H + y) * W + x``.
    """
    batch, _, height, width = feature_shape
    num_rois = rois.shape[0]
    rois = rois.astype(np.float64)
    image = rois[:, 0].astype(np.int64)
    x1, y1 = rois[:, 1], rois[:, 2]
    # No minimum size: the native kernel's forward lets a sub-cell RoI stay sub-cell.
    roi_w = rois[:, 3] - x1 + 1.0
    roi_h = rois[:, 4] - y1 + 1.0
    # Sample positions inside the out_size bins, in bin units: [out, sampling_ratio].
    grid = np.arange(out_size)[:, None] + (np.arange(sampling_ratio)[None, :] + 0.5) / sampling_ratio
    y_index, y_weight = _bilinear_taps(y1[:, None, None] + grid[None] * (roi_h / out_size)[:, None, None], height)
    x_index, x_weight = _bilinear_taps(x1[:, None, None] + grid[None] * (roi_w / out_size)[:, None, None], width)
    # Axes: roi, out row i, out col j, sample row, sample col, y tap, x tap.
    weight = (y_weight[:, :, None, :, None, :, None] * x_weight[:, None, :, None, :, None, :]
              / float(sampling_ratio * sampling_ratio))
    column = ((image[:, None, None, None, None, None, None] * height + y_index[:, :, None, :, None, :, None]) * width
              + x_index[:, None, :, None, :, None, :])
    row = np.broadcast_to(np.arange(num_rois * out_size * out_size).reshape(num_rois, out_size, out_size, 1, 1, 1, 1),
                          weight.shape)
    return scipy.sparse.csr_matrix((weight.ravel(), (row.ravel(), column.ravel())),
                                   shape=(num_rois * out_size * out_size, batch * height * width))


def cpu_roi_align_op(out_size, sampling_ratio):
    """A ``pyfunc`` Custom op computing ``ops.ROIAlign(out, out, 1.0, sampling_ratio, 1)``.

    The forward is ``W @ F`` and the gradient ``W.T @ dOut`` with ``W`` the sparse interpolation
    matrix (:func:`sparse_roi_align_matrix`, SciPy). Both functions are registered under
    content-derived keys (``cpu_ops.pyfunc_key``), so a training graph restored from MindSpore's
    compile cache runs.
    """
    params = (int(out_size), int(sampling_ratio))

    def forward(features, rois):
        batch, channels, height, width = features.shape
        matrix = sparse_roi_align_matrix(rois, features.shape, out_size, sampling_ratio)
        pooled = matrix @ features.transpose(0, 2, 3, 1).reshape(batch * height * width, channels)
        pooled = pooled.reshape(rois.shape[0], out_size, out_size, channels).transpose(0, 3, 1, 2)
        return np.ascontiguousarray(pooled, dtype=features.dtype)

    def backward(features, rois, grad_out):
        batch, channels, height, width = features.shape
        matrix = sparse_roi_align_matrix(rois, features.shape, out_size, sampling_ratio)
        grad = matrix.T @ grad_out.transpose(0, 2, 3, 1).reshape(-1, channels)
        grad = grad.reshape(batch, height, width, channels).transpose(0, 3, 1, 2)
        return np.ascontiguousarray(grad, dtype=features.dtype)

    backward_op = stable_pyfunc(backward, pyfunc_key("roi_align.backward", params, __file__),
                                out_shape=lambda f, r, g: f, out_dtype=lambda f, r, g: f)

    def bprop(features, rois, out, grad_out):
        return backward_op(features, rois, grad_out), ops.zeros_like(rois)

    return stable_pyfunc(forward, pyfunc_key("roi_align.forward", params, __file__),
                         out_shape=lambda f, r: (r[0], f[1], out_size, out_size),
                         out_dtype=lambda f, r: f, bprop=bprop)
