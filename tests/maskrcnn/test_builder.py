"""Tests of src/maskrcnn/builder.py: the config reaches the stages (no graph is compiled here)."""

import mindspore as ms
import pytest

from src.config import Config, load_config
from src.maskrcnn.builder import build_model
from src.maskrcnn.resnet50 import STAGE_OUT_CHANNELS

SMALL = dict(img_height=64, img_width=96, fpn_channels=8, box_head_channels=16, mask_head_channels=8,
             rcnn_num_samples=16, test_max_per_img=7, test_score_thr=0.2, test_nms_thr=0.4,
             roi_mask_size=5, mask_loss_weight=0.5)


def _config(**changes):
    return load_config(overrides=dict(SMALL, **changes))


@pytest.mark.parametrize("device, for_export, kernel", [("CPU", False, "cpu"), ("CPU", True, "native"),
                                                        ("GPU", False, "native")])
def test_op_kernels_comes_from_the_config_not_the_context(device, for_export, kernel):
    previous = ms.get_context("device_target")
    ms.set_context(device_target="CPU")  # the context never decides: a GPU config still gets "native"
    try:
        net = build_model(_config(device_target=device), for_export=for_export)
    finally:
        ms.set_context(device_target=previous)
    assert net.box_roi_align.kernel == net.mask_roi_align.kernel == kernel
    # The stem max-pool and the FPN's upsampling follow the same choice.
    assert type(net.backbone.maxpool).__name__ == ("CpuMaxPool2d" if kernel == "cpu" else "MaxPool2d")
    assert net.fpn.cpu_upsample == (kernel == "cpu")


def test_stage_arguments_come_from_the_config():
    config = _config()
    net = build_model(config)
    assert [conv.in_channels for conv in net.fpn.lateral_convs] == list(STAGE_OUT_CHANNELS)
    assert (net.box_roi_align.out_size, net.mask_roi_align.out_size) == (7, 5)
    assert net.mask_loss.mask_size == config.mask_out_size == 10
    assert net.mask_loss.loss_weight == 0.5
    assert net.mask_loss.rois_per_image is None  # null: the real positives only
    assert net.mask_loss.max_positives == net.rcnn_targets.max_positives == 4
    assert build_model(_config(mask_rois_per_image=3)).mask_loss.rois_per_image == 3
    post = net.box_postprocess
    assert (post.num_classes, post.max_per_image, post.score_thr) == (config.num_classes, 7, 0.2)
    assert post.class_offset == 97.0  # larger input side + 1
    assert post.num_candidates == min(config.rpn_post_nms_top_k_test * (config.num_classes - 1), 1000)


def test_float16_config_converts_the_documented_cells():
    from src.maskrcnn.target import built_dtypes, planned_dtypes

    config = _config(compute_dtype="float16")
    assert built_dtypes(build_model(config)) == planned_dtypes(config)
    assert set(built_dtypes(build_model(_config())).values()) == {"float32"}


@pytest.mark.parametrize("value", [False, True])
def test_rcnn_fill_with_negatives_reaches_the_stage2_sampler(value):
    config = Config().replace(img_height=64, img_width=64, rpn_pre_nms_top_k_train=32, rpn_post_nms_top_k_train=16,
                              rpn_pre_nms_top_k_test=32, rpn_post_nms_top_k_test=16, rcnn_num_samples=8,
                              test_max_per_img=4, rcnn_fill_with_negatives=value)
    assert build_model(config).rcnn_targets.fill_with_negatives is value


@pytest.mark.parametrize("device, for_export, choice, expected", [
    ("CPU", False, "auto", "dynamic"), ("CPU", True, "auto", "static"), ("Ascend", False, "auto", "static"),
    ("GPU", False, "auto", "static"), ("Ascend", False, "dynamic", "dynamic"), ("CPU", False, "static", "static")])
def test_mask_rows_are_static_off_the_cpu_and_for_export_unless_the_recipe_says(device, for_export, choice, expected):
    from src.maskrcnn.target import mask_rows

    assert mask_rows(_config(device_target=device, mask_rows=choice), for_export) == expected


@pytest.mark.parametrize("device", ["CPU", "Ascend"])
def test_the_builder_passes_the_mask_rows_to_the_stages(device):
    net = build_model(_config(device_target=device))
    static = device == "Ascend"
    assert net.static_mask_rows == static
    # Training: static rows run every positive slot (null bound); dynamic keeps the real positives.
    assert net.mask_loss.rois_per_image == (net.mask_loss.max_positives if static else None)
    if static:  # a bound the recipe sets is static either way and stays
        assert build_model(_config(device_target=device, mask_rois_per_image=3)).mask_loss.rois_per_image == 3


def test_the_mask_rows_choice_is_logged_once_naming_target_and_choice(caplog):
    from src.maskrcnn import target

    config = _config(device_target="GPU")
    target._LOGGED_MASK_ROWS.discard(("GPU", "static"))  # pylint: disable=protected-access
    with caplog.at_level("INFO", logger="src.maskrcnn.target"):
        build_model(config)
        assert target.mask_rows(config) == "static"
    lines = [r.getMessage() for r in caplog.records if r.name == "src.maskrcnn.target"]
    assert lines == ["mask rows on GPU: static (mask_rows: auto)"]
