"""Look at a data set the way the network will: pictures of augmented samples and a summary.

    python -m src.inspect_data --config_path FineTune/default.yaml [--split train2017] --out DIR
                               [--num 8] [--any_config_key VALUE ...]

Writes to ``DIR``:

- ``sample_<k>_<image id>.png``: N training samples exactly as the network receives them (after
  resize, augmentation and padding: the image column de-normalised, with the ground-truth masks,
  boxes and class names of the mask/box/label columns drawn; padding is black);
- ``summary.json`` (also printed): images, instances per class, instances per image against
  ``max_instance_count`` (how many would be dropped), object sizes at network-input scale
  against the anchor sizes, and warnings with a suggested config change;
- ``object_sizes.png``: histograms of object size (with the anchor sizes) and of instances per image.

Object size is ``sqrt(box width * box height)`` in network-input pixels after the plain
keep-ratio resize (no augmentation), the quantity anchor sizes are compared with.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np

from src.config import FPN_STRIDES, Config, add_config_arguments, config_from_cli
from src.engine.runtime import EXIT_BAD_INPUT, EXIT_OK
from src.transforms import fit_scale, resized_size

LOGGER = logging.getLogger(__name__)

DEFAULT_SAMPLES = 8
# An object under half the smallest anchor side (or over twice the largest) overlaps its best
# anchor with IoU <= 0.25, under the RPN's positive thresholds: it is a poor match.
ANCHOR_MISMATCH_FACTOR = 2.0
# Warn when more than this fraction of the instances is such a poor match.
WARN_FRACTION = 0.25
SIZE_PERCENTILES = (5, 25, 50, 75, 95)


def anchor_sizes(config: Config) -> List[float]:
    """Anchor sides in input pixels over P2..P6: ``scale * stride`` for every scale, sorted."""
    return sorted(scale * stride for stride in FPN_STRIDES for scale in config.anchor_scales)


def input_scale(config: Config, height: int, width: int):
    """(scale_h, scale_w) of the plain resize of an ``height x width`` image into the input."""
    return fit_scale(height, width, config.img_height, config.img_width, config.keep_ratio, config.resize_to)


def _nearest_power_of_two(value: float) -> float:
    return float(2 ** round(math.log2(max(value, 1.0))))


def _format_scales(scales: Sequence[float]) -> str:
    return "[" + ", ".join(f"{s:g}" for s in scales) + "]"


def anchor_advice(sizes: np.ndarray, config: Config) -> List[str]:
    """Warnings with a concrete change of ``anchor_scales`` when many objects miss the anchors.

    Args:
        sizes: [n] object sizes in input pixels.
        config: the run's Config (anchor_scales, input size).

    Returns:
        Zero, one or two one-line warnings.
    """
    if sizes.size == 0:
        return []
    anchors = anchor_sizes(config)
    smallest, largest = anchors[0], anchors[-1]
    small_limit = smallest / ANCHOR_MISMATCH_FACTOR
    large_limit = largest * ANCHOR_MISMATCH_FACTOR
    advice = []
    at = f"{config.img_height}x{config.img_width}"
    small = sizes[sizes < small_limit]
    if small.size > WARN_FRACTION * sizes.size:
        # The smallest anchor should be about the typical small object: scale = size / P2 stride.
        new_scale = max(_nearest_power_of_two(float(np.median(small))) / FPN_STRIDES[0], 1.0)
        scales = sorted({new_scale} | set(config.anchor_scales))
        if new_scale * FPN_STRIDES[-1] * ANCHOR_MISMATCH_FACTOR >= float(np.percentile(sizes, 95)):
            scales = [new_scale]  # the new anchors alone still cover the large objects
        advice.append(f"{100 * small.size / sizes.size:.0f}% of instances are under {small_limit:g} px at {at}; "
                      f"the smallest anchor is {smallest:g} px: try anchor_scales: {_format_scales(scales)}")
    large = sizes[sizes > large_limit]
    if large.size > WARN_FRACTION * sizes.size:
        new_scale = _nearest_power_of_two(float(np.median(large))) / FPN_STRIDES[-1]
        scales = sorted({new_scale} | set(config.anchor_scales))
        advice.append(f"{100 * large.size / sizes.size:.0f}% of instances are over {large_limit:g} px at {at}; "
                      f"the largest anchor is {largest:g} px: try anchor_scales: {_format_scales(scales)}")
    return advice


def _fraction(flags: np.ndarray) -> float:
    return round(float(flags.mean()), 3) if flags.size else 0.0


def summarize(dataset, config: Config):
    """The statistics of one split (see the module docstring).

    Args:
        dataset: a src.dataset.COCOSubDataset.
        config: the run's Config.

    Returns:
        (summary dict, JSON-serialisable; sizes [n] f64 object sizes in input pixels;
        counts [images] i64 instances per image before the max_instance_count cut)
    """
    sizes, per_image = [], []
    per_class = {name: 0 for name in dataset.class_names}
    crowd = 0
    for index in range(len(dataset)):
        info = dataset.get_image_info(index)
        rows = dataset.uncut_rows[info["id"]]
        real = rows[rows[:, 5] == 0]
        crowd += int((rows[:, 5] > 0).sum())
        per_image.append(len(real))
        for label in real[:, 4].astype(int):
            per_class[dataset.class_names[label - 1]] += 1
        scale_h, scale_w = input_scale(config, info["height"], info["width"])
        widths = (real[:, 2] - real[:, 0]) * scale_w
        heights = (real[:, 3] - real[:, 1]) * scale_h
        sizes.extend(np.sqrt(widths * heights).tolist())
    sizes_arr = np.asarray(sizes, np.float64)
    counts = np.asarray(per_image, np.int64)
    limit = config.max_instance_count
    anchors = anchor_sizes(config)
    small_limit, large_limit = anchors[0] / ANCHOR_MISMATCH_FACTOR, anchors[-1] * ANCHOR_MISMATCH_FACTOR
    summary: Dict[str, Any] = {
        "ann_file": dataset.ann_file,
        "split": dataset.split,
        "input_size": [config.img_height, config.img_width],
        "images": len(dataset),
        "instances": int(counts.sum()),
        "crowd_regions": crowd,
        "instances_per_class": per_class,
        "instances_per_image": {
            "mean": round(float(counts.mean()), 2) if counts.size else 0.0,
            "max": int(counts.max()) if counts.size else 0,
            "max_instance_count": limit,
            "images_over_limit": int((counts > limit).sum()),
            "instances_dropped": int(np.maximum(counts - limit, 0).sum()),
        },
        "object_size_px": ({f"p{p}": round(float(np.percentile(sizes_arr, p)), 1) for p in SIZE_PERCENTILES}
                           if sizes_arr.size else {}),
        "anchor_sizes_px": sorted(set(anchors)),
        "too_small_below_px": small_limit,
        "too_large_above_px": large_limit,
        "fraction_too_small": _fraction(sizes_arr < small_limit),
        "fraction_too_large": _fraction(sizes_arr > large_limit),
        "annotation_defects": {k: v for k, v in dataset.defect_counts.items() if v},
    }
    over = summary["instances_per_image"]
    warnings = anchor_advice(sizes_arr, config)
    if over["images_over_limit"]:
        warnings.append(f"{over['images_over_limit']} images have more than max_instance_count={limit} "
                        f"instances ({over['instances_dropped']} dropped, the smallest): "
                        f"try max_instance_count: {over['max']}")
    summary["warnings"] = warnings
    return summary, sizes_arr, counts


def plot_histograms(sizes: np.ndarray, counts: np.ndarray, anchors: Sequence[float], limit: int,
                    path: str) -> None:
    """Object-size histogram (log2 bins, anchor sizes as lines) and instances-per-image histogram."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (ax_size, ax_count) = plt.subplots(1, 2, figsize=(11, 4))
    low = min(float(sizes.min()) if sizes.size else 1.0, min(anchors)) / 2
    high = max(float(sizes.max()) if sizes.size else 1.0, max(anchors)) * 2
    bins = np.logspace(math.log2(max(low, 0.5)), math.log2(high), 30, base=2)
    ax_size.hist(sizes, bins=bins, color="#4c72b0")
    ax_size.set_xscale("log", base=2)
    for k, size in enumerate(sorted(set(anchors))):
        ax_size.axvline(size, color="#c44e52", linestyle="--", label="anchor sizes" if k == 0 else None)
    ax_size.set_xlabel("object size sqrt(w*h), input pixels")
    ax_size.set_ylabel("instances")
    ax_size.legend()
    ax_count.hist(counts, bins=np.arange(0, max(int(counts.max()) if counts.size else 0, limit) + 2) - 0.5,
                  color="#55a868")
    ax_count.axvline(limit + 0.5, color="#c44e52", linestyle="--", label="max_instance_count")
    ax_count.set_xlabel("instances per image")
    ax_count.set_ylabel("images")
    ax_count.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def draw_network_sample(columns, config: Config) -> np.ndarray:
    """The padded input of one training sample with its ground truth drawn.

    Args:
        columns: one sample's (image [3, H, W] f32, image_shape, box [N, 4], label [N], instance_valid [N],
            mask [N, H, W]) as in src/batch.py.

    Returns:
        [H, W, 3] uint8 RGB.
    """
    from src.batch import CROWD_LABEL
    from src.viz.visualize import overlay

    image, image_shape, box, label, _valid, mask = columns
    std, mean = np.asarray(config.img_std, np.float32), np.asarray(config.img_mean, np.float32)
    rgb = image.transpose(1, 2, 0) * std + mean
    new_h, new_w = resized_size(image_shape)
    rgb[new_h:] = 0  # the padding is zero after normalisation: show it black
    rgb[:, new_w:] = 0
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    present = label != 0
    names = list(config.coco_classes) + ["crowd"]
    labels = np.where(label[present] == CROWD_LABEL, len(config.coco_classes), label[present])
    # Ground truth has no score: every caption reads "name 1.00".
    return overlay(np.ascontiguousarray(rgb), mask[present].astype(bool), box[present], labels,
                   np.ones(int(present.sum()), np.float32), names)


def inspect(config: Config, split: Optional[str], out_dir: str, num: int) -> Dict[str, Any]:
    """Write the pictures, summary.json and object_sizes.png for ``split``; return the summary."""
    from src.data_sources import TrainSource
    from src.dataset import COCOSubDataset

    if split:
        config = config.replace(train_data_type=split)
    dataset = COCOSubDataset(None, is_training=True, config=config)
    os.makedirs(out_dir, exist_ok=True)
    source = TrainSource(dataset, config)
    for k in range(min(num, len(dataset))):
        picture = draw_network_sample(source[k], config)
        image_id = dataset.image_ids[k]
        cv2.imwrite(os.path.join(out_dir, f"sample_{k}_{image_id}.png"), picture[:, :, ::-1])
    summary, sizes, counts = summarize(dataset, config)
    plot_histograms(sizes, counts, anchor_sizes(config), config.max_instance_count,
                    os.path.join(out_dir, "object_sizes.png"))
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--split", default=None, help="split to inspect (default: the config's train_data_type)")
    parser.add_argument("--out", required=True, help="folder for the pictures, summary.json and object_sizes.png")
    parser.add_argument("--num", type=int, default=DEFAULT_SAMPLES, help="samples to draw")
    args, config = config_from_cli(parser, argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from src.dataset import DatasetError

    try:
        summary = inspect(config, args.split, args.out, args.num)
    except DatasetError as e:
        LOGGER.error("%s", e)
        return EXIT_BAD_INPUT
    print(json.dumps(summary, indent=2))
    for warning in summary["warnings"]:
        LOGGER.warning("%s", warning)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
