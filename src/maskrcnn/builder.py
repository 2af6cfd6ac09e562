"""Build the Mask R-CNN of a Config: the one place that reads the Config for the network.

Every stage Cell is built here from explicit arguments (so each can also be built and tested
without a Config), in a fixed order (the random initialisation of the layers depends on it),
then :class:`~src.maskrcnn.mask_rcnn.Mask_Rcnn_Resnet50` wires them. The numerics preset
(``config.numerics``, ``src/maskrcnn/numerics.py``) is resolved here and each stage gets its
part; the device-dependent choices (compute dtype, op kernels, static or dynamic mask rows)
come from ``src/maskrcnn/target.py``.
"""

from __future__ import annotations

import mindspore.common.dtype as mstype

from src.maskrcnn.anchors import anchors_per_level, generate_anchors
from src.maskrcnn.fpn import FPN
from src.maskrcnn.geometry import FEATURE_STRIDES, FPN_STRIDES
from src.maskrcnn.mask_branch import MaskHead, MaskLoss
from src.maskrcnn.mask_rcnn import Mask_Rcnn_Resnet50
from src.maskrcnn.numerics import backbone_bn_eps, get_numerics
from src.maskrcnn.proposals import ProposalGenerator
from src.maskrcnn.resnet50 import STAGE_OUT_CHANNELS, ResNet50
from src.maskrcnn.roi_align import MultiLevelRoIAlign
from src.maskrcnn.roi_heads import BoxHead, BoxPostProcessor, RCNNTargets
from src.maskrcnn.rpn import RPN_BOX_STDS, RPNHead, RPNTargets
from src.maskrcnn.target import FLOAT16_CELLS, NATIVE_KERNELS, kernels_for, mask_rows


def build_model(config, pretrained_backbone: bool = False, for_export: bool = False) -> Mask_Rcnn_Resnet50:
    """The Mask R-CNN of ``config``.

    Args:
        config: ``src.config.Config``.
        pretrained_backbone: True when a pretrained ResNet50 will be loaded: frozen BatchNorm
            (moving statistics, not trained) and the stem + ``config.frozen_backbone_stages``
            stages frozen. False (random init): trainable BatchNorm with batch statistics.
        for_export: only graph-exportable kernels and static shapes (see
            ``src.maskrcnn.target.op_kernels`` and ``mask_rows``).

    Returns:
        ``Mask_Rcnn_Resnet50``; with ``config.compute_float16`` the cells of
        ``src.maskrcnn.target.FLOAT16_CELLS`` compute in float16.
    """
    numerics = get_numerics(config.numerics)
    channels = config.fpn_channels
    num_classes = config.num_classes
    stds = tuple(float(s) for s in config.box_target_stds)
    input_size = (config.img_height, config.img_width)
    # The model zoo clips decoded boxes to the padded input, the others to the image.
    clip_to_input = input_size if numerics.clip_to == "input" else None
    kernels = kernels_for(config, for_export)
    static_mask_rows = mask_rows(config, for_export) == "static"
    # The oneDNN 3x3 convolution (layers.conv2d) computes in float32 only.
    conv_kernels = NATIVE_KERNELS if config.compute_float16 else kernels

    bn_eps = backbone_bn_eps(config)
    if pretrained_backbone:
        backbone = ResNet50(config.frozen_backbone_stages, norm="frozen", stem_pool=numerics.stem_pool,
                            kernels=conv_kernels, bn_eps=bn_eps)
    else:
        backbone = ResNet50(0, norm="batch", stem_pool=numerics.stem_pool, kernels=conv_kernels, bn_eps=bn_eps)
    fpn = FPN(STAGE_OUT_CHANNELS, out_channels=channels, upsample=numerics.fpn_upsample, kernels=conv_kernels)
    rpn_head = RPNHead(channels, config.num_anchors_per_location, conv_kernels)
    box_head = BoxHead(channels, config.roi_box_size, config.box_head_channels, num_classes)
    # The mask head keeps MindSpore's convolutions. In training its RoI count may be a dynamic shape,
    # which an aot op follows only with a C++ shape function and a CustomRegOp registration (a
    # Python out_shape fails at run time); built that way on oneDNN 3 it was no faster in the
    # step on trained weights (BENCHMARKS.md, "The mask head's convolutions on oneDNN 3").
    mask_head = MaskHead(channels, config.mask_head_channels, num_classes)

    anchors = generate_anchors(config.feature_shapes, FPN_STRIDES, config.anchor_scales,
                               config.anchor_ratios, layout=numerics.anchor_layout, input_size=input_size)
    level_counts = anchors_per_level(config.feature_shapes, FPN_STRIDES, config.anchor_scales,
                                     config.anchor_ratios)
    rpn_targets = RPNTargets(anchors, config.rpn_pos_iou_thr, config.rpn_neg_iou_thr,
                             config.rpn_min_pos_iou, config.rpn_num_samples, config.rpn_pos_fraction,
                             RPN_BOX_STDS, seed=config.seed, box_plus_one=numerics.box_plus_one)
    proposal_numerics = dict(box_plus_one=numerics.box_plus_one, clamp_below=numerics.clamp_log_ratio_below,
                             clip_to_input=clip_to_input, filter_small=numerics.filter_small_proposals)
    proposals_train = ProposalGenerator(level_counts, config.rpn_pre_nms_top_k_train,
                                        config.rpn_post_nms_top_k_train, config.rpn_nms_thr,
                                        config.rpn_min_box_size, RPN_BOX_STDS, **proposal_numerics)
    proposals_test = ProposalGenerator(level_counts, config.rpn_pre_nms_top_k_test,
                                       config.rpn_post_nms_top_k_test, config.rpn_nms_thr,
                                       config.rpn_min_box_size, RPN_BOX_STDS, **proposal_numerics)
    rcnn_targets = RCNNTargets(config.rcnn_num_samples, config.rcnn_pos_fraction, config.rcnn_pos_iou_thr,
                               config.rcnn_neg_iou_thr, stds, seed=config.seed + 1,
                               box_plus_one=numerics.box_plus_one,
                               fill_with_negatives=config.rcnn_fill_with_negatives)
    roi_align = dict(strides=FEATURE_STRIDES, alignment=numerics.roi_align, level_rule=numerics.roi_level,
                     kernels=kernels)
    box_roi_align = MultiLevelRoIAlign(config.roi_box_size, config.roi_sampling_ratio, **roi_align)
    mask_roi_align = MultiLevelRoIAlign(config.roi_mask_size, config.roi_sampling_ratio, **roi_align)
    box_postprocess = BoxPostProcessor(num_classes, config.rpn_post_nms_top_k_test, stds,
                                       config.test_score_thr, config.test_nms_thr, config.test_max_per_img,
                                       max(input_size), box_plus_one=numerics.box_plus_one,
                                       clamp_below=numerics.clamp_log_ratio_below,
                                       clip_to_input=clip_to_input,
                                       min_detection_size=numerics.min_detection_size,
                                       candidate_cap=numerics.candidate_cap,
                                       return_sources=numerics.mask_box == "argmax_class")
    # Static rows without a bound: every positive slot (MaskLoss passes them all through).
    rois_per_image = config.mask_rois_per_image
    if static_mask_rows and rois_per_image is None:
        rois_per_image = rcnn_targets.max_positives
    mask_loss = MaskLoss(config.mask_out_size, rcnn_targets.max_positives, config.mask_loss_weight,
                         rois_per_image=rois_per_image)

    net = Mask_Rcnn_Resnet50(backbone, fpn, rpn_head, box_head, mask_head, anchors, rpn_targets,
                             proposals_train, proposals_test, rcnn_targets, box_roi_align, mask_roi_align,
                             box_postprocess, mask_loss, numerics, compute_float16=config.compute_float16,
                             mask_box=numerics.mask_box, static_mask_rows=static_mask_rows)
    if config.compute_float16:
        for name in FLOAT16_CELLS:
            getattr(net, name).to_float(mstype.float16)
    return net
