"""Training augmentations: a list of small objects, each moving image, boxes and masks together.

:func:`build_augmentations` turns the config into the list; :func:`apply_augmentations` runs it
on one :class:`Sample` with one random generator. The generator comes from
:func:`sample_rng` ``(seed, epoch, index)``, so an item is augmented the same way whichever
worker process handles it (the epoch travels with the index, see
``src.data_sources.EpochSampler``).

Conventions as in src/transforms.py: images RGB ``[h, w, 3]`` uint8, boxes ``[x1, y1, x2, y2]``
in continuous pixels, masks ``[n, h, w]`` uint8. ``annos`` rows are ``(x1, y1, x2, y2, label,
iscrowd)``: real instances first, then crowd regions.

Order of the list: random crop (original pixels), resize to the network input (plain
keep-ratio resize, or scale jitter which may crop back to the input), horizontal flip,
photometric distortion (on the pixels the network sees).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from src import transforms
from src.config import Config

# An instance cut by a crop is dropped when less than this fraction of its pixels stays visible.
MIN_KEPT_FRACTION = 0.2
# Random crop windows drawn before giving up and leaving the image uncropped.
CROP_TRIES = 10
# Photometric distortion (the values of the usual SSD-style recipe): each of the four changes
# is applied with probability PHOTOMETRIC_PROB.
PHOTOMETRIC_PROB = 0.5
BRIGHTNESS_DELTA = 32.0  # added to every channel, uniform in [-delta, delta]
CONTRAST_RANGE = (0.5, 1.5)  # multiplies every channel
SATURATION_RANGE = (0.5, 1.5)  # multiplies HSV saturation
HUE_DELTA = 18  # added to HSV hue, OpenCV units (0..179 = 0..358 degrees)
OPENCV_HUE_PERIOD = 180


@dataclass
class Sample:
    """One training item on its way to the network.

    Attributes:
        image: [h, w, 3] uint8 RGB.
        annos: [n, 6] float32 (x1, y1, x2, y2, label, iscrowd), real instances then crowd.
        masks: [n, h, w] uint8.
        scale_h, scale_w: resize factor applied so far (output pixels per original pixel).
    """

    image: np.ndarray
    annos: np.ndarray
    masks: np.ndarray
    scale_h: float = 1.0
    scale_w: float = 1.0


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of item ``index`` in ``epoch`` (same bits in any worker process)."""
    return np.random.default_rng([seed, epoch, index])


def mask_extents(masks: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Tight boxes of masks.

    Args:
        masks: [n, h, w] uint8.

    Returns:
        (boxes [n, 4] float32 x1, y1, x2, y2 (0 for empty masks), nonempty [n] bool)
    """
    rows = masks.any(axis=2)  # [n, h]
    cols = masks.any(axis=1)  # [n, w]
    nonempty = rows.any(axis=1)
    h, w = masks.shape[1:]
    y1 = rows.argmax(axis=1)
    y2 = h - rows[:, ::-1].argmax(axis=1)
    x1 = cols.argmax(axis=1)
    x2 = w - cols[:, ::-1].argmax(axis=1)
    boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
    boxes[~nonempty] = 0.0
    return boxes, nonempty


def crop_instances(sample: Sample, y0: int, x0: int, y1: int, x1: int, min_fraction: float
                   ) -> Optional[Sample]:
    """Crop the window ``[y0:y1, x0:x1]`` keeping instances that stay visible enough.

    An instance cut by the window keeps its mask inside the window and gets the mask's extent
    as its box; one with less than ``min_fraction`` of its pixels left (or none) is dropped.

    Returns:
        The cropped sample, or None when every real (non-crowd) instance would be dropped.
    """
    image = sample.image[y0:y1, x0:x1]
    masks = sample.masks[:, y0:y1, x0:x1]
    annos = sample.annos.copy()
    if len(annos) == 0:
        return replace(sample, image=image, masks=masks)
    full = sample.masks.reshape(len(annos), -1).sum(axis=1, dtype=np.int64)
    seen = masks.reshape(len(annos), -1).sum(axis=1, dtype=np.int64)
    keep = (seen > 0) & (seen >= min_fraction * full)
    real = annos[:, 5] == 0
    if real.any() and not (keep & real).any():
        return None
    annos[:, [0, 2]] -= x0
    annos[:, [1, 3]] -= y0
    inside = ((annos[:, 0] >= 0) & (annos[:, 1] >= 0) & (annos[:, 2] <= x1 - x0)
              & (annos[:, 3] <= y1 - y0))
    # Boxes left whole are only moved; a cut instance's box is its visible mask's extent.
    cut = keep & ~inside
    if cut.any():
        annos[cut, :4], _ = mask_extents(masks[cut])
    return replace(sample, image=image, masks=np.ascontiguousarray(masks[keep]), annos=annos[keep])


def _random_window(rng: np.random.Generator, h: int, w: int, win_h: int, win_w: int):
    y0 = int(rng.integers(0, h - win_h + 1))
    x0 = int(rng.integers(0, w - win_w + 1))
    return y0, x0, y0 + win_h, x0 + win_w


class RandomCrop:
    """With probability ``prob``, crop a window whose sides are ``min_side..1`` of the image's.

    Instances cut by the window are clipped to it; those with less than
    ``MIN_KEPT_FRACTION`` of their pixels left are dropped. A window that would drop every
    real instance is redrawn up to ``CROP_TRIES`` times, then the image is left uncropped.
    """

    def __init__(self, prob: float, min_side: float):
        self.prob = prob
        self.min_side = min_side

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.prob:
            return sample
        h, w = sample.image.shape[:2]
        for _ in range(CROP_TRIES):
            win_h = max(int(round(h * rng.uniform(self.min_side, 1.0))), 1)
            win_w = max(int(round(w * rng.uniform(self.min_side, 1.0))), 1)
            cropped = crop_instances(sample, *_random_window(rng, h, w, win_h, win_w), MIN_KEPT_FRACTION)
            if cropped is not None:
                return cropped
        return sample

    def __repr__(self) -> str:
        return f"RandomCrop(prob={self.prob}, min_side={self.min_side})"


class Resize:
    """Keep-ratio (or stretch) resize into the network input, optionally with scale jitter.

    The target is ``factor * (out_h, out_w)`` with ``factor`` 1 (plain resize), drawn uniformly
    from ``factor_range`` or picked from ``factors``. A target larger than the input is reached
    by cropping, from the original, the window that becomes exactly the input after the resize
    (instance-aware like :class:`RandomCrop`; when every window tried would drop every instance,
    the factor falls back to 1). With ``resize_to = (short, long)`` the target is that box turned
    like the image instead of the input (``transforms.fit_scale``), times the factor.
    """

    def __init__(self, out_h: int, out_w: int, keep_ratio: bool = True,
                 factor_range: Sequence[float] = (), factors: Sequence[float] = (),
                 resize_to: Sequence[float] = ()):
        self.out_h, self.out_w = out_h, out_w
        self.keep_ratio = keep_ratio
        self.resize_to = tuple(resize_to)
        self.factor_range = tuple(factor_range)
        self.factors = tuple(factors)

    def _factor(self, rng: np.random.Generator) -> float:
        if self.factor_range:
            return float(rng.uniform(*self.factor_range))
        if self.factors:
            return float(self.factors[int(rng.integers(0, len(self.factors)))])
        return 1.0

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        factor = self._factor(rng)
        h, w = sample.image.shape[:2]
        scale_h, scale_w = transforms.fit_scale(h, w, self.out_h * factor, self.out_w * factor, self.keep_ratio,
                                                tuple(v * factor for v in self.resize_to))
        if round(h * scale_h) > self.out_h or round(w * scale_w) > self.out_w:
            win_h = min(h, int(self.out_h / scale_h))
            win_w = min(w, int(self.out_w / scale_w))
            for _ in range(CROP_TRIES):
                cropped = crop_instances(sample, *_random_window(rng, h, w, win_h, win_w),
                                         MIN_KEPT_FRACTION)
                if cropped is not None:
                    return self._resize(cropped, scale_h, scale_w)
            return self._resize_to_fit(sample)
        if factor == 1.0:
            return self._resize_to_fit(sample)
        return self._resize(sample, scale_h, scale_w)

    def _resize_to_fit(self, sample: Sample) -> Sample:
        """The plain resize of src/transforms.py (factor 1)."""
        image, scale_h, scale_w = transforms.rescale(sample.image, self.out_h, self.out_w, self.keep_ratio,
                                                     self.resize_to)
        return self._finish(sample, image, scale_h, scale_w)

    def _resize(self, sample: Sample, scale_h: float, scale_w: float) -> Sample:
        h, w = sample.image.shape[:2]
        new_h, new_w = transforms.scaled_size(h, w, scale_h, scale_w, self.out_h, self.out_w)
        image = transforms.resize_image(sample.image, new_h, new_w)
        return self._finish(sample, image, new_h / h, new_w / w)

    @staticmethod
    def _finish(sample: Sample, image: np.ndarray, scale_h: float, scale_w: float) -> Sample:
        new_h, new_w = image.shape[:2]
        annos = sample.annos.copy()
        annos[:, :4] = transforms.resize_boxes(annos[:, :4], scale_h, scale_w, new_h, new_w)
        masks = transforms.resize_masks(sample.masks, new_h, new_w)
        return Sample(image, annos, masks, sample.scale_h * scale_h, sample.scale_w * scale_w)

    def __repr__(self) -> str:
        jitter = (f", factor_range={list(self.factor_range)}" if self.factor_range else
                  f", factors={list(self.factors)}" if self.factors else "")
        target = f", resize_to={list(self.resize_to)}" if self.resize_to else ""
        return f"Resize({self.out_h}x{self.out_w}, keep_ratio={self.keep_ratio}{target}{jitter})"


class HorizontalFlip:
    """Mirror image, boxes and masks left-right with probability ``prob``."""

    def __init__(self, prob: float):
        self.prob = prob

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.prob:
            return sample
        annos = sample.annos.copy()
        image, annos[:, :4], masks = transforms.flip_horizontal(sample.image, sample.annos[:, :4], sample.masks)
        return replace(sample, image=np.ascontiguousarray(image), annos=annos,
                       masks=np.ascontiguousarray(masks))

    def __repr__(self) -> str:
        return f"HorizontalFlip(prob={self.prob})"


class PhotometricDistortion:
    """Random brightness, contrast, saturation and hue; boxes and masks are untouched."""

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        # Draw every number first, so the stream advances the same way whatever is applied.
        apply = rng.random(4) < PHOTOMETRIC_PROB
        brightness = rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)
        contrast = rng.uniform(*CONTRAST_RANGE)
        saturation = rng.uniform(*SATURATION_RANGE)
        hue = int(rng.integers(-HUE_DELTA, HUE_DELTA + 1))
        if not apply.any():
            return sample
        image = sample.image.astype(np.float32)
        if apply[0]:
            image += np.float32(brightness)
        if apply[1]:
            image *= np.float32(contrast)
        image = np.clip(image, 0, 255).astype(np.uint8)
        if apply[2] or apply[3]:
            hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
            if apply[2]:
                hsv[..., 1] = np.clip(hsv[..., 1].astype(np.float32) * np.float32(saturation), 0, 255
                                      ).astype(np.uint8)
            if apply[3]:
                hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + hue) % OPENCV_HUE_PERIOD).astype(np.uint8)
            image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return replace(sample, image=image)

    def __repr__(self) -> str:
        return "PhotometricDistortion()"


def build_augmentations(config: Config) -> List[object]:
    """The training augmentation list of ``config`` (see the augmentation keys in src/config.py)."""
    augs: List[object] = []
    if config.crop_prob > 0:
        augs.append(RandomCrop(config.crop_prob, config.crop_min_side))
    augs.append(Resize(config.img_height, config.img_width, config.keep_ratio,
                       factor_range=config.scale_jitter_range, factors=config.scale_jitter_list,
                       resize_to=config.resize_to))
    if config.flip_ratio > 0:
        augs.append(HorizontalFlip(config.flip_ratio))
    if config.photometric_distortion:
        augs.append(PhotometricDistortion())
    return augs


def apply_augmentations(augmentations: Sequence[object], sample: Sample, rng: np.random.Generator) -> Sample:
    """Run the list in order on one sample with one random stream."""
    for aug in augmentations:
        sample = aug(sample, rng)
    return sample
