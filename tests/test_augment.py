"""src/augment.py: every augmentation keeps boxes on their masks and labels with their instances;
the crop never leaves an image whose instances all vanished; the pipeline is reproducible for a
seed with 1 and 2 workers."""

import cv2
import numpy as np
import pytest

from src import augment, synthetic
from src.augment import (HorizontalFlip, PhotometricDistortion, RandomCrop, Resize, Sample,
                         apply_augmentations, build_augmentations, crop_instances, mask_extents,
                         sample_rng)
from src.config import Config
from src.data_sources import EpochSampler
from src.dataset import create_new_dataset

# label -> flat colour painted under the instance (far apart, so bilinear edges stay nearest).
COLOURS = {1: (230, 30, 30), 2: (30, 60, 230), 3: (30, 220, 40)}
GREY = 128


def _scene(h=120, w=160):
    """Grey image with a book-ish rectangle (1), a disc (2), an L-shape (3) and a crowd region."""
    img = np.full((h, w, 3), GREY, np.uint8)
    masks = np.zeros((4, h, w), np.uint8)
    masks[0, 10:70, 20:60] = 1
    cv2.ellipse(masks[1], (110, 40), (25, 18), 0, 0, 360, 1, -1)
    masks[2, 80:115, 90:100] = 1
    masks[2, 105:115, 100:150] = 1
    masks[3, 85:100, 10:30] = 1
    labels = [1, 2, 3, 1]
    for k, label in enumerate(labels):
        img[masks[k].astype(bool)] = COLOURS[label]
    boxes, _ = mask_extents(masks)
    annos = np.concatenate([boxes, np.array(labels, np.float32)[:, None],
                            np.array([0, 0, 0, 1], np.float32)[:, None]], axis=1)
    return Sample(img, annos, masks)


AUGMENTATIONS = {
    "crop": RandomCrop(1.0, 0.3),
    "resize": Resize(96, 128),
    "resize_stretch": Resize(96, 128, keep_ratio=False),
    "jitter_range": Resize(96, 128, factor_range=(0.5, 2.0)),
    "jitter_list": Resize(96, 128, factors=(0.75, 1.5, 2.5)),
    "flip": HorizontalFlip(1.0),
    "photometric": PhotometricDistortion(),
}


def _check_alignment(out: Sample, check_colours: bool = True):
    assert out.masks.shape == (len(out.annos),) + out.image.shape[:2]
    extents, nonempty = mask_extents(out.masks)
    assert nonempty.all(), "an instance without pixels was kept"
    # Boxes equal their masks' extent within a pixel.
    np.testing.assert_allclose(out.annos[:, :4], extents, atol=1.0)
    if check_colours:
        # Labels stay with their instances: most mask pixels have the colour of the row's label.
        for k in range(len(out.annos)):
            label = int(out.annos[k, 4])
            pixels = out.image[out.masks[k].astype(bool)].astype(np.int32)
            dist = {lab: np.abs(pixels - np.array(c)).sum(axis=1) for lab, c in COLOURS.items()}
            nearest = np.argmin(np.stack([dist[lab] for lab in sorted(dist)]), axis=0) + 1
            assert (nearest == label).mean() > 0.9, (k, label)


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_each_augmentation_keeps_boxes_on_masks_and_labels_on_instances(name):
    aug = AUGMENTATIONS[name]
    scene = _scene()
    changed = 0
    for seed in range(12):
        out = aug(scene, sample_rng(seed, 0, 3))
        _check_alignment(out, check_colours=name != "photometric")
        changed += not np.array_equal(out.image, scene.image)
        if name.startswith(("resize", "jitter")):
            assert out.image.shape[0] <= 96 and out.image.shape[1] <= 128
        if name == "photometric":
            np.testing.assert_array_equal(out.annos, scene.annos)
            np.testing.assert_array_equal(out.masks, scene.masks)
    assert changed >= 6  # the augmentation really does something for most seeds


def test_full_list_keeps_alignment_and_real_instances():
    cfg = Config().replace(img_height=96, img_width=128, crop_prob=1.0, crop_min_side=0.3,
                           scale_jitter_range=[0.5, 2.0], photometric_distortion=True, flip_ratio=0.5)
    augs = build_augmentations(cfg)
    assert [type(a).__name__ for a in augs] == ["RandomCrop", "Resize", "HorizontalFlip",
                                                "PhotometricDistortion"]
    for seed in range(10):
        out = apply_augmentations(augs, _scene(), sample_rng(seed, 1, 0))
        _check_alignment(out, check_colours=False)
        assert (out.annos[:, 5] == 0).any()


def test_scale_jitter_factor_changes_object_size():
    """Factor 0.5 halves the object compared with the plain resize; 2.0 doubles it (cropping)."""
    scene = _scene()
    plain = Resize(96, 128)(scene, sample_rng(0, 0, 0))
    half = Resize(96, 128, factors=(0.5,))(scene, sample_rng(0, 0, 0))
    double = Resize(96, 128, factors=(2.0,))(scene, sample_rng(0, 0, 0))
    assert plain.image.shape[:2] == (96, 128) and half.image.shape[:2] == (48, 64)
    assert double.image.shape[:2] == (96, 128)  # cropped back to the input
    assert half.scale_h == pytest.approx(plain.scale_h / 2) and double.scale_h == pytest.approx(plain.scale_h * 2)
    area = lambda s, k: int(s.masks[k].sum())  # noqa: E731
    assert area(half, 0) == pytest.approx(area(plain, 0) / 4, rel=0.1)
    assert area(double, 0) <= 4.4 * area(plain, 0)


def test_crop_clips_cut_instances_and_drops_almost_vanished_ones():
    scene = _scene()
    # Window rows 0..40, cols 0..115: the rectangle (rows 10..70) is cut to rows 10..40, 29% of
    # the disc stays (kept, box = its visible extent), the L-shape and the crowd are outside.
    out = crop_instances(scene, 0, 0, 40, 115, augment.MIN_KEPT_FRACTION)
    np.testing.assert_array_equal(out.annos[:, 4], [1, 2])
    np.testing.assert_allclose(out.annos[0, :4], [20, 10, 60, 40])
    np.testing.assert_allclose(out.annos[1, :4], mask_extents(scene.masks[1:2, :40, :115])[0][0])
    assert out.annos[1, 2] == 115 and out.annos[1, 3] == 40
    # Cols 0..100 leave 12% of the disc: dropped.
    np.testing.assert_array_equal(crop_instances(scene, 0, 0, 40, 100, augment.MIN_KEPT_FRACTION).annos[:, 4], [1])
    # A window away from every real instance is refused (None), not returned empty.
    assert crop_instances(scene, 85, 0, 120, 40, augment.MIN_KEPT_FRACTION) is None


def test_random_crop_never_returns_an_image_whose_instances_all_vanished():
    img = np.full((200, 200, 3), GREY, np.uint8)
    masks = np.zeros((1, 200, 200), np.uint8)
    masks[0, 190:196, 2:8] = 1  # one tiny object in a corner
    scene = Sample(img, np.array([[2, 190, 8, 196, 1, 0]], np.float32), masks)
    crop = RandomCrop(1.0, 0.1)
    outcomes = set()
    for seed in range(40):
        out = crop(scene, sample_rng(seed, 0, 0))
        assert len(out.annos) == 1 and out.masks.sum() > 0
        outcomes.add("skipped" if out is scene else "cropped")
    # Both ways of handling it happen: a window that keeps the object, or no crop at all.
    assert outcomes == {"skipped", "cropped"}


def test_epoch_sampler_shards_cover_the_set_and_epochs_differ():
    shards = [list(EpochSampler(7, seed=3, num_shards=2, shard_id=k)) for k in range(2)]
    assert len(shards[0]) == len(shards[1]) == 4
    assert set(shards[0]) | set(shards[1]) == set(range(7))
    sampler = EpochSampler(7, seed=3)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == list(range(7)) and sorted(k - 7 for k in second) == list(range(7))
    assert [k % 7 for k in first] != [k % 7 for k in second]


def _batches(root, workers, epochs=2, shuffle=True):
    cfg = Config().replace(coco_root=str(root), coco_classes=["background", "book", "disc", "triangle"],
                           max_instance_count=8, img_height=96, img_width=128, num_parallel_workers=workers,
                           crop_prob=0.5, scale_jitter_range=[0.6, 1.6], photometric_distortion=True, seed=5)
    pipeline = create_new_dataset(str(root), 2, True, workers, cfg, shuffle=shuffle)
    iterator = pipeline.create_tuple_iterator(num_epochs=epochs, output_numpy=True)
    return [[np.stack(col) for col in zip(*[b for b in iterator])] for _ in range(epochs)]


def test_pipeline_reproducible_with_one_and_two_workers(tmp_path):
    synthetic.generate(str(tmp_path), 6, 0, seed=2, style="solid")
    one, two = _batches(tmp_path, 1), _batches(tmp_path, 2)
    for epoch in range(2):
        for a, b in zip(one[epoch], two[epoch]):
            np.testing.assert_array_equal(a, b)
    # The shuffled order differs between epochs; in a fixed order the augmentation does too.
    assert not np.array_equal(one[0][0], one[1][0])
    fixed = _batches(tmp_path, 1, shuffle=False)
    assert not np.array_equal(fixed[0][0], fixed[1][0])


@pytest.mark.parametrize("values, key", [
    ({"scale_jitter_range": [0.5, 1.0, 2.0]}, "scale_jitter_range"),
    ({"scale_jitter_range": [1.5, 0.5]}, "scale_jitter_range"),
    ({"scale_jitter_list": [0.0, 1.0]}, "scale_jitter_list"),
    ({"scale_jitter_range": [0.5, 1.5], "scale_jitter_list": [1.0]}, "scale_jitter_list"),
    ({"crop_prob": 1.5}, "crop_prob"),
    ({"crop_min_side": 0.0}, "crop_min_side"),
])
def test_bad_augmentation_keys_name_the_key(values, key):
    from src.config import ConfigError

    with pytest.raises(ConfigError, match=f"key '{key}' = "):
        Config().replace(**values)
