"""torchvision's Mask R-CNN on this project's data and settings: the peer side of bench_peer.py.

Runs with a Python that has torch, torchvision, pycocotools, opencv-python-headless and NumPy
(never a project requirement; see bench_peer.py for how to create one). bench_peer.py starts it
with a settings JSON written from the project's config (``--settings``), so that every number
(canvas, normalisation, sample counts, optimiser, schedule, flip) comes from one place:

    PEER_PYTHON benchmarks/peer_torchvision.py train --settings S.json --out DIR --steps N
        [--schedule_steps N] [--evaluate] [--profile_steps K]
    PEER_PYTHON benchmarks/peer_torchvision.py eval_speed --settings S.json --out DIR [--num_images 30]

``train`` writes ``DIR/losses.csv`` (one row per finished step, flushed: ``epoch, step, total,``
torchvision's five losses, ``lr, step_seconds``) and, with ``--evaluate``, evaluates on the val
split afterwards; with ``--profile_steps K`` the last K steps run under ``torch.profiler`` and
``DIR/kernels.json`` receives ``[[op name, self CPU ms per step], ...]``. Both modes print one
JSON line as their last stdout line.

The model is ``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)``: random init,
trainable BatchNorm with batch statistics, all five backbone stages trained (what the project
does from random init). Its ``GeneralizedRCNNTransform`` is given the project's canvas: a
keep-ratio resize to fit inside ``img_height x img_width`` (the project's size rule), then
padding bottom/right to exactly that canvas (torchvision pads to the batch's largest image
rounded to ``size_divisible``, and its min/max-size rule differs from the project's for
portrait images on a landscape canvas). COCO metrics are computed as the project's
evaluator does: configured categories, all val images, ``maxDets = [1, 10, test_max_per_img]``,
masks pasted into the original image and thresholded at ``mask_thr`` (``>=``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import random
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

PROCESS_START = time.time()
# Strides of P2..P6 (torchvision's FPN levels '0'..'3' and 'pool').
FPN_STRIDES = (4, 8, 16, 32, 64)
LOSS_COLUMNS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")
EXIT_OK, EXIT_TRAINING_STOPPED, EXIT_BAD_INPUT = 0, 1, 2


# ---- pure helpers (no torch; unit-tested against the project's own code) ---------------------

def keep_ratio_size(height: int, width: int, canvas_height: int, canvas_width: int) -> Tuple[int, int]:
    """Size of an image resized as large as possible inside the canvas, keeping its aspect ratio.

    The project's rule (src/transforms.py ``rescale_keep_ratio``): one factor
    ``min(canvas_height / height, canvas_width / width)`` for both sides, rounded, at least 1 px
    and at most the canvas.

    Args:
        height, width: the original image size in pixels.
        canvas_height, canvas_width: the network input (``img_height x img_width``).

    Returns:
        (new_height, new_width).
    """
    scale = min(canvas_height / height, canvas_width / width)
    new_height = min(max(int(round(height * scale)), 1), canvas_height)
    new_width = min(max(int(round(width * scale)), 1), canvas_width)
    return new_height, new_width


def learning_rates(total_steps: int, base_lr: float, warmup_steps: int, warmup_ratio: float,
                   schedule: str, step_ratios: Sequence[float] = (), step_gamma: float = 0.1) -> List[float]:
    """Per-step learning rates of a run of ``total_steps`` (the project's src/engine/lr_schedule.py rule).

    Linear warm-up from ``base_lr * warmup_ratio`` over ``min(warmup_steps, total_steps // 3)``
    steps, then a half cosine to 0 at ``total_steps`` (``schedule="cosine"``) or steps of
    ``step_gamma`` at the fractions ``step_ratios`` of the run (``"step"``).

    Returns:
        ``total_steps`` floats; entry i is the rate of step i (0-based).
    """
    if schedule not in ("cosine", "step"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'step', got {schedule!r}")
    warmup = min(warmup_steps, total_steps // 3)
    rates = []
    for step in range(total_steps):
        if step < warmup:
            rate = base_lr * (warmup_ratio + (1.0 - warmup_ratio) * step / warmup)
        elif schedule == "cosine":
            progress = min(max(step - warmup, 0) / max(total_steps - warmup, 1), 1.0)
            rate = 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))
        else:
            passed = sum(1 for ratio in step_ratios if step >= int(ratio * total_steps))
            rate = base_lr * step_gamma ** passed
        rates.append(rate)
    return rates


def coco_ap(coco_gt, results: List[dict], cat_ids: Sequence[int], image_ids: Sequence[int], iou_type: str,
            max_dets: int) -> Dict[str, float]:
    """COCO AP@[.5:.95] and AP50 (area all, ``max_dets`` detections per image) of ``results``.

    As the project's evaluator computes them: only ``cat_ids`` and ``image_ids`` are scored,
    ``params.maxDets = [min(1, m), min(10, m), m]``, the area of a segm result is its mask area,
    and AP is the mean of COCOeval's precision entries > -1.

    Args:
        coco_gt: pycocotools COCO of the val annotations.
        results: dicts with image_id, category_id, bbox [x, y, w, h], score, segmentation (RLE).
        cat_ids, image_ids: what is evaluated.
        iou_type: "bbox" or "segm".
        max_dets: detections per image scored (``test_max_per_img``).

    Returns:
        {"AP": float, "AP50": float}; -1.0 where nothing can be scored.
    """
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    annotations = []
    for index, result in enumerate(results, start=1):
        ann = dict(result, id=index, iscrowd=0)
        if iou_type == "segm":
            ann["area"] = float(mask_utils.area(result["segmentation"]))
        else:
            ann.pop("segmentation", None)
            ann["area"] = float(result["bbox"][2] * result["bbox"][3])
        annotations.append(ann)
    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset["images"]), "categories": list(coco_gt.dataset["categories"]),
                       "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.catIds = sorted(int(c) for c in cat_ids)
        evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.params.maxDets = [min(1, max_dets), min(10, max_dets), max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"]  # [iou thresholds, recall, classes, areas, maxDets]

    def mean_valid(values: np.ndarray) -> float:
        values = values[values > -1]
        return float(values.mean()) if values.size else -1.0

    at_50 = int(np.argmin(np.abs(evaluator.params.iouThrs - 0.5)))
    return {"AP": mean_valid(precision[:, :, :, 0, -1]), "AP50": mean_valid(precision[at_50, :, :, 0, -1])}


# ---- data -----------------------------------------------------------------------------------

class CocoSplit:
    """One split of a COCO-format folder for torchvision's detection models (a map-style dataset).

    Training items are ``(image [3, H, W] float 0..1, target)`` with target ``boxes [N, 4]``
    float32 ``x1, y1, x2, y2`` (original pixels, clipped to the image), ``labels [N]`` int64
    (1.. in the order of ``class_names``), ``masks [N, H, W]`` uint8; crowd regions are left out
    (torchvision has no ignore regions), at most ``max_instances`` instances (largest first),
    images without an instance skipped, and a horizontal flip with probability ``flip_ratio``.
    Eval items are ``(image, image_id)`` for every image of the split.

    Args:
        image_dir, ann_file: the split's image folder and COCO annotation JSON.
        class_names: the configured classes without background.
        training: train items (with targets, flip, skipping) or eval items.
        max_instances: ``max_instance_count`` of the config.
        flip_ratio: probability of a horizontal flip (training only).
    """

    def __init__(self, image_dir: str, ann_file: str, class_names: Sequence[str], training: bool,
                 max_instances: int, flip_ratio: float):
        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(ann_file)
        name_to_cat = {cat["name"]: cat["id"] for cat in self.coco.dataset["categories"]}
        absent = [name for name in class_names if name not in name_to_cat]
        if absent:
            raise ValueError(f"{ann_file}: category '{absent[0]}' is not in the file")
        self.label_to_cat_id = {label: name_to_cat[name] for label, name in enumerate(class_names, 1)}
        self.cat_id_to_label = {cat: label for label, cat in self.label_to_cat_id.items()}
        self.image_dir = image_dir
        self.training = training
        self.max_instances = max_instances
        self.flip_ratio = flip_ratio
        self.all_image_ids = sorted(self.coco.imgs)
        self.image_ids = [i for i in self.all_image_ids if not training or self._instances(i)]

    def _instances(self, image_id: int) -> List[dict]:
        """Non-crowd annotations of the configured classes, largest first, at most max_instances."""
        anns = [a for a in self.coco.imgToAnns[image_id]
                if a["category_id"] in self.cat_id_to_label and not a.get("iscrowd", 0)
                and a["bbox"][2] > 0 and a["bbox"][3] > 0]
        anns.sort(key=lambda a: (-float(a.get("area") or a["bbox"][2] * a["bbox"][3]), a["id"]))
        return anns[: self.max_instances]

    def __len__(self) -> int:
        return len(self.image_ids)

    def _read_image(self, image_id: int) -> np.ndarray:
        import cv2

        path = os.path.join(self.image_dir, self.coco.imgs[image_id]["file_name"])
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{path}: unreadable image (image id {image_id})")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def __getitem__(self, index: int):
        import torch

        image_id = self.image_ids[index]
        image = self._read_image(image_id)
        if not self.training:
            return torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0), image_id
        height, width = image.shape[:2]
        anns = self._instances(image_id)
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns], np.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        masks = np.stack([self.coco.annToMask(a) for a in anns]).astype(np.uint8)
        labels = np.array([self.cat_id_to_label[a["category_id"]] for a in anns], np.int64)
        if random.random() < self.flip_ratio:  # seeded per worker and epoch by the DataLoader
            image = image[:, ::-1]
            masks = masks[:, :, ::-1]
            boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)
        image_tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        target = {"boxes": torch.from_numpy(np.ascontiguousarray(boxes)), "labels": torch.from_numpy(labels),
                  "masks": torch.from_numpy(np.ascontiguousarray(masks))}
        return image_tensor, target


def _as_lists(batch):
    """DataLoader collate: a list of items -> (images list, targets-or-ids list)."""
    return [item[0] for item in batch], [item[1] for item in batch]


# ---- model ----------------------------------------------------------------------------------

def canvas_transform(canvas_height: int, canvas_width: int, image_mean: Sequence[float],
                     image_std: Sequence[float]):
    """A ``GeneralizedRCNNTransform`` that produces the project's canvas.

    Normalisation ``(x - mean) / std`` on 0..1 images (the project's 0..255 mean/std divided by
    255), resize to :func:`keep_ratio_size` (bilinear image, nearest-exact masks: torchvision's
    filters, the project's size), zero padding bottom/right to exactly the canvas.
    """
    import torch
    from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

    class CanvasTransform(GeneralizedRCNNTransform):
        def resize(self, image, target=None):
            height, width = image.shape[-2:]
            size = list(keep_ratio_size(int(height), int(width), canvas_height, canvas_width))
            image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear",
                                                    align_corners=False)[0]
            if target is None:
                return image, target
            target["boxes"] = resize_boxes(target["boxes"], (height, width), image.shape[-2:])
            if "masks" in target:
                target["masks"] = torch.nn.functional.interpolate(
                    target["masks"][:, None].float(), size=size, mode="nearest-exact")[:, 0].byte()
            return image, target

        def batch_images(self, images, size_divisible=32):
            batch = images[0].new_zeros((len(images), images[0].shape[0], canvas_height, canvas_width))
            for index, image in enumerate(images):
                batch[index, :, : image.shape[1], : image.shape[2]].copy_(image)
            return batch

    return CanvasTransform(min(canvas_height, canvas_width), max(canvas_height, canvas_width),
                           [m / 255.0 for m in image_mean], [s / 255.0 for s in image_std],
                           size_divisible=32)


def build_model(settings: dict):
    """``maskrcnn_resnet50_fpn`` from random init with the settings' sample counts and canvas."""
    import warnings

    import torch
    from torchvision.models.detection import maskrcnn_resnet50_fpn
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    # torchvision's box/mask heads fix these; the project's config must agree.
    fixed = {"roi_box_size": 7, "roi_mask_size": 14, "roi_sampling_ratio": 2, "box_head_channels": 1024,
             "mask_head_channels": 256, "fpn_channels": 256}
    for key, value in fixed.items():
        if settings[key] != value:
            raise ValueError(f"settings: {key} = {settings[key]} but torchvision's Mask R-CNN uses {value}")
    anchor_sizes = tuple(tuple(int(scale * stride) for scale in settings["anchor_scales"]) for stride in FPN_STRIDES)
    anchors = AnchorGenerator(anchor_sizes, (tuple(settings["anchor_ratios"]),) * len(FPN_STRIDES))
    stds = settings["box_target_stds"]
    with warnings.catch_warnings():
        # "trainable_backbone_layers has no effect without pretrained weights": it is 5 then, as asked.
        warnings.simplefilter("ignore", UserWarning)
        model = maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=len(settings["classes"]), trainable_backbone_layers=5,
            rpn_anchor_generator=anchors,
            rpn_pre_nms_top_n_train=settings["rpn_pre_nms_top_k_train"],
            rpn_post_nms_top_n_train=settings["rpn_post_nms_top_k_train"],
            rpn_pre_nms_top_n_test=settings["rpn_pre_nms_top_k_test"],
            rpn_post_nms_top_n_test=settings["rpn_post_nms_top_k_test"],
            rpn_nms_thresh=settings["rpn_nms_thr"], rpn_fg_iou_thresh=settings["rpn_pos_iou_thr"],
            rpn_bg_iou_thresh=settings["rpn_neg_iou_thr"], rpn_batch_size_per_image=settings["rpn_num_samples"],
            rpn_positive_fraction=settings["rpn_pos_fraction"],
            box_score_thresh=settings["test_score_thr"], box_nms_thresh=settings["test_nms_thr"],
            box_detections_per_img=settings["test_max_per_img"], box_fg_iou_thresh=settings["rcnn_pos_iou_thr"],
            box_bg_iou_thresh=settings["rcnn_neg_iou_thr"], box_batch_size_per_image=settings["rcnn_num_samples"],
            box_positive_fraction=settings["rcnn_pos_fraction"],
            bbox_reg_weights=(1.0 / stds[0], 1.0 / stds[1], 1.0 / stds[2], 1.0 / stds[3]))
    height, width = settings["canvas"]
    model.transform = canvas_transform(height, width, settings["img_mean"], settings["img_std"])
    frozen = [name for name, module in model.named_modules()
              if type(module).__name__ == "FrozenBatchNorm2d"]
    if frozen or not all(p.requires_grad for p in model.parameters()):
        raise RuntimeError("torchvision built frozen layers from random init; expected BatchNorm2d everywhere")
    return model


def _optimizer(model, settings: dict, first_lr: float):
    """SGD with momentum; weight decay on conv/linear weights only (the project's groups)."""
    import torch

    decay = [p for name, p in model.named_parameters() if p.requires_grad and name.endswith(".weight") and p.dim() > 1]
    no_decay = [p for name, p in model.named_parameters()
                if p.requires_grad and not (name.endswith(".weight") and p.dim() > 1)]
    return torch.optim.SGD([{"params": decay, "weight_decay": settings["weight_decay"]},
                            {"params": no_decay, "weight_decay": 0.0}], lr=first_lr, momentum=settings["momentum"])


def _loader(split: CocoSplit, settings: dict, shuffle: bool):
    import torch

    generator = torch.Generator()
    generator.manual_seed(settings["seed"])
    workers = settings["num_parallel_workers"]
    return torch.utils.data.DataLoader(split, batch_size=settings["batch_size"], shuffle=shuffle, drop_last=shuffle,
                                       num_workers=workers, collate_fn=_as_lists, generator=generator,
                                       persistent_workers=workers > 0)


def _split(settings: dict, name: str, training: bool) -> CocoSplit:
    root = settings["coco_root"]
    return CocoSplit(os.path.join(root, name), os.path.join(root, settings["instance_set"].format(name)),
                     settings["classes"][1:], training, settings["max_instance_count"], settings["flip_ratio"])


def train(settings: dict, out_dir: str, steps: int, schedule_steps: int, profile_steps: int = 0):
    """Train ``steps`` steps (rates of a ``schedule_steps`` run); rows go to ``out_dir/losses.csv``.

    The last ``profile_steps`` steps run under ``torch.profiler`` (CPU, self time per op name),
    written to ``out_dir/kernels.json`` as ``[[name, ms per step], ...]``.

    Returns:
        (model, record): record has steps_per_epoch, steps_done, error (None or one line).
    """
    import torch

    split = _split(settings, settings["train_data_type"], training=True)
    steps_per_epoch = len(split) // settings["batch_size"]
    if steps_per_epoch == 0:
        raise ValueError(f"{split.image_dir}: fewer training images than batch_size={settings['batch_size']}")
    model = build_model(settings)
    model.train()
    rates = learning_rates(schedule_steps, settings["base_lr"], settings["warmup_steps"], settings["warmup_ratio"],
                           settings["lr_schedule"], settings["lr_step_ratios"], settings["lr_step_gamma"])
    optimizer = _optimizer(model, settings, rates[0])
    params = [p for p in model.parameters() if p.requires_grad]
    loader = _loader(split, settings, shuffle=True)
    os.makedirs(out_dir, exist_ok=True)
    step, epoch, error = 0, 0, None
    profiler = None
    with open(os.path.join(out_dir, "losses.csv"), "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "step", "total", *LOSS_COLUMNS, "lr", "step_seconds"])
        handle.flush()
        while step < steps and error is None:
            epoch += 1
            for images, targets in loader:
                if profile_steps and step == steps - profile_steps:
                    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                    profiler.start()
                rate = rates[min(step, len(rates) - 1)]
                for group in optimizer.param_groups:
                    group["lr"] = rate
                start = time.perf_counter()
                losses = model(images, targets)
                total = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if settings["grad_clip_norm"] > 0:
                    torch.nn.utils.clip_grad_norm_(params, settings["grad_clip_norm"])
                optimizer.step()
                value = float(total.item())
                seconds = time.perf_counter() - start
                step += 1
                writer.writerow([epoch, step, f"{value:.6f}", *[f"{float(losses[k].item()):.6f}" for k in LOSS_COLUMNS],
                                 f"{rate:.6g}", f"{seconds:.3f}"])
                handle.flush()
                if not math.isfinite(value):
                    error = f"loss became {value} at step {step}"
                    break
                if step >= steps:
                    break
    if profiler is not None:
        profiler.stop()
        profiled = step - (steps - profile_steps)
        kernels = [[event.key, event.self_cpu_time_total / 1000.0 / max(profiled, 1)]
                   for event in profiler.key_averages() if event.self_cpu_time_total > 0]
        with open(os.path.join(out_dir, "kernels.json"), "w", encoding="utf-8") as handle:
            json.dump(kernels, handle)
    return model, {"steps_per_epoch": steps_per_epoch, "steps_done": step, "error": error}


def _coco_results(outputs, image_ids, label_to_cat_id: Dict[int, int], mask_thr: float) -> List[dict]:
    """torchvision detections (original pixels) -> COCO result dicts (bbox xywh, RLE segm)."""
    from pycocotools import mask as mask_utils

    results = []
    for output, image_id in zip(outputs, image_ids):
        boxes = output["boxes"].numpy()
        masks = (output["masks"][:, 0] >= mask_thr).numpy().astype(np.uint8)
        for box, score, label, mask in zip(boxes, output["scores"].numpy(), output["labels"].numpy(), masks):
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode("ascii")
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append({"image_id": int(image_id), "category_id": label_to_cat_id[int(label)],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score), "segmentation": rle})
    return results


def evaluate(model, settings: dict, num_images: Optional[int] = None) -> dict:
    """Run ``model`` over the val split (the first ``num_images``), score it with COCOeval.

    Returns:
        bbox/segm AP and AP50, and timings as bench_eval.py defines them: ``compile_s`` (first
        batch), ``net_s_per_image`` and ``postprocess_s_per_image`` (the other batches),
        ``cocoeval_s``, ``images_per_s`` (steady images over their network + post-processing
        time plus COCOeval spread over all images).
    """
    import torch

    split = _split(settings, settings["val_data_type"], training=False)
    if num_images:
        split.image_ids = split.image_ids[:num_images]
    model.eval()
    results: List[dict] = []
    first_s = net_s = post_s = 0.0
    steady_images = 0
    with torch.inference_mode():
        for index, (images, image_ids) in enumerate(_loader(split, settings, shuffle=False)):
            start = time.perf_counter()
            outputs = model(images)
            elapsed = time.perf_counter() - start
            start = time.perf_counter()
            results.extend(_coco_results(outputs, image_ids, split.label_to_cat_id, settings["mask_thr"]))
            post = time.perf_counter() - start
            if index == 0:
                first_s = elapsed
            else:
                net_s, post_s, steady_images = net_s + elapsed, post_s + post, steady_images + len(images)
    start = time.perf_counter()
    cat_ids = list(split.label_to_cat_id.values())
    metrics = {iou_type: coco_ap(split.coco, results, cat_ids, split.image_ids, iou_type, settings["test_max_per_img"])
               for iou_type in ("bbox", "segm")}
    cocoeval_s = time.perf_counter() - start
    evaluated = len(split.image_ids)
    steady_time = net_s + post_s + cocoeval_s * steady_images / max(evaluated, 1)
    return {"num_images": evaluated, "num_detections": len(results),
            "bbox_AP": round(metrics["bbox"]["AP"], 4), "bbox_AP50": round(metrics["bbox"]["AP50"], 4),
            "segm_AP": round(metrics["segm"]["AP"], 4), "segm_AP50": round(metrics["segm"]["AP50"], 4),
            "compile_s": round(first_s, 2), "net_s_per_image": round(net_s / max(steady_images, 1), 3),
            "postprocess_s_per_image": round(post_s / max(steady_images, 1), 4), "cocoeval_s": round(cocoeval_s, 3),
            "images_per_s": round(steady_images / steady_time, 3) if steady_images else None}


def _versions() -> dict:
    import torch
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "threads": torch.get_num_threads()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("train", "eval_speed"))
    parser.add_argument("--settings", required=True, help="settings JSON written by bench_peer.py")
    parser.add_argument("--out", required=True, help="output folder (losses.csv)")
    parser.add_argument("--steps", type=int, default=1, help="train: steps to run")
    parser.add_argument("--schedule_steps", type=int, default=0,
                        help="train: length of the LR schedule (default --steps)")
    parser.add_argument("--evaluate", action="store_true", help="train: evaluate on the val split afterwards")
    parser.add_argument("--profile_steps", type=int, default=0,
                        help="train: profile the last K steps into OUT/kernels.json")
    parser.add_argument("--num_images", type=int, default=0, help="eval_speed: val images (0 = all)")
    parser.add_argument("--save_weights", default="", help="train: save the trained state dict here")
    parser.add_argument("--weights", default="", help="eval_speed: load this state dict (default: random init)")
    args = parser.parse_args(argv)
    try:
        with open(args.settings, encoding="utf-8") as handle:
            settings = json.load(handle)
    except (OSError, ValueError) as e:
        print(f"{args.settings}: cannot read the settings JSON: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    import torch

    torch.set_num_threads(settings["threads"])
    torch.manual_seed(settings["seed"])
    random.seed(settings["seed"])
    record = dict(_versions())
    if args.mode == "train":
        start = time.perf_counter()
        model, outcome = train(settings, args.out, args.steps, args.schedule_steps or args.steps,
                               min(max(args.profile_steps, 0), args.steps))
        record.update(outcome, train_s=round(time.perf_counter() - start, 1))
        if outcome["error"] is None and args.evaluate:
            start = time.perf_counter()
            record.update(evaluate(model, settings), eval_s=round(time.perf_counter() - start, 1))
        if outcome["error"] is None and args.save_weights:
            torch.save(model.state_dict(), args.save_weights)
    else:
        model = build_model(settings)
        if args.weights:
            model.load_state_dict(torch.load(args.weights))
        record.update(evaluate(model, settings, args.num_images or None))
    record["process_s"] = round(time.time() - PROCESS_START, 1)
    print(json.dumps(record, sort_keys=True), flush=True)
    return EXIT_TRAINING_STOPPED if record.get("error") else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
