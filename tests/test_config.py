import pytest
import yaml

from src.config import (Config, ConfigError, load_config, parse_overrides, DEFAULT_CONFIG_PATH, from_dict,
                        config_from_cli, add_config_arguments)


def test_default_recipe_loads_and_derives_values():
    cfg = load_config()
    assert cfg.coco_classes[0] == "background"
    assert cfg.num_classes == len(cfg.coco_classes)
    h, w = cfg.img_height, cfg.img_width
    assert cfg.feature_shapes[0] == (h // 4, w // 4)
    assert cfg.num_anchors == sum(a * b for a, b in cfg.feature_shapes) * 3


def test_coco_book_recipe_matches_the_tutorial():
    cfg = load_config("FineTune/coco_book.yaml")
    assert cfg.coco_classes == ["background", "book"]
    assert (cfg.img_height, cfg.img_width) == (768, 1280)
    assert cfg.train_data_type == "train2017"
    assert cfg.instance_set == "annotations/instances_{}.json"
    # The model zoo typed this number by hand (num_bboxes: 245520); here it is derived.
    assert cfg.num_anchors == 245520
    assert cfg.feature_shapes == [(192, 320), (96, 160), (48, 80), (24, 40), (12, 20)]


def test_unknown_key_in_yaml_is_an_error_naming_it(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"img_height": 256, "img_hieght": 256}))
    with pytest.raises(ConfigError, match="unknown key 'img_hieght'"):
        load_config(str(path))


def test_wrong_type_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match="key 'batch_size' must be an integer, got '2'"):
        load_config(overrides={"batch_size": "2"})
    with pytest.raises(ConfigError, match=r"key 'coco_classes\[1\]' must be a string"):
        load_config(overrides={"coco_classes": ["background", 3]})


def test_invalid_values_are_rejected():
    with pytest.raises(ConfigError, match="'img_height' = 300 must be a positive multiple of 32"):
        load_config(overrides={"img_height": 300})
    with pytest.raises(ConfigError, match="'coco_classes'.*must start with 'background'"):
        load_config(overrides={"coco_classes": ["book"]})
    with pytest.raises(ConfigError, match="'device_target' = 'TPU'"):
        load_config(overrides={"device_target": "TPU"})


def test_cli_overrides_are_typed_by_yaml():
    overrides = parse_overrides(["--img_height", "256", "--coco_classes", "[background, book]",
                                 "--base_lr=0.005", "--keep_ratio", "false"])
    assert overrides == {"img_height": 256, "coco_classes": ["background", "book"], "base_lr": 0.005,
                         "keep_ratio": False}
    cfg = load_config(DEFAULT_CONFIG_PATH, overrides)
    assert cfg.img_height == 256 and cfg.base_lr == 0.005 and cfg.keep_ratio is False


def test_scientific_notation_is_a_number_in_yaml_and_on_the_command_line(tmp_path):
    assert parse_overrides(["--base_lr", "1e-4", "--weight_decay", "5E-5", "--loss_scale", "1e3"]) == {
        "base_lr": 1e-4, "weight_decay": 5e-5, "loss_scale": 1000.0}
    path = tmp_path / "sci.yaml"
    path.write_text("base_lr: 2e-3\ncoco_root: 1e3data\n")
    cfg = load_config(str(path))
    assert cfg.base_lr == 0.002 and cfg.coco_root == "1e3data"


def test_cli_unknown_override_is_an_error():
    with pytest.raises(ConfigError, match="unknown key 'lr'"):
        parse_overrides(["--lr", "0.1"])
    with pytest.raises(ConfigError, match="option '--base_lr' has no value"):
        parse_overrides(["--base_lr"])


def test_config_from_cli_reports_bad_override_through_argparse(capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="x")
    add_config_arguments(parser)
    with pytest.raises(SystemExit) as exit_info:
        config_from_cli(parser, ["--batch_size", "two"])
    assert exit_info.value.code == 2
    assert "key 'batch_size' must be an integer" in capsys.readouterr().err


def test_config_is_frozen_and_replace_validates():
    cfg = load_config()
    with pytest.raises(Exception):
        cfg.img_height = 64  # frozen dataclass
    smaller = cfg.replace(img_height=128, img_width=192)
    assert smaller.feature_shapes[0] == (32, 48)
    assert cfg.img_height == load_config().img_height  # the original is unchanged
    with pytest.raises(ConfigError):
        cfg.replace(img_width=100)


def test_from_dict_rejects_non_mapping():
    with pytest.raises(ConfigError, match="expected a mapping"):
        from_dict([1, 2])


def test_mask_rois_per_image_is_null_or_a_bound_within_the_positive_slots():
    # default.yaml: rcnn_num_samples 128 x rcnn_pos_fraction 0.25 -> P_max 32
    assert load_config().mask_rois_per_image is None
    assert load_config(overrides={"mask_rois_per_image": 32}).mask_rois_per_image == 32
    assert load_config(overrides=parse_overrides(["--mask_rois_per_image", "null"])).mask_rois_per_image is None
    assert load_config(overrides=parse_overrides(["--mask_rois_per_image", "8"])).mask_rois_per_image == 8
    for bad in (0, 33):
        with pytest.raises(ConfigError, match=rf"'mask_rois_per_image' = {bad} must be null or between 1 and "
                                              r"int\(rcnn_num_samples \* rcnn_pos_fraction\) = 32"):
            load_config(overrides={"mask_rois_per_image": bad})
    with pytest.raises(ConfigError, match="key 'mask_rois_per_image' must be an integer, got 2.5"):
        load_config(overrides={"mask_rois_per_image": 2.5})
    with pytest.raises(ConfigError, match="'rcnn_pos_fraction' = 0.25 leaves no positive RoI slot"):
        load_config(overrides={"rcnn_num_samples": 3})


def test_rcnn_fill_with_negatives_override_and_type_check():
    assert Config().rcnn_fill_with_negatives is False
    config = load_config(None, parse_overrides(["--rcnn_fill_with_negatives", "true"]))
    assert config.rcnn_fill_with_negatives is True
    with pytest.raises(ConfigError, match="rcnn_fill_with_negatives"):
        load_config(None, {"rcnn_fill_with_negatives": "sometimes"})
