"""Quick image-file checks from the header only (no decoding), for dataset build time.

:func:`read_image_size` reads the size of PNG, JPEG and BMP files from their first bytes and
recognises the other formats OpenCV decodes by their signature, so that a file that is not an
image, is empty or has a cut-off header is reported by name before training starts instead of
failing later inside a data-pipeline worker.
"""

from __future__ import annotations

import struct
from typing import Optional, Tuple

import cv2

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8"
BMP_SIGNATURE = b"BM"
# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field (TEM, RST0-7, SOI, EOI).
JPEG_STANDALONE = frozenset([0x01] + list(range(0xD0, 0xDA)))
# The JPEG frame header usually follows EXIF/ICC data in the first tens of kB.
JPEG_HEADER_BYTES = 1 << 20
HEADER_BYTES = 64


class ImageHeaderError(ValueError):
    """The file is not an image OpenCV can read, or its header is cut off."""


def _jpeg_size(data: bytes) -> Tuple[int, int]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageHeaderError("JPEG marker expected")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in JPEG_STANDALONE:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker in JPEG_SOF_MARKERS:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return height, width
        pos += 2 + length
    raise ImageHeaderError("JPEG header has no frame size (file cut off?)")


def read_image_size(path: str) -> Optional[Tuple[int, int]]:
    """(height, width) from the header of a PNG, JPEG or BMP file; None for other readable formats.

    Raises:
        OSError: the file cannot be opened.
        ImageHeaderError: empty file, unknown signature or a cut-off header.
    """
    with open(path, "rb") as handle:
        head = handle.read(HEADER_BYTES)
        if head.startswith(JPEG_SIGNATURE):
            return _jpeg_size(head + handle.read(JPEG_HEADER_BYTES))
    if not head:
        raise ImageHeaderError("empty file")
    if head.startswith(PNG_SIGNATURE):
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise ImageHeaderError("PNG header cut off")
        width, height = struct.unpack(">II", head[16:24])
        return height, width
    if head.startswith(BMP_SIGNATURE) and len(head) >= 26:
        width, height = struct.unpack("<ii", head[18:26])
        return abs(height), width  # a negative height means a top-down bitmap
    if cv2.haveImageReader(path):
        return None
    raise ImageHeaderError("not an image format OpenCV can read")
