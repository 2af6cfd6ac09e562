"""Prediction on pictures and videos: a network with its pre- and post-processing for one image
(:class:`Predictor`), the pictures and JSON written per image (:func:`predict_image`), the
colour-splash video (:func:`predict_video`) and the pre-labels of a folder for an annotation tool
(:func:`export_prelabels`, formats in ``src/prelabels.py``). ``predict.py`` is the command line.
"""

import json
import logging
import os
from typing import Dict, List, Sequence

import cv2
import numpy as np

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
        from src.maskrcnn.numerics import get_numerics
        from src.transforms import preprocess_eval

        cfg = self.config
        height, width = image.shape[:2]
        net_input, image_shape = preprocess_eval(image, cfg.img_height, cfg.img_width, cfg.img_mean,
                                                 cfg.img_std, cfg.keep_ratio, cfg.resize_to)
        outputs = self.net(ms.Tensor(net_input[None]), ms.Tensor(image_shape[None]))
        boxes, scores, labels, valid, masks = (o.asnumpy()[0] for o in outputs)
        in_range = (labels >= 0) & (labels < len(self.label_thr))
        keep = valid.astype(bool) & in_range & (scores >= self.label_thr[np.where(in_range, labels, 0)])
        return predictions_to_original(boxes[keep], scores[keep], labels[keep], np.ones(int(keep.sum()), bool),
                                       masks[keep], image_shape, height, width, cfg.mask_thr,
                                       mask_paste=get_numerics(cfg.numerics).mask_paste)


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
    from src.viz import visualize

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
    from src.viz import visualize

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


def export_prelabels(predictor: Predictor, paths: Sequence[str], out_dir: str, class_names: Sequence[str],
                     formats: Sequence[str], tolerance: float, image_url_prefix: str = "",
                     progress=None) -> Dict[str, str]:
    """Run ``predictor`` on the images ``paths`` and write their detections as pre-labels
    (``src.prelabels.write_prelabels``); returns {format: written file or folder}.

    Args:
        tolerance: polygon simplification tolerance in pixels.
        image_url_prefix: Label Studio: prepended to each file name to form the task's image URL.
        progress: optional wrapper of the path list (e.g. tqdm).
    """
    from src.prelabels import image_prelabels, write_prelabels

    records = []
    for path in (progress(paths) if progress else paths):
        if path.lower().endswith(VIDEO_EXTENSIONS):
            raise PredictError(f"{path}: --export takes images only, not videos")
        image = read_image(path)
        records.append(image_prelabels(path, image.shape[0], image.shape[1], predictor(image), tolerance))
    written = write_prelabels(records, class_names, out_dir, formats, image_url_prefix)
    count = sum(len(r.instances) for r in records)
    logger.info("pre-labels of %d images (%d instances): %s", len(records), count,
                ", ".join(f"{k} {v}" for k, v in written.items()))
    return written
