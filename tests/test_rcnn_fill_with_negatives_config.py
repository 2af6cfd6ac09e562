"""Config key rcnn_fill_with_negatives reaches stage-2 sampling (RCNNTargets; its behaviour: test_roi_heads.py)."""

import pytest

from src.config import Config, ConfigError, load_config, parse_overrides


@pytest.mark.parametrize("value", [False, True])
def test_key_reaches_the_stage2_sampler(value):
    from src.maskrcnn.builder import build_model

    config = Config().replace(img_height=64, img_width=64, rpn_pre_nms_top_k_train=32, rpn_post_nms_top_k_train=16,
                              rpn_pre_nms_top_k_test=32, rpn_post_nms_top_k_test=16, rcnn_num_samples=8,
                              test_max_per_img=4, rcnn_fill_with_negatives=value)
    assert build_model(config).rcnn_targets.fill_with_negatives is value


def test_command_line_override_and_type_check():
    assert Config().rcnn_fill_with_negatives is False
    config = load_config(None, parse_overrides(["--rcnn_fill_with_negatives", "true"]))
    assert config.rcnn_fill_with_negatives is True
    with pytest.raises(ConfigError, match="rcnn_fill_with_negatives"):
        load_config(None, {"rcnn_fill_with_negatives": "sometimes"})
