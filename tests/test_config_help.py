"""--help of the CLIs lists every config key with its type, default and doc (src/config_help.py)."""

import dataclasses
import re

import pytest

from src.config import Config
from src.config_help import key_docs

FIELDS = [f.name for f in dataclasses.fields(Config)]


def test_every_config_field_has_a_doc_parsed_from_its_comments():
    docs = key_docs()
    assert [name for name in FIELDS if not docs.get(name)] == []
    assert docs["img_width"] == "network input width"
    # a block comment above the field, and continuation lines under it
    assert docs["numerics"].startswith("Preset of the network's conventions")
    assert docs["early_stop_patience"].endswith("0 = never; needs eval_interval > 0")
    assert "null or \"\" = off" in docs["compile_cache_dir"]


@pytest.mark.parametrize("cli", ["train", "eval", "predict"])
def test_cli_help_lists_every_config_key_with_type_default_and_doc(cli):
    module = __import__(cli)
    text = module.build_parser().format_help()
    assert '--coco_classes "[background, widget]"' in text
    docs = key_docs()
    for name in FIELDS:
        match = re.search(rf"^  --{name} \((.+?), default (.*)\)\n((?:      .*\n)+)", text, re.M)
        assert match, name
        assert " ".join(match.group(3).split()) == docs[name], name
    assert "  --img_height (int, default 320)" in text
    assert "  --coco_classes (list of str, default [background, book])" in text
    assert "  --mask_rois_per_image (int or null, default null)" in text
    assert "  --keep_ratio (bool, default true)" in text
