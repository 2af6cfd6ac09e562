"""One place that decides device-dependent choices of the network: compute dtype, kernels, shapes.

- Compute dtype (config key ``compute_dtype``; ``Config.compute_float16``): with float16 the
  backbone, FPN, RPN head, box head and mask head run in float16 (``Cell.to_float``, applied by
  ``src/maskrcnn/builder.py``); their
  outputs are cast back to float32 before the losses, box decoding, proposal/detection NMS and
  mask paste, which always run in float32 (``Mask_Rcnn_Resnet50._features`` / ``_box_head`` /
  ``_mask_logits``). "auto" means float16 on Ascend and float32 elsewhere.
- Op kernels (:func:`op_kernels`, :class:`Kernels`): on the CPU, RoIAlign, the stem's max-pool,
  the FPN's nearest upsampling and the stride-1 3x3 convolutions run the CPU backend's own
  kernels (``src/maskrcnn/ops/``: C and oneDNN 3 code in ``pyfunc``/``aot`` ops, SciPy RoIAlign;
  fast training); on Ascend/GPU and whenever the graph is exported they are MindSpore's native
  ops (a ``pyfunc`` op cannot be stored in a MindIR). Decided from the config (never from the
  MindSpore context, which may not be set yet); the builder hands each stage the
  :class:`Kernels` of the target, and the stages never import ``src/maskrcnn/ops`` themselves.
- Shapes (:func:`mask_rows`, config key ``mask_rows``): on the CPU the mask branch runs on the
  real rows only (the batch's real positives in training, the real detections at inference:
  ``ops.nonzero``, a shape that changes from call to call, which the CPU runs fast); on
  Ascend/GPU and whenever the graph is exported the whole graph is static (training on the
  ``mask_rois_per_image`` bound, every positive slot when it is null; inference on all
  ``test_max_per_img`` detection slots): MindSpore's default on Ascend (``jit_level`` O2,
  CANN's GraphEngine) and the deployment toolchains compile static shapes only. Same losses and
  detections either way (``tests/maskrcnn/test_mask_rcnn.py``); the dynamic form only saves work.
- Loss scale: ``loss_scale`` (static) and ``dynamic_loss_scale`` drive ``TrainOneStepCell``,
  which skips the update of a step with a non-finite gradient and, when dynamic, halves the
  scale (see ``src/engine/train_step.py``).
"""

import logging
from typing import Dict

logger = logging.getLogger(__name__)

# Every device_target a config may name (also the order in which available ones are listed).
DEVICE_TARGETS = ("CPU", "Ascend", "GPU")
# "cpu": the CPU backend's own kernels (src/maskrcnn/ops); "native": MindSpore's ops (any device, exportable).
KERNEL_CHOICES = ("cpu", "native")
# The cells that compute in float16 when the config asks for it (attribute names in
# Mask_Rcnn_Resnet50; the builder converts them); everything else stays float32.
FLOAT16_CELLS = ("backbone", "fpn", "rpn_head", "box_head", "mask_head")
# Config key mask_rows: "auto" = "dynamic" on the CPU, "static" on other targets and for export.
MASK_ROWS_CHOICES = ("auto", "dynamic", "static")
# The (target, choice) pairs already logged by mask_rows: one INFO line each per process.
_LOGGED_MASK_ROWS = set()


def op_kernels(config, for_export: bool = False) -> str:
    """``"native"`` for export and for Ascend/GPU, ``"cpu"`` for the CPU backend."""
    if for_export or config.device_target != "CPU":
        return "native"
    return "cpu"


def mask_rows(config, for_export: bool = False) -> str:
    """``"dynamic"`` (the mask branch on the real rows, ``ops.nonzero``) or ``"static"`` (fixed
    row counts: the whole graph has static shapes), from ``config.mask_rows``; logged once."""
    choice = config.mask_rows
    if choice == "auto":
        choice = "dynamic" if config.device_target == "CPU" and not for_export else "static"
    target = "export" if for_export else config.device_target
    if (target, choice) not in _LOGGED_MASK_ROWS:
        _LOGGED_MASK_ROWS.add((target, choice))
        logger.info("mask rows on %s: %s (mask_rows: %s)", target, choice, config.mask_rows)
    return choice


def planned_dtypes(config) -> Dict[str, str]:
    """What the config asks for: ``{cell attribute: "float16" | "float32"}`` of FLOAT16_CELLS."""
    dtype = "float16" if config.compute_float16 else "float32"
    return {name: dtype for name in FLOAT16_CELLS}


def built_dtypes(net) -> Dict[str, str]:
    """What a built ``Mask_Rcnn_Resnet50`` will compute in, read from its cells' mixed-precision flag."""
    from mindspore import nn

    result = {}
    for name in FLOAT16_CELLS:
        cell: nn.Cell = getattr(net, name)
        result[name] = "float16" if cell.get_flags().get("fp16", False) else "float32"
    return result


class Kernels:
    """The op implementations a network's kernel-switchable layers get: ``"cpu"`` or ``"native"``.

    Each method returns the CPU backend's op for that layer, or None where the stage should use
    MindSpore's own op: always for ``"native"``, and for ``"cpu"`` when the kernel cannot be
    built here (no C compiler, no oneDNN 3) or does not apply. Same values either way.
    """

    def __init__(self, name: str):
        if name not in KERNEL_CHOICES:
            raise ValueError(f"kernels must be one of {KERNEL_CHOICES}, got {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return f"Kernels({self.name!r})"

    def conv3x3(self, in_channels: int, out_channels: int, has_bias: bool, weight_init):
        """A stride-1 3x3 convolution on oneDNN 3 (``ops.cpu_ops.Conv3x3``, the parameters of
        ``nn.Conv2d``), or None."""
        if self.name != "cpu":
            return None
        from src.maskrcnn.ops import cpu_kernels
        from src.maskrcnn.ops.cpu_ops import Conv3x3

        library = cpu_kernels.conv3x3_library()
        if library is None:
            return None
        return Conv3x3(library, in_channels, out_channels, has_bias, weight_init)

    def max_pool(self, window: int, stride: int, padding):
        """The C max-pool (``ops.cpu_ops.CpuMaxPool2d``; MindSpore's CPU MaxPoolGrad takes ~150 ms
        per step at 384x640), or None. ``padding``: ``"same"`` or pixels on every side."""
        if self.name != "cpu":
            return None
        from src.maskrcnn.ops import cpu_kernels
        from src.maskrcnn.ops.cpu_ops import CpuMaxPool2d

        return CpuMaxPool2d(window, stride, padding) if cpu_kernels.available() else None

    def upsample_nearest(self, factor: int):
        """The C nearest upsampling by an integer ``factor`` (``ops.cpu_ops.upsample_nearest_op``;
        MindSpore's CPU ResizeNearestNeighborV2 and its gradient take ~115 ms per step at 384x640),
        or None."""
        if self.name != "cpu":
            return None
        from src.maskrcnn.ops import cpu_kernels
        from src.maskrcnn.ops.cpu_ops import upsample_nearest_op

        return upsample_nearest_op(factor) if cpu_kernels.available() else None

    def roi_align(self, out_size: int, sampling_ratio: int):
        """``ops.ROIAlign(out_size, out_size, 1.0, sampling_ratio, 1)`` as the SciPy sparse-matrix
        op (``ops.roi_align_cpu.cpu_roi_align_op``, ~8x faster on the CPU), or None."""
        if self.name != "cpu":
            return None
        from src.maskrcnn.ops.roi_align_cpu import cpu_roi_align_op

        return cpu_roi_align_op(out_size, sampling_ratio)


NATIVE_KERNELS = Kernels("native")
CPU_KERNELS = Kernels("cpu")


def kernels_for(config, for_export: bool = False) -> Kernels:
    """The :class:`Kernels` of :func:`op_kernels`."""
    return CPU_KERNELS if op_kernels(config, for_export) == "cpu" else NATIVE_KERNELS


def kernel_build_state(config) -> Dict[str, object]:
    """What the CPU kernels built on this machine put into ``config``'s CPU graph (for cache keys).

    Returns:
        ``{"c_kernels": whether the C kernels could be built, "conv3x3_library": the path of the
        oneDNN 3 convolution library the graph names, or None}``; both False/None off the CPU.
    """
    if config.device_target != "CPU":
        return {"c_kernels": False, "conv3x3_library": None}
    from src.maskrcnn.ops import cpu_kernels

    return {"c_kernels": cpu_kernels.available(), "conv3x3_library": cpu_kernels.conv3x3_library()}
