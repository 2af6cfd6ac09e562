"""Parameter names: kinds of checkpoint, name prefixes, training-state names and the rename tables.

Five naming schemes meet in this package:

* the MindSpore model-zoo ResNet50 ImageNet classifier (``conv1.weight``, ``bn1.gamma``,
  ``layer1.0.down_sample_layer.0.weight``, ..., classifier ``end_point.*``);
* the model-zoo Mask R-CNN ResNet50-FPN (``backbone.layer1.0.conv_down_sample.weight``,
  ``fpn_ncek.lateral_convs_list.0.weight``, ``rcnn_cls.fpn_cls.shared_fc_0.weight``, ...; its
  fully connected weights are stored ``[in, out]``);
* torchvision's ``resnet50`` ImageNet classifier (``conv1.weight``, ``bn1.running_mean``,
  ``layer1.0.downsample.0.weight``, ..., classifier ``fc.*``);
* torchvision's ``maskrcnn_resnet50_fpn`` (``backbone.body.*``, ``backbone.fpn.inner_blocks.*``,
  ``rpn.head.*``, ``roi_heads.box_head.fc6``, ``roi_heads.mask_predictor.*``, ...); its Linear
  ``[out, in]`` and ConvTranspose ``[in, out, k, k]`` layouts are ours, nothing is transposed;
* this project's ``Mask_Rcnn_Resnet50`` (``backbone.<zoo ResNet50 name>``, ``fpn.*``,
  ``rpn_head.*``, ``box_head.*``, ``mask_head.*``; ``nn.Dense`` weights are ``[out, in]``).

``ZOO_RESNET50_TO_OURS``, ``ZOO_MASKRCNN_TO_OURS``, ``TORCHVISION_RESNET50_TO_OURS`` and
``TORCHVISION_MASKRCNN_TO_OURS`` are the explicit rename tables, one per source; the ResNet50
architecture they are built from (stage widths and block counts) is ``src/maskrcnn/resnet50.py``'s.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Tuple

from src.maskrcnn.numerics import DEFAULT_BN_EPS
from src.maskrcnn.numerics import NATIVE as NATIVE_NUMERICS
from src.maskrcnn.numerics import TORCHVISION as TORCHVISION_NUMERICS
from src.maskrcnn.numerics import ZOO as ZOO_NUMERICS
from src.maskrcnn.resnet50 import BOTTLENECK_EXPANSION, STAGE_BLOCKS, STAGE_OUT_CHANNELS, STEM_CHANNELS

# Kinds of checkpoint file, by their parameter names.
KIND_ZOO_RESNET50 = "zoo_resnet50"  # model-zoo ImageNet ResNet50 classifier
KIND_ZOO_MASKRCNN = "zoo_maskrcnn"  # model-zoo Mask R-CNN ResNet50-FPN
KIND_BACKBONE = "backbone"  # this project's backbone only (convert_checkpoint.py output)
KIND_FULL = "full"  # this project's whole Mask_Rcnn_Resnet50
KIND_TV_RESNET50 = "torchvision_resnet50"  # torchvision resnet50 ImageNet classifier
KIND_TV_MASKRCNN = "torchvision_maskrcnn"  # torchvision maskrcnn_resnet50_fpn (v1)
CONVERT_MODES = {"resnet50": KIND_ZOO_RESNET50, "maskrcnn": KIND_ZOO_MASKRCNN,
                 "torchvision_resnet50": KIND_TV_RESNET50, "torchvision_maskrcnn": KIND_TV_MASKRCNN}
# Kinds that hold a whole Mask R-CNN (heads included) once converted.
FULL_MODEL_SOURCES = (KIND_ZOO_MASKRCNN, KIND_TV_MASKRCNN)

# Numerics preset (config key ``numerics``, src/maskrcnn/numerics.py) under which each source's
# weights compute what they computed at home. For ImageNet backbones only the stem pooling and
# the input normalisation matter (the heads are trained anew): the zoo ResNet50's stem is the
# native one, torchvision's pools with symmetric padding.
NUMERICS_KEY = "numerics"  # string stored in converted checkpoints (mindspore append_dict)
CONVERTED_FROM_KEY = "converted_from"  # string stored beside it: the source kind
BN_EPS_KEY = "bn_eps"  # string stored beside it: the BatchNorm epsilon the weights ran with (repr of a float)
# BatchNorm epsilon each source's own loader runs the weights with: 1e-5 (MindSpore's and torch's
# default), except torchvision's COCO Mask R-CNN, whose builder (weights=COCO_V1) sets 0. A
# torchvision Mask R-CNN fine-tuned from an ImageNet backbone keeps 1e-5: the converter's
# --bn_eps records that.
BN_EPS_FOR_SOURCE = {
    KIND_ZOO_RESNET50: NATIVE_NUMERICS.bn_eps,
    KIND_ZOO_MASKRCNN: ZOO_NUMERICS.bn_eps,
    KIND_TV_RESNET50: DEFAULT_BN_EPS,
    KIND_TV_MASKRCNN: TORCHVISION_NUMERICS.bn_eps,
}
NUMERICS_FOR_SOURCE = {
    KIND_ZOO_RESNET50: NATIVE_NUMERICS.name,
    KIND_ZOO_MASKRCNN: ZOO_NUMERICS.name,
    KIND_TV_RESNET50: TORCHVISION_NUMERICS.name,
    KIND_TV_MASKRCNN: TORCHVISION_NUMERICS.name,
}

BACKBONE_PREFIX = "backbone."
ZOO_CLASSIFIER_PREFIX = "end_point."
# First name components of this project's non-backbone parts.
HEAD_PREFIXES = ("fpn.", "rpn_head.", "box_head.", "mask_head.")
# First name components only the zoo Mask R-CNN uses.
ZOO_MASKRCNN_PREFIXES = ("fpn_ncek.", "rpn_with_loss.", "rcnn_cls.", "rcnn_mask.")
# Layers whose shape depends on the number of classes: skipped (and listed) when it differs.
CLASS_DEPENDENT_PREFIXES = ("box_head.cls_score.", "box_head.box_deltas.", "mask_head.mask_logits.")

# Optimizer and training-loop state found in training checkpoints (ours and the zoo's):
# never network weights, dropped and counted when converting or loading pre-trained weights.
OPTIMIZER_STATE_PREFIXES = ("moments.", "accum.", "moment1.", "moment2.", "adam_m.", "adam_v.",
                            "accu_grads.")
TRAINING_STATE_NAMES = frozenset({
    "learning_rate", "global_step", "momentum", "beta1_power", "beta2_power", "weight_decay",
    "loss_scale", "loss_scale_good_steps", "scale_sense", "current_iterator_step",
    "last_overflow_iterator_step", "epoch_num", "step_num",
})
# PyTorch BatchNorm's update counter (``bn1.num_batches_tracked``): training state, never a weight.
TORCH_BN_COUNTER_SUFFIX = ".num_batches_tracked"
GLOBAL_STEP_NAME = "global_step"
# Optimizer state that train.py recomputes from the config instead of restoring on --resume.
RECOMPUTED_ON_RESUME = frozenset({"learning_rate"})
# The one checkpoint of a training run that holds the optimizer state and global step as well
# as the weights (train.py --resume); numbered checkpoints and best.ckpt hold the weights only.
LAST_CHECKPOINT_NAME = "last.ckpt"

# The stem convolution of the ResNet50 (7x7 on RGB images) and the BatchNorm tensors, as named
# in the files; stage widths and block counts come from src/maskrcnn/resnet50.py.
STEM_KERNEL = 7
IMAGE_CHANNELS = 3
BN_PARAM_NAMES = ("moving_mean", "moving_variance", "gamma", "beta")


def is_training_state(name: str) -> bool:
    """True for optimizer / training-loop state (moments.*, learning_rate, global_step, ...)."""
    return (name in TRAINING_STATE_NAMES or name.startswith(OPTIMIZER_STATE_PREFIXES)
            or name.endswith(TORCH_BN_COUNTER_SUFFIX))


def _bn_shapes(prefix: str, channels: int) -> List[Tuple[str, Tuple[int, ...]]]:
    return [(f"{prefix}.{p}", (channels,)) for p in BN_PARAM_NAMES]


def resnet50_param_shapes() -> Dict[str, Tuple[int, ...]]:
    """Names and shapes of the model-zoo ResNet50 without its classifier, in file order.

    These are also the names of this project's ``ResNet50`` (``src/maskrcnn/resnet50.py``), whose
    stage output channels and block counts they are built from.
    Conv weights are ``[out, in, kh, kw]``; BatchNorm has gamma/beta/moving_mean/moving_variance.
    """
    shapes: List[Tuple[str, Tuple[int, ...]]] = [
        ("conv1.weight", (STEM_CHANNELS, IMAGE_CHANNELS, STEM_KERNEL, STEM_KERNEL))]
    shapes += _bn_shapes("bn1", STEM_CHANNELS)
    in_channels = STEM_CHANNELS
    for stage, (blocks, out_channels) in enumerate(zip(STAGE_BLOCKS, STAGE_OUT_CHANNELS), start=1):
        width = out_channels // BOTTLENECK_EXPANSION  # the bottleneck's inner width
        for block in range(blocks):
            p = f"layer{stage}.{block}"
            shapes.append((f"{p}.conv1.weight", (width, in_channels, 1, 1)))
            shapes += _bn_shapes(f"{p}.bn1", width)
            shapes.append((f"{p}.conv2.weight", (width, width, 3, 3)))
            shapes += _bn_shapes(f"{p}.bn2", width)
            shapes.append((f"{p}.conv3.weight", (out_channels, width, 1, 1)))
            shapes += _bn_shapes(f"{p}.bn3", out_channels)
            if block == 0:  # the projection shortcut of the first block of every stage
                shapes.append((f"{p}.down_sample_layer.0.weight", (out_channels, in_channels, 1, 1)))
                shapes += _bn_shapes(f"{p}.down_sample_layer.1", out_channels)
            in_channels = out_channels
    return dict(shapes)


RESNET50_SHAPES: Dict[str, Tuple[int, ...]] = resnet50_param_shapes()

# zoo ResNet50 name -> our name: the backbone keeps the zoo names under "backbone.";
# the classifier end_point.* has no counterpart and is dropped.
ZOO_RESNET50_TO_OURS: Dict[str, str] = {name: BACKBONE_PREFIX + name for name in RESNET50_SHAPES}


def zoo_maskrcnn_backbone_name(name: str) -> str:
    """The zoo Mask R-CNN spells the projection shortcut conv_down_sample / bn_down_sample."""
    return (BACKBONE_PREFIX + name.replace("down_sample_layer.0.", "conv_down_sample.")
            .replace("down_sample_layer.1.", "bn_down_sample."))


def _layer_params(layers: Mapping[str, str]) -> Dict[str, str]:
    """{foreign layer: our layer} -> the same for their ``weight`` and ``bias`` tensors."""
    return {f"{theirs}.{p}": f"{ours}.{p}" for theirs, ours in layers.items() for p in ("weight", "bias")}


def _zoo_maskrcnn_table() -> Dict[str, str]:
    table = {zoo_maskrcnn_backbone_name(name): BACKBONE_PREFIX + name for name in RESNET50_SHAPES}
    for level in range(len(STAGE_BLOCKS)):  # one lateral + one output conv per C2..C5
        for p in ("weight", "bias"):
            table[f"fpn_ncek.lateral_convs_list.{level}.{p}"] = f"fpn.lateral_convs.{level}.{p}"
            table[f"fpn_ncek.fpn_convs_list.{level}.{p}"] = f"fpn.output_convs.{level}.{p}"
    heads = {
        "rpn_with_loss.rpn_convs_list.0.rpn_conv": "rpn_head.conv",
        "rpn_with_loss.rpn_convs_list.0.rpn_cls": "rpn_head.objectness",
        "rpn_with_loss.rpn_convs_list.0.rpn_reg": "rpn_head.box_deltas",
        "rcnn_cls.fpn_cls.shared_fc_0": "box_head.fc1",
        "rcnn_cls.fpn_cls.shared_fc_1": "box_head.fc2",
        "rcnn_cls.fpn_cls.cls_scores": "box_head.cls_score",
        "rcnn_cls.fpn_cls.reg_scores": "box_head.box_deltas",
        "rcnn_mask.fpn_mask.mask_conv1": "mask_head.conv1",
        "rcnn_mask.fpn_mask.mask_conv2": "mask_head.conv2",
        "rcnn_mask.fpn_mask.mask_conv3": "mask_head.conv3",
        "rcnn_mask.fpn_mask.mask_conv4": "mask_head.conv4",
        "rcnn_mask.fpn_mask.mask_deconv5": "mask_head.deconv",
        "rcnn_mask.fpn_mask.mask_conv6": "mask_head.mask_logits",
    }
    table.update(_layer_params(heads))
    return table


# zoo Mask R-CNN name -> our name (explicit; every zoo network parameter has exactly one entry).
ZOO_MASKRCNN_TO_OURS: Dict[str, str] = _zoo_maskrcnn_table()
# The zoo's fully connected layers multiply x @ W with W stored [in, out]; nn.Dense wants [out, in].
ZOO_MASKRCNN_TRANSPOSED = frozenset({
    "rcnn_cls.fpn_cls.shared_fc_0.weight", "rcnn_cls.fpn_cls.shared_fc_1.weight",
    "rcnn_cls.fpn_cls.cls_scores.weight", "rcnn_cls.fpn_cls.reg_scores.weight",
})

# ---- torchvision ----------------------------------------------------------------------------
# BatchNorm / FrozenBatchNorm2d tensors: torchvision name -> ours (= the model zoo's).
TORCHVISION_BN_TO_OURS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                          "running_var": "moving_variance"}
_OURS_TO_TORCHVISION_BN = {ours: tv for tv, ours in TORCHVISION_BN_TO_OURS.items()}
TORCHVISION_CLASSIFIER_PREFIX = "fc."
TORCHVISION_BODY_PREFIX = "backbone.body."
# First name components only torchvision's Mask R-CNN uses.
TORCHVISION_MASKRCNN_PREFIXES = (TORCHVISION_BODY_PREFIX, "backbone.fpn.", "rpn.head.", "roi_heads.")


def torchvision_resnet50_name(our_name: str) -> str:
    """Our (model-zoo) ResNet50 name -> torchvision's: ``downsample`` for ``down_sample_layer``,
    BatchNorm ``weight/bias/running_mean/running_var`` for ``gamma/beta/moving_mean/moving_variance``."""
    module, param = our_name.rsplit(".", 1)
    module = module.replace("down_sample_layer.", "downsample.")
    return f"{module}.{_OURS_TO_TORCHVISION_BN.get(param, param)}"


# torchvision resnet50 name -> our name (the classifier fc.* has no counterpart and is dropped).
TORCHVISION_RESNET50_TO_OURS: Dict[str, str] = {
    torchvision_resnet50_name(name): BACKBONE_PREFIX + name for name in RESNET50_SHAPES}


def _torchvision_maskrcnn_table() -> Dict[str, str]:
    table = {TORCHVISION_BODY_PREFIX + tv: ours for tv, ours in TORCHVISION_RESNET50_TO_OURS.items()}
    for level in range(len(STAGE_BLOCKS)):  # one inner (lateral) + one layer (output) conv per C2..C5
        for p in ("weight", "bias"):
            table[f"backbone.fpn.inner_blocks.{level}.0.{p}"] = f"fpn.lateral_convs.{level}.{p}"
            table[f"backbone.fpn.layer_blocks.{level}.0.{p}"] = f"fpn.output_convs.{level}.{p}"
    heads = {
        "rpn.head.conv.0.0": "rpn_head.conv",
        "rpn.head.cls_logits": "rpn_head.objectness",
        "rpn.head.bbox_pred": "rpn_head.box_deltas",
        "roi_heads.box_head.fc6": "box_head.fc1",
        "roi_heads.box_head.fc7": "box_head.fc2",
        "roi_heads.box_predictor.cls_score": "box_head.cls_score",
        "roi_heads.box_predictor.bbox_pred": "box_head.box_deltas",
        "roi_heads.mask_head.0.0": "mask_head.conv1",
        "roi_heads.mask_head.1.0": "mask_head.conv2",
        "roi_heads.mask_head.2.0": "mask_head.conv3",
        "roi_heads.mask_head.3.0": "mask_head.conv4",
        "roi_heads.mask_predictor.conv5_mask": "mask_head.deconv",
        "roi_heads.mask_predictor.mask_fcn_logits": "mask_head.mask_logits",
    }
    table.update(_layer_params(heads))
    return table


# torchvision maskrcnn_resnet50_fpn name -> our name (explicit; one entry per network tensor).
# Both layouts match ours: Linear [out, in], ConvTranspose2d [in, out, k, k]; the RPN's
# channel a*4+j and the box predictor's column 4c+j order agree with ours too.
TORCHVISION_MASKRCNN_TO_OURS: Dict[str, str] = _torchvision_maskrcnn_table()


def _torchvision_legacy_names() -> Dict[str, str]:
    """Spellings of torchvision < 0.13 (e.g. the published COCO weights) -> today's names, as
    torchvision's own state-dict upgrade renames them."""
    legacy = {}
    for p in ("weight", "bias"):
        legacy[f"rpn.head.conv.{p}"] = f"rpn.head.conv.0.0.{p}"
        for i in range(4):
            legacy[f"roi_heads.mask_head.mask_fcn{i + 1}.{p}"] = f"roi_heads.mask_head.{i}.0.{p}"
    return legacy


TORCHVISION_LEGACY_NAMES: Dict[str, str] = _torchvision_legacy_names()
