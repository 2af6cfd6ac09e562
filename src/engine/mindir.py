"""Write the network's inference graph to a file (MindIR; ONNX/AIR where the ops allow) and load it back.

The graph is the model in inference mode at the config's input size:
inputs ``image [B, 3, img_height, img_width] float32`` (normalised and padded as
``src.transforms.preprocess_eval`` does) and ``image_shape [B, 4] float32``; outputs
``(boxes [B,K,4], scores [B,K], labels [B,K] int32, valid [B,K] bool, masks [B,K,M,M])`` as the
network's (see ``src/maskrcnn/mask_rcnn.py``). ``export.py`` writes it; ``predict.py --mindir`` and
``eval.py --mindir`` run it (:func:`load_exported`).
"""

import os

FILE_FORMATS = ("MINDIR", "ONNX", "AIR")
SUFFIXES = {"MINDIR": ".mindir", "ONNX": ".onnx", "AIR": ".air"}


class ExportError(ValueError):
    """The graph cannot be written in the requested format, or an exported file is unusable."""


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
