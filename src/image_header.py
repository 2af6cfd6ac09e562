"""Quick image-file checks from the header only (no decoding), for dataset build time.

:func:`read_image_geometry` reads the stored size of PNG, JPEG and BMP files from their first
bytes (and a JPEG's EXIF orientation) and recognises the other formats OpenCV decodes by their
signature, so that a file that is not an image, is empty or has a cut-off header is reported by
name before training starts instead of failing later inside a data-pipeline worker.

The orientation rule, the same in every reader and writer (importers, dataset, inspector,
evaluation pictures, predict): **the image is what a viewer shows**, i.e. the stored pixels
turned by the EXIF orientation, which is what ``cv2.imread``/``cv2.imdecode`` with
``IMREAD_COLOR`` return. :func:`read_image_size` gives that upright size; :func:`orient_points`
and :func:`orient_array` turn coordinates and arrays of the stored pixels upright (for an
annotation file written against the stored pixels). :func:`jpeg_is_complete` finds a JPEG cut
after its header (which only a full decode would otherwise reveal).
"""

from __future__ import annotations

import struct
from typing import NamedTuple, Optional, Tuple

import cv2
import numpy as np

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
JPEG_APP1 = 0xE1
JPEG_SOS = b"\xff\xda"
JPEG_EOI = b"\xff\xd9"
EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientations 5-8 turn the picture by a quarter: the upright image has height and width swapped.
QUARTER_TURN_ORIENTATIONS = frozenset((5, 6, 7, 8))


class ImageHeaderError(ValueError):
    """The file is not an image OpenCV can read, or its header is cut off."""


class ImageGeometry(NamedTuple):
    """Stored size and EXIF orientation (1 = none) of an image file."""

    stored_height: int
    stored_width: int
    orientation: int

    @property
    def upright_size(self) -> Tuple[int, int]:
        """(height, width) of the image as a viewer shows it."""
        if self.orientation in QUARTER_TURN_ORIENTATIONS:
            return self.stored_width, self.stored_height
        return self.stored_height, self.stored_width


def _exif_orientation(segment: bytes) -> int:
    """The orientation tag of an APP1 payload (1 when absent or unreadable)."""
    if not segment.startswith(b"Exif\x00\x00") or len(segment) < 14:
        return 1
    tiff = segment[6:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
    for k in range(count):
        entry = tiff[ifd + 2 + 12 * k: ifd + 14 + 12 * k]
        if len(entry) < 12:
            break
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag == EXIF_ORIENTATION_TAG and kind == 3:  # SHORT
            (value,) = struct.unpack(order + "H", entry[8:10])
            return value if 1 <= value <= 8 else 1
    return 1


def _jpeg_geometry(data: bytes) -> ImageGeometry:
    orientation = 1
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
        if marker == JPEG_APP1 and orientation == 1:
            orientation = _exif_orientation(data[pos + 4:pos + 2 + length])
        if marker in JPEG_SOF_MARKERS:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return ImageGeometry(height, width, orientation)
        pos += 2 + length
    raise ImageHeaderError("JPEG header has no frame size (file cut off?)")


def read_image_geometry(path: str) -> Optional[ImageGeometry]:
    """Stored size and EXIF orientation of a PNG, JPEG or BMP file; None for other readable formats.

    Raises:
        OSError: the file cannot be opened.
        ImageHeaderError: empty file, unknown signature or a cut-off header.
    """
    with open(path, "rb") as handle:
        head = handle.read(HEADER_BYTES)
        if head.startswith(JPEG_SIGNATURE):
            return _jpeg_geometry(head + handle.read(JPEG_HEADER_BYTES))
    if not head:
        raise ImageHeaderError("empty file")
    if head.startswith(PNG_SIGNATURE):
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise ImageHeaderError("PNG header cut off")
        width, height = struct.unpack(">II", head[16:24])
        return ImageGeometry(height, width, 1)
    if head.startswith(BMP_SIGNATURE) and len(head) >= 26:
        width, height = struct.unpack("<ii", head[18:26])
        return ImageGeometry(abs(height), width, 1)  # a negative height means a top-down bitmap
    if cv2.haveImageReader(path):
        return None
    raise ImageHeaderError("not an image format OpenCV can read")


def read_image_size(path: str) -> Optional[Tuple[int, int]]:
    """(height, width) of the image as a viewer shows it (EXIF orientation applied), from the
    header of a PNG, JPEG or BMP file; None for other readable formats.

    Raises:
        as :func:`read_image_geometry`.
    """
    geometry = read_image_geometry(path)
    return None if geometry is None else geometry.upright_size


def jpeg_is_complete(data: bytes) -> bool:
    """False for a JPEG without an end-of-image marker after its last scan (a file cut short).

    In the entropy-coded data 0xFF is always followed by 0x00 or a restart marker, so 0xFFD9
    after the last start-of-scan can only be the end of the image. Non-JPEG data -> True.
    """
    if not data.startswith(JPEG_SIGNATURE):
        return True
    scan = data.rfind(JPEG_SOS)
    return scan >= 0 and data.find(JPEG_EOI, scan) >= 0


def orient_points(xy: np.ndarray, orientation: int, stored_height: int, stored_width: int) -> np.ndarray:
    """[n, 2] (x, y) coordinates on the stored pixels -> the same points on the upright image.

    Coordinates are continuous (pixel k spans [k, k + 1)), so corners map to corners.
    """
    x, y = xy[:, 0], xy[:, 1]
    h, w = float(stored_height), float(stored_width)
    mapped = {1: (x, y), 2: (w - x, y), 3: (w - x, h - y), 4: (x, h - y),
              5: (y, x), 6: (h - y, x), 7: (h - y, w - x), 8: (y, w - x)}[orientation]
    return np.stack(mapped, axis=1)


def orient_array(array: np.ndarray, orientation: int) -> np.ndarray:
    """An [H, W, ...] array of the stored pixels turned upright (as OpenCV's decoder does)."""
    turned = {1: array, 2: array[:, ::-1], 3: array[::-1, ::-1], 4: array[::-1],
              5: array.swapaxes(0, 1), 6: array[::-1].swapaxes(0, 1), 7: array[::-1, ::-1].swapaxes(0, 1),
              8: array[:, ::-1].swapaxes(0, 1)}[orientation]
    return np.ascontiguousarray(turned)
