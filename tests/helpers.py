"""Builders and readers shared by several test modules (``from helpers import ...``)."""

import os
import struct
from typing import Dict, List, Tuple


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
