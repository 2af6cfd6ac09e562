"""One place that decides device-dependent choices of the network: compute dtype and kernels.

- Compute dtype (config key ``compute_dtype``; ``Config.compute_float16``): with float16 the
  backbone, FPN, RPN head, box head and mask head run in float16 (``Cell.to_float``, applied by
  ``src/maskrcnn/builder.py``); their
  outputs are cast back to float32 before the losses, box decoding, proposal/detection NMS and
  mask paste, which always run in float32 (``Mask_Rcnn_Resnet50._features`` / ``_box_head`` /
  ``_mask_logits``). "auto" means float16 on Ascend and float32 elsewhere.
- Op kernels (:func:`op_kernels`): on the CPU, RoIAlign, the stem's max-pool and the FPN's
  nearest upsampling run C kernels in ``pyfunc`` ops (``src/maskrcnn/cpu_ops.py``; fast
  training); on Ascend/GPU and whenever the graph is exported they are MindSpore's native ops
  (a ``pyfunc`` op cannot be stored in a MindIR). Decided from the config (never from the
  MindSpore context, which may not be set yet) and passed to ``MultiLevelRoIAlign(kernel=...)``
  by the builder.
- Loss scale: ``loss_scale`` (static) and ``dynamic_loss_scale`` drive ``TrainOneStepCell``,
  which skips the update of a step with a non-finite gradient and, when dynamic, halves the
  scale (see ``src/network_define.py``).
"""

from typing import Dict

# The cells that compute in float16 when the config asks for it (attribute names in
# Mask_Rcnn_Resnet50; the builder converts them); everything else stays float32.
FLOAT16_CELLS = ("backbone", "fpn", "rpn_head", "box_head", "mask_head")


def op_kernels(config, for_export: bool = False) -> str:
    """``"native"`` for export and for Ascend/GPU, ``"cpu"`` for the CPU backend."""
    if for_export or config.device_target != "CPU":
        return "native"
    return "cpu"


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
