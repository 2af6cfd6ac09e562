"""Builders and readers shared by several test modules (``from helpers import ...``)."""

import os
import struct
from typing import Dict, List, Tuple

import numpy as np


class FixedDetectionsNet:
    """Stand-in for an inference network with a 64x64 input: three detections, labels 1, 2, 1 with
    scores .9, .6, .4, boxes inside the input, masks covering their boxes."""

    def set_train(self, mode):
        self.training = mode

    def __call__(self, image, image_shape):
        import mindspore as ms

        boxes = np.array([[[2, 2, 20, 20], [30, 30, 50, 50], [10, 30, 25, 60]]], np.float32)
        scores = np.array([[0.9, 0.6, 0.4]], np.float32)
        labels = np.array([[1, 2, 1]], np.int32)
        valid = np.ones((1, 3), bool)
        masks = np.ones((1, 3, 28, 28), np.float32)
        return tuple(ms.Tensor(a) for a in (boxes, scores, labels, valid, masks))


def read_tensorboard_scalars(log_dir: str) -> Dict[str, List[Tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every scalar in the event files of ``log_dir``, in file order.

    Reads the record framing (length, length CRC, payload, payload CRC) and parses each payload with
    tensorboardX's own ``Event`` protocol buffer.
    """
    from tensorboardX.proto.event_pb2 import Event

    scalars: Dict[str, List[Tuple[int, float]]] = {}
    for name in sorted(os.listdir(log_dir)):
        if "tfevents" not in name:
            continue
        with open(os.path.join(log_dir, name), "rb") as handle:
            data = handle.read()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            payload = data[offset + 12:offset + 12 + length]
            offset += 12 + length + 4
            event = Event.FromString(payload)
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return scalars
