"""Look at a data set the way the network will: pictures of augmented samples and a summary.

    python -m src.inspect_data --config_path FineTune/default.yaml [--split train2017] --out DIR
                               [--num 8] [--write_recipe my.yaml [--weights CKPT]]
                               [--any_config_key VALUE ...]

Writes to ``DIR``:

- ``sample_<k>_<image id>.png``: N training samples exactly as the network receives them (after
  resize, augmentation and padding: the image column de-normalised, with the ground-truth masks,
  boxes and class names of the mask/box/label columns drawn; padding is black);
- ``summary.json`` (also printed): images, instances per class, instances per image against
  ``max_instance_count`` (how many would be dropped), object sizes at network-input scale
  against the anchor sizes, and warnings with a suggested config change;
- ``object_sizes.png``: histograms of object size (with the anchor sizes) and of instances per image.

Every image is decoded once (those that cannot be are counted in the summary), and the summary
gives the **anchor coverage**: the fraction of boxes whose best anchor reaches the RPN's
``rpn_min_pos_iou`` (below it a box gets no positive anchor at all), and the fraction reaching
``rpn_pos_iou_thr``.

``--write_recipe FILE`` writes a config sized to the data (:func:`write_recipe`): the classes of
the annotation file, ``max_instance_count`` and ``test_max_per_img`` from the most crowded
image, the anchor scale with the best coverage and, when no scale reaches RECIPE_COVERAGE, a
larger input size; a schedule sized to the number of images; and, with ``--weights``, the
numerics preset those weights need.

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
# The recipe raises the input size until this fraction of the boxes gets a positive anchor.
RECIPE_COVERAGE = 0.9
RECIPE_ANCHOR_SCALES = (1.0, 2.0, 4.0, 8.0, 16.0)  # one scale per recipe: the head keeps its shape
RECIPE_SIZE_FACTORS = (1.0, 1.5, 2.0, 3.0, 4.0)  # of the base input size
RECIPE_MAX_SIDE = 1344
# Schedule: about this many optimizer steps, within these epoch bounds.
RECIPE_TARGET_STEPS = 2000
RECIPE_EPOCHS = (4, 200)
RECIPE_MAX_WARMUP_STEPS = 200


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


def _box_iou(box: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU of each of [n, 4] boxes with the matching row of [n, 4] anchors."""
    iw = np.clip(np.minimum(box[:, 2], anchors[:, 2]) - np.maximum(box[:, 0], anchors[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[:, 3], anchors[:, 3]) - np.maximum(box[:, 1], anchors[:, 1]), 0, None)
    inter = iw * ih
    union = ((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
             + (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1]) - inter)
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def best_anchor_iou(boxes: np.ndarray, config: Config) -> np.ndarray:
    """The best IoU of each box with the network's anchors (all FPN levels, every cell).

    For one anchor shape the overlap only shrinks as the anchor's centre moves away from the
    box's, so the best anchor of each shape and level is the one whose cell centre is nearest
    the box centre (inside the grid): n * levels * shapes IoUs instead of n * all anchors.

    Args:
        boxes: [n, 4] (x1, y1, x2, y2) in network-input pixels.
        config: anchor_scales, anchor_ratios, input size and the numerics preset's anchor layout.

    Returns:
        [n] float64.
    """
    from src.maskrcnn.anchors import cell_anchors
    from src.maskrcnn.numerics import get_numerics

    layout = get_numerics(config.numerics).anchor_layout
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    best = np.zeros(len(boxes))
    centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    offset = 0.5 if layout == "centred" else 0.0
    for (height, width), stride in zip(config.feature_shapes, FPN_STRIDES):
        step_y = step_x = stride
        if layout == "torchvision":
            step_y, step_x = config.img_height // height, config.img_width // width
        for shape in cell_anchors(stride, config.anchor_scales, config.anchor_ratios, layout):
            shape_cx, shape_cy = (shape[0] + shape[2]) / 2, (shape[1] + shape[3]) / 2
            col = np.clip(np.rint((centre_x - shape_cx) / step_x - offset), 0, width - 1)
            row = np.clip(np.rint((centre_y - shape_cy) / step_y - offset), 0, height - 1)
            px, py = (col + offset) * step_x, (row + offset) * step_y
            anchors = np.stack([px + shape[0], py + shape[1], px + shape[2], py + shape[3]], axis=1)
            best = np.maximum(best, _box_iou(boxes, anchors))
    return best


def input_boxes(dataset, config: Config) -> np.ndarray:
    """[n, 4] boxes of the real instances of every kept image, in input pixels (plain resize)."""
    boxes = []
    for index in range(len(dataset)):
        info = dataset.get_image_info(index)
        rows = dataset.uncut_rows[info["id"]]
        real = rows[rows[:, 5] == 0]
        scale_h, scale_w = input_scale(config, info["height"], info["width"])
        boxes.append(real[:, :4] * np.array([scale_w, scale_h, scale_w, scale_h], np.float32))
    return np.concatenate(boxes, axis=0).astype(np.float64) if boxes else np.zeros((0, 4))


def anchor_coverage(dataset, config: Config) -> Dict[str, Any]:
    """Fractions of the boxes whose best anchor reaches rpn_min_pos_iou and rpn_pos_iou_thr."""
    best = best_anchor_iou(input_boxes(dataset, config), config)
    return {"min_pos_iou": config.rpn_min_pos_iou, "fraction": _fraction(best >= config.rpn_min_pos_iou),
            "pos_iou_thr": config.rpn_pos_iou_thr, "fraction_at_pos_thr": _fraction(best >= config.rpn_pos_iou_thr)}


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
        "anchor_coverage": anchor_coverage(dataset, config),
        "annotation_defects": {k: v for k, v in dataset.defect_counts.items() if v},
    }
    over = summary["instances_per_image"]
    warnings = anchor_advice(sizes_arr, config)
    coverage = summary["anchor_coverage"]
    if coverage["fraction"] < RECIPE_COVERAGE:
        warnings.append(f"only {100 * coverage['fraction']:.0f}% of the boxes reach IoU {coverage['min_pos_iou']:g} "
                        f"with some anchor at {config.img_height}x{config.img_width}: the others get no positive "
                        f"anchor; --write_recipe proposes anchor scales and an input size")
    if over["max"] > config.test_max_per_img:
        warnings.append(f"the most crowded image has {over['max']} instances but test_max_per_img is "
                        f"{config.test_max_per_img}: even a perfect model misses the rest; try "
                        f"test_max_per_img: {2 * over['max']}")
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


def decode_all(dataset) -> Dict[str, Any]:
    """Decode every image once; {"decoded": n, "unreadable": [paths]}."""
    from src.dataset import DatasetError

    unreadable = []
    for index in range(len(dataset)):
        try:
            dataset.decode(index)
        except DatasetError:
            unreadable.append(dataset.get_image_info(index)["file_name"])
    return {"decoded": len(dataset) - len(unreadable), "unreadable": unreadable}


def classes_of_file(config: Config) -> Config:
    """``config`` with coco_classes = background + every category of the training annotation file."""
    from src.annotations import read_annotations

    _, ann_file = config.split_paths(config.train_data_type)
    names = read_annotations(ann_file).class_names
    return config.replace(coco_classes=["background"] + names)


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
    summary["images_decoded"] = decode_all(dataset)
    plot_histograms(sizes, counts, anchor_sizes(config), config.max_instance_count,
                    os.path.join(out_dir, "object_sizes.png"))
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    return summary


# ---------------------------------------------------------------------------------------------
# A recipe sized to the data
# ---------------------------------------------------------------------------------------------

def weights_numerics(path: str) -> str:
    """The numerics preset the weights in ``path`` need (stored in converted files, else from the
    kind of checkpoint their parameter names show)."""
    from src.checkpoint.convert import detect_checkpoint_kind
    from src.checkpoint.io import read_weights
    from src.checkpoint.names import NUMERICS_FOR_SOURCE, NUMERICS_KEY

    params, metadata = read_weights(path)
    if metadata.get(NUMERICS_KEY):
        return metadata[NUMERICS_KEY]
    return NUMERICS_FOR_SOURCE.get(detect_checkpoint_kind(params, path), Config().numerics)


def _round_side(value: float) -> int:
    from src.maskrcnn.geometry import INPUT_SIZE_MULTIPLE

    return int(min(RECIPE_MAX_SIDE, max(INPUT_SIZE_MULTIPLE, round(value / INPUT_SIZE_MULTIPLE) * INPUT_SIZE_MULTIPLE)))


def propose_geometry(dataset, config: Config) -> Dict[str, Any]:
    """Input size and anchor scale for the data: the smallest input (factors RECIPE_SIZE_FACTORS
    of the configured one) at which some single scale of RECIPE_ANCHOR_SCALES gives RECIPE_COVERAGE
    of the boxes a positive anchor, with the scale of best coverage there (the configured scale on
    ties); the best pair tried when none does.

    Returns:
        {"img_height", "img_width", "anchor_scales", "coverage", "coverage_at_base"}.
    """
    base = anchor_coverage(dataset, config)["fraction"]
    best = None
    for factor in RECIPE_SIZE_FACTORS:
        height, width = _round_side(config.img_height * factor), _round_side(config.img_width * factor)
        for scale in RECIPE_ANCHOR_SCALES:
            trial = config.replace(img_height=height, img_width=width, anchor_scales=[scale])
            fraction = anchor_coverage(dataset, trial)["fraction"]
            key = (fraction, scale in config.anchor_scales, -abs(math.log2(scale / 8.0)))
            if best is None or key > best[0]:
                best = (key, {"img_height": height, "img_width": width, "anchor_scales": [scale],
                              "coverage": fraction, "coverage_at_base": base})
        if best[1]["coverage"] >= RECIPE_COVERAGE or RECIPE_MAX_SIDE in (height, width):
            break
    return best[1]


def recipe_values(dataset, config: Config, numerics: Optional[str] = None):
    """(the keys a recipe sets for the data of ``dataset`` (see the module docstring), what
    :func:`propose_geometry` found)."""
    geometry = propose_geometry(dataset, config)
    counts = [len(dataset.uncut_rows[image_id]) for image_id in dataset.image_ids]
    real = [int((dataset.uncut_rows[image_id][:, 5] == 0).sum()) for image_id in dataset.image_ids]
    steps_per_epoch = max(len(dataset) // config.batch_size, 1)
    epochs = int(min(max(math.ceil(RECIPE_TARGET_STEPS / steps_per_epoch), RECIPE_EPOCHS[0]), RECIPE_EPOCHS[1]))
    values = {
        "coco_classes": list(config.coco_classes),
        "max_instance_count": max(counts + [1]),
        "test_max_per_img": max(config.test_max_per_img, 2 * max(real + [1])),
        "img_height": geometry["img_height"], "img_width": geometry["img_width"],
        "anchor_scales": geometry["anchor_scales"],
        "epoch_size": epochs,
        "lr_schedule": "cosine",
        "warmup_steps": min(RECIPE_MAX_WARMUP_STEPS, epochs * steps_per_epoch // 10),
    }
    if numerics:
        values["numerics"] = numerics
    return values, geometry


def write_recipe(path: str, config: Config, config_path: str, numerics: Optional[str] = None) -> Dict[str, Any]:
    """Write a YAML recipe sized to the training data of ``config`` to ``path``; return its values.

    The recipe holds the keys of ``config`` that differ from the defaults plus the sized ones;
    the data paths are written relative to the recipe's folder (where a config file's paths
    are read from).
    """
    import yaml

    from src.config import DATA_PATH_KEYS
    from src.dataset import COCOSubDataset

    config = classes_of_file(config)
    dataset = COCOSubDataset(None, is_training=True, config=config)
    sized, geometry = recipe_values(dataset, config, numerics)
    values = {k: v for k, v in config.to_dict().items() if v != getattr(Config(), k)}
    values.update(sized)
    values["run_dir"] = f"FineTune/runs/{os.path.splitext(os.path.basename(path))[0]}"
    folder = os.path.dirname(os.path.abspath(path))
    for key in DATA_PATH_KEYS:
        if values.get(key):
            values[key] = os.path.relpath(values[key], folder)
    header = (f"# Recipe sized to {len(dataset)} training images of {dataset.ann_file}\n"
              f"# by python -m src.inspect_data --write_recipe (base: {config_path}).\n"
              f"# Anchor coverage (boxes whose best anchor reaches IoU {config.rpn_min_pos_iou:g}): "
              f"{geometry['coverage_at_base']:.3f} at the base {config.img_height}x{config.img_width}, "
              f"{geometry['coverage']:.3f} with these settings.\n"
              f"# Data paths are relative to this file's folder; every key is documented in src/config.py.\n")
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(header)
        yaml.safe_dump(values, handle, sort_keys=False, default_flow_style=None)
    return dict(values, coverage=geometry["coverage"], coverage_at_base=geometry["coverage_at_base"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--split", default=None, help="split to inspect (default: the config's train_data_type)")
    parser.add_argument("--out", required=True, help="folder for the pictures, summary.json and object_sizes.png")
    parser.add_argument("--num", type=int, default=DEFAULT_SAMPLES, help="samples to draw")
    parser.add_argument("--write_recipe", default=None, metavar="YAML",
                        help="also write a config sized to the data (classes, instance counts, input size, "
                             "anchor scale, schedule)")
    parser.add_argument("--weights", default=None,
                        help="with --write_recipe: the weights you will train from (sets their numerics preset)")
    args, config = config_from_cli(parser, argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from src.checkpoint.io import CheckpointError
    from src.dataset import DatasetError

    try:
        if args.write_recipe:
            config = classes_of_file(config.replace(train_data_type=args.split) if args.split else config)
        summary = inspect(config, args.split, args.out, args.num)
        recipe = None
        if args.write_recipe:
            numerics = weights_numerics(args.weights) if args.weights else None
            recipe = write_recipe(args.write_recipe, config, args.config_path, numerics)
    except (DatasetError, CheckpointError) as e:
        LOGGER.error("%s", e)
        return EXIT_BAD_INPUT
    print(json.dumps(summary, indent=2))
    for warning in summary["warnings"]:
        LOGGER.warning("%s", warning)
    coverage = summary["anchor_coverage"]
    print(f"anchor coverage at {config.img_height}x{config.img_width}: {coverage['fraction']:.3f} of "
          f"{summary['instances']} boxes reach IoU {coverage['min_pos_iou']:g} with some anchor "
          f"({coverage['fraction_at_pos_thr']:.3f} reach {coverage['pos_iou_thr']:g})")
    if recipe:
        print(f"recipe: {os.path.abspath(args.write_recipe)} (input {recipe['img_height']}x{recipe['img_width']}, "
              f"anchor_scales {recipe['anchor_scales']}, coverage {recipe['coverage']:.3f})")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
