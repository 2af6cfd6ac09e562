"""Write the network's inference graph to a file (MindIR; ONNX/AIR where the ops allow) and load it back.

The graph is the model in inference mode at the config's input size:
inputs ``image [B, 3, img_height, img_width] float32`` (normalised and padded as
``src.transforms.preprocess_eval`` does) and ``image_shape [B, 4] float32``; outputs
``(boxes [B,K,4], scores [B,K], labels [B,K] int32, valid [B,K] bool, masks [B,K,M,M])`` as the
network's (see ``src/maskrcnn/mask_rcnn.py``). ``export.py`` writes it; ``predict.py --mindir`` and
``eval.py --mindir`` run it (:func:`load_exported`).

Beside the graph ``export.py`` writes its metadata, ``<file>.json`` (:func:`write_metadata`):
what a user of the file needs besides the graph, so that no config is needed to run it
(:func:`config_with_metadata`)::

    {"format": "maskrcnn-mindir-metadata", "version": 1, "graph": "model.mindir",
     "classes": ["background", "book"], "input_size": [768, 1280], "batch": 1,
     "img_mean": [...], "img_std": [...], "keep_ratio": true, "mask_thr": 0.5,
     "max_detections": 100, "mask_size": 28, "numerics": "native",
     "score_thresholds": {"book": 0.41} or null (per class, from eval.py --report's report.json),
     "outputs": ["boxes", "scores", "labels", "valid", "masks"], "mindspore": "2.7.2"}
"""

import json
import os

FILE_FORMATS = ("MINDIR", "ONNX", "AIR")
SUFFIXES = {"MINDIR": ".mindir", "ONNX": ".onnx", "AIR": ".air"}


METADATA_FORMAT = "maskrcnn-mindir-metadata"
METADATA_VERSION = 1
# Metadata field -> the config key it sets (the graph's constants and its pre/post-processing).
METADATA_CONFIG_KEYS = {"classes": "coco_classes", "img_mean": "img_mean", "img_std": "img_std",
                        "keep_ratio": "keep_ratio", "mask_thr": "mask_thr", "max_detections": "test_max_per_img",
                        "numerics": "numerics"}


class ExportError(ValueError):
    """The graph cannot be written in the requested format, or an exported file is unusable."""


def metadata_path(graph_path: str) -> str:
    """The metadata file beside an exported graph: ``model.mindir`` -> ``model.mindir.json``."""
    return graph_path + ".json"


def write_metadata(graph_path: str, config, batch: int, score_thresholds=None) -> str:
    """Write :func:`metadata_path` of ``graph_path`` (see the module docstring); returns its path.

    Args:
        score_thresholds: ``{contiguous label: threshold}`` (``load_score_thresholds``) or None.
    """
    import mindspore as ms

    names = list(config.coco_classes)
    data = {
        "format": METADATA_FORMAT, "version": METADATA_VERSION, "graph": os.path.basename(graph_path),
        "classes": names, "input_size": [config.img_height, config.img_width], "batch": int(batch),
        "img_mean": list(config.img_mean), "img_std": list(config.img_std), "keep_ratio": config.keep_ratio,
        "mask_thr": config.mask_thr, "max_detections": config.test_max_per_img, "mask_size": config.mask_out_size,
        "numerics": config.numerics,
        "score_thresholds": (None if score_thresholds is None
                             else {names[label]: float(t) for label, t in sorted(score_thresholds.items())}),
        "outputs": ["boxes", "scores", "labels", "valid", "masks"], "mindspore": ms.__version__,
    }
    path = metadata_path(graph_path)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
    return path


def read_metadata(graph_path: str) -> dict:
    """The metadata of an exported graph.

    Raises:
        ExportError: missing, not JSON, or not this format (names the file).
    """
    path = metadata_path(graph_path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError as e:
        raise ExportError(f"{path}: metadata of {os.path.basename(graph_path)} not found "
                          f"(export.py writes it beside the graph; export again)") from e
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or data.get("format") != METADATA_FORMAT:
        raise ExportError(f"{path}: not a metadata file written by export.py (no 'format': '{METADATA_FORMAT}')")
    missing = [key for key in ("input_size", "batch", *METADATA_CONFIG_KEYS) if key not in data]
    if missing:
        raise ExportError(f"{path}: missing {', '.join(missing)}")
    return data


def config_with_metadata(config, metadata: dict):
    """``config`` with what the exported graph fixes (classes, input size, normalisation, resize
    mode, mask threshold, detections per image, numerics) taken from its ``metadata``."""
    height, width = metadata["input_size"]
    changes = {key: metadata[field] for field, key in METADATA_CONFIG_KEYS.items()}
    return config.replace(img_height=int(height), img_width=int(width), **changes)


def metadata_score_thresholds(metadata: dict):
    """``{contiguous label: threshold}`` of the metadata's per-class thresholds, or None."""
    table = metadata.get("score_thresholds")
    if not table:
        return None
    return {label: float(table[name]) for label, name in enumerate(metadata["classes"]) if name in table}


def export_network(net, config, out: str, file_format: str = "MINDIR", batch: int = 1) -> str:
    """Write ``net`` (inference mode) with static inputs of ``config``'s size; returns the file path.

    Raises:
        ExportError: the format cannot hold one of the graph's operators (the message names it).
    """
    import mindspore as ms
    import numpy as np

    suffix = SUFFIXES[file_format]
    stem = out[: -len(suffix)] if out.lower().endswith(suffix) else out
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    image = ms.Tensor(np.zeros((batch, 3, config.img_height, config.img_width), np.float32))
    image_shape = ms.Tensor(np.tile(np.array([[config.img_height, config.img_width, 1.0, 1.0]], np.float32),
                                    (batch, 1)))
    net.set_train(False)
    try:
        ms.export(net, image, image_shape, file_name=stem, file_format=file_format)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ExportError(f"{file_format} export failed: {blocking_operator(str(e))}") from e
    path = stem + suffix
    if not os.path.isfile(path):
        raise ExportError(f"{file_format} export wrote no file at {path}")
    return path


def blocking_operator(message: str) -> str:
    """The one line of an exporter's error that names the unsupported operator (else the first line)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        lowered = line.lower()
        if ("not support" in lowered or "unsupported" in lowered) and ("op" in lowered or "primitive" in lowered):
            return line
    return lines[0] if lines else "unknown error"


def load_exported(path: str):
    """``nn.GraphCell`` of an exported MindIR: ``cell(image, image_shape)`` -> the network's outputs.

    Raises:
        ExportError: missing or unreadable file (names it).
    """
    import mindspore as ms
    from mindspore import nn

    if not os.path.isfile(path):
        raise ExportError(f"MindIR file not found: {path}")
    try:
        graph = ms.load(path)
    except (RuntimeError, ValueError) as e:
        raise ExportError(f"{path}: not a loadable MindIR file ({str(e).splitlines()[0]})") from e
    return nn.GraphCell(graph)
