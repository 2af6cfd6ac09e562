"""Run a Mask R-CNN checkpoint on images or a video and draw the results.

    python predict.py --ckpt PATH|--mindir FILE --input IMAGE|DIR|VIDEO --out DIR [--score_thr 0.5|auto]
                      [--classes book,disc] [--config_path FILE] [--device_target CPU]
                      [--any_config_key VALUE ...]

For every image ``NAME.ext`` the output folder receives

* ``NAME_overlay.png``   masks in colour, boxes, class names and scores;
* ``NAME_splash.png``    colour splash: detected objects in colour on a greyscale image;
* ``NAME_cutout.png``    RGBA: the objects, alpha = mask, background transparent;
* ``NAME_classmap.png``  8-bit per-pixel label index (0 = background), and
  ``NAME_classmap_color.png`` its coloured version;
* ``NAME.json``          the detections (box x1, y1, x2, y2 in original pixels, score, label,
  class name, RLE mask).

``--score_thr auto`` takes each class's best-F1 threshold from the ``report.json`` of
``eval.py --report DIR`` (``--report_json``, default ``<run_dir>/eval/report/report.json``).

A video (.mp4, .avi, .mov, .mkv) becomes ``NAME_splash.mp4`` (colour splash of every frame,
mp4v) plus ``NAME.json`` with the boxes of every frame.
Exit codes: 0 done, 2 bad input.
"""

import argparse
import json
import logging
import os
import sys
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

from src.config import DEVICE_TARGETS, add_config_arguments, config_from_cli
from src.runtime import EXIT_BAD_INPUT, EXIT_OK

logger = logging.getLogger("predict")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")
VIDEO_FOURCC = "mp4v"
# Frame rate written when the input video does not report one.
DEFAULT_FPS = 25.0
DEFAULT_SCORE_THR = 0.5
AUTO_THRESHOLD = "auto"


class PredictError(ValueError):
    """Bad input to predict.py (unreadable file, unknown class name, ...); names the file/value."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--ckpt", help="checkpoint of this model written by train.py")
    weights.add_argument("--mindir", help="graph written by export.py (batch 1, the config's input size)")
    parser.add_argument("--input", required=True, help="an image, a folder of images, or a video")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--score_thr", default=str(DEFAULT_SCORE_THR),
                        help=f"keep detections with at least this score (default {DEFAULT_SCORE_THR}); 'auto': "
                             f"per class the best-F1 threshold of the validation split from --report_json")
    parser.add_argument("--report_json", default=None,
                        help="report.json of eval.py --report DIR for --score_thr auto "
                             "(default <run_dir>/eval/report/report.json)")
    parser.add_argument("--classes", default="",
                        help="comma-separated class names to keep (default: all classes of the config)")
    parser.add_argument("--max_frames", type=int, default=0, help="video: stop after N frames (0 = all)")
    parser.add_argument("--device_target", default=None, choices=DEVICE_TARGETS,
                        help="overrides the config's device_target")
    return parser


def parse_classes(text: str, class_names: Sequence[str]) -> List[int]:
    """``"book,disc"`` -> their contiguous labels; empty -> all labels 1..len-1.

    Args:
        text: comma-separated names.
        class_names: ``config.coco_classes`` (index 0 = background).

    Raises:
        PredictError: a name that is not a configured class.
    """
    if not text.strip():
        return list(range(1, len(class_names)))
    labels = []
    for name in (n.strip() for n in text.split(",")):
        if name not in class_names[1:]:
            raise PredictError(f"--classes: '{name}' is not a configured class; "
                               f"choose from {', '.join(class_names[1:])}")
        labels.append(class_names.index(name))
    return labels


def list_inputs(path: str) -> List[str]:
    """The image/video files named by ``--input`` (a folder: its images, sorted).

    Raises:
        PredictError: missing path, unsupported extension, folder without images.
    """
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if f.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS))
        if not files:
            raise PredictError(f"{path}: no image or video files ({', '.join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)})")
        return files
    if not os.path.isfile(path):
        raise PredictError(f"input not found: {path}")
    if not path.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS):
        raise PredictError(f"{path}: unsupported file type; expected an image "
                           f"({', '.join(IMAGE_EXTENSIONS)}) or a video ({', '.join(VIDEO_EXTENSIONS)})")
    return [path]


def read_image(path: str) -> np.ndarray:
    """RGB [H, W, 3] uint8 of an image file; PredictError naming the file if unreadable."""
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise PredictError(f"{path}: corrupt or unreadable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class Predictor:
    """Network + pre- and post-processing for one RGB image at a time.

    Args:
        net: ``Mask_Rcnn_Resnet50`` with its weights loaded.
        config: the Config the network was built from.
        score_thr: minimum score of a kept detection, one number or {label: threshold}.
        labels: contiguous labels to keep.
    """

    def __init__(self, net, config, score_thr, labels: Sequence[int]):
        self.net = net
        self.net.set_train(False)
        self.config = config
        self.score_thr = score_thr
        self.labels = np.asarray(sorted(labels), dtype=np.int32)
        per_label = score_thr if isinstance(score_thr, dict) else {int(l): float(score_thr) for l in labels}
        # threshold indexed by label; labels that are not kept get +inf
        self.label_thr = np.full(len(config.coco_classes), np.inf, dtype=np.float32)
        for label in self.labels:
            self.label_thr[label] = per_label[int(label)]

    def __call__(self, image: np.ndarray):
        """Detections of an RGB [H, W, 3] uint8 image in its own pixels (src.evaluation.results.Detections)."""
        import mindspore as ms

        from src.evaluation.results import predictions_to_original
        from src.transforms import preprocess_eval

        cfg = self.config
        height, width = image.shape[:2]
        net_input, image_shape = preprocess_eval(image, cfg.img_height, cfg.img_width, cfg.img_mean,
                                                 cfg.img_std, cfg.keep_ratio)
        outputs = self.net(ms.Tensor(net_input[None]), ms.Tensor(image_shape[None]))
        boxes, scores, labels, valid, masks = (o.asnumpy()[0] for o in outputs)
        in_range = (labels >= 0) & (labels < len(self.label_thr))
        keep = valid.astype(bool) & in_range & (scores >= self.label_thr[np.where(in_range, labels, 0)])
        return predictions_to_original(boxes[keep], scores[keep], labels[keep], np.ones(int(keep.sum()), bool),
                                       masks[keep], image_shape, height, width, cfg.mask_thr)


def detections_json(detections, class_names: Sequence[str], with_masks: bool = True) -> List[Dict[str, object]]:
    """JSON-ready list of detections (box x1, y1, x2, y2 original px; RLE mask if asked)."""
    from src.evaluation.results import encode_masks

    rles = encode_masks(detections.masks) if with_masks else [None] * len(detections)
    items = []
    for box, score, label, rle in zip(detections.boxes, detections.scores, detections.labels, rles):
        item = {"label": int(label), "class": class_names[int(label)],
                "score": round(float(score), 5), "box": [round(float(v), 2) for v in box]}
        if with_masks:
            item["segmentation"] = rle
        items.append(item)
    return items


def _write_png(path: str, image: np.ndarray) -> None:
    """Write an RGB / RGBA / single-channel array as PNG (OpenCV wants BGR order)."""
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    if not cv2.imwrite(path, image):
        raise PredictError(f"{path}: OpenCV could not write the file")


def predict_image(predictor: Predictor, path: str, out_dir: str, class_names: Sequence[str]) -> Dict[str, str]:
    """Write the five pictures and the JSON of one image; returns {kind: written path}."""
    from src import visualize

    image = read_image(path)
    dets = predictor(image)
    stem = os.path.splitext(os.path.basename(path))[0]
    label_map = visualize.class_map(dets.masks, dets.labels, dets.scores, image.shape[0], image.shape[1])
    pictures = {
        "overlay": visualize.overlay(image, dets.masks, dets.boxes, dets.labels, dets.scores, class_names),
        "splash": visualize.colour_splash(image, dets.masks),
        "cutout": visualize.cut_out(image, dets.masks),
        "classmap": label_map,
        "classmap_color": visualize.colour_class_map(label_map, len(class_names)),
    }
    written = {}
    for kind, picture in pictures.items():
        written[kind] = os.path.join(out_dir, f"{stem}_{kind}.png")
        _write_png(written[kind], picture)
    written["json"] = os.path.join(out_dir, f"{stem}.json")
    with open(written["json"], "w", encoding="utf-8") as handle:
        json.dump({"image": os.path.abspath(path), "height": image.shape[0], "width": image.shape[1],
                   "detections": detections_json(dets, class_names)}, handle)
    logger.info("%s: %d detections -> %s_*.png", path, len(dets), os.path.join(out_dir, stem))
    return written


def predict_video(predictor: Predictor, path: str, out_dir: str, class_names: Sequence[str],
                  max_frames: int = 0) -> Dict[str, str]:
    """Colour-splash video (mp4v) of every frame and a JSON of the boxes per frame."""
    from src import visualize

    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise PredictError(f"{path}: OpenCV cannot open the video")
    fps = capture.get(cv2.CAP_PROP_FPS) or DEFAULT_FPS
    stem = os.path.splitext(os.path.basename(path))[0]
    video_path = os.path.join(out_dir, f"{stem}_splash.mp4")
    writer = None
    frames = []
    try:
        while not max_frames or len(frames) < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            dets = predictor(rgb)
            splash = visualize.colour_splash(rgb, dets.masks)
            if writer is None:
                height, width = rgb.shape[:2]
                writer = cv2.VideoWriter(video_path, cv2.VideoWriter_fourcc(*VIDEO_FOURCC), fps, (width, height))
                if not writer.isOpened():
                    raise PredictError(f"{video_path}: OpenCV cannot write an {VIDEO_FOURCC} video")
            writer.write(cv2.cvtColor(splash, cv2.COLOR_RGB2BGR))
            frames.append({"frame": len(frames), "detections": detections_json(dets, class_names, with_masks=False)})
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if not frames:
        raise PredictError(f"{path}: the video has no readable frame")
    json_path = os.path.join(out_dir, f"{stem}.json")
    with open(json_path, "w", encoding="utf-8") as handle:
        json.dump({"video": os.path.abspath(path), "fps": fps, "frames": frames}, handle)
    logger.info("%s: %d frames -> %s", path, len(frames), video_path)
    return {"video": video_path, "json": json_path}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, config = config_from_cli(parser, argv)
    if args.device_target:
        config = config.replace(device_target=args.device_target)
    if args.score_thr != AUTO_THRESHOLD:
        try:
            args.score_thr = float(args.score_thr)
        except ValueError:
            parser.error(f"--score_thr must be a number between 0 and 1 or 'auto', got {args.score_thr!r}")
        if not 0.0 <= args.score_thr <= 1.0:
            parser.error(f"--score_thr must be between 0 and 1, got {args.score_thr}")
    from src.runtime import set_mindspore_context, setup_logging

    setup_logging()
    from export import ExportError
    from src.checkpoint.io import CheckpointError
    from src.runtime import SetupError, compile_cache, ensure_writable_folder
    from src.evaluation.report_data import DEFAULT_REPORT_JSON, ReportError, load_score_thresholds

    try:
        labels = parse_classes(args.classes, config.coco_classes)
        inputs = list_inputs(args.input)
        if args.score_thr == AUTO_THRESHOLD:
            from src.config import resolve_path

            report_json = args.report_json or os.path.join(resolve_path(config.run_dir), DEFAULT_REPORT_JSON)
            args.score_thr = load_score_thresholds(report_json, config.coco_classes, DEFAULT_SCORE_THR)
            logger.info("score thresholds from %s: %s", report_json, ", ".join(
                f"{config.coco_classes[l]} {t:.3f}" for l, t in sorted(args.score_thr.items())))
        weights = args.mindir or args.ckpt
        if not os.path.isfile(weights):
            raise PredictError(f"{'MindIR' if args.mindir else 'checkpoint'} file not found: {weights}")
        ensure_writable_folder(args.out, "out")
        set_mindspore_context(config.device_target, seed=config.seed)
        if args.mindir:
            from export import load_exported

            net = load_exported(args.mindir)
        else:
            from src.evaluation.inference import load_inference_checkpoint
            from src.maskrcnn.builder import build_model

            net = build_model(config)
            load_inference_checkpoint(net, args.ckpt)
        predictor = Predictor(net, config, args.score_thr, labels)
        os.makedirs(args.out, exist_ok=True)
        from tqdm import tqdm

        # The network built from the config is compiled once and cached (its single-image graph;
        # an exported MindIR is its own graph): a later run starts in seconds.
        cached_config = config.replace(compile_cache_dir=None) if args.mindir else config
        with compile_cache(cached_config, "predict", entry_file=__file__):
            for path in tqdm(inputs, desc="predict", unit="file", disable=None if len(inputs) > 1 else True):
                if path.lower().endswith(VIDEO_EXTENSIONS):
                    predict_video(predictor, path, args.out, config.coco_classes, args.max_frames)
                else:
                    predict_image(predictor, path, args.out, config.coco_classes)
    except (PredictError, CheckpointError, ReportError, ExportError, SetupError) as e:
        logger.error("%s", e)
        return EXIT_BAD_INPUT
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
