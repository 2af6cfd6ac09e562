"""A resumed run's data: the pipeline built with ``start_step`` yields exactly the batches the
uninterrupted pipeline yields from that step on (same items, order and augmentation), at an epoch
boundary and mid-epoch, with a batch size that leaves items over."""

import numpy as np
import pytest

from src import synthetic
from src.config import Config
from src.data_sources import EpochSampler
from src.dataset import create_new_dataset

IMAGES = 5  # batch 2: 2 steps per epoch, one item dropped each epoch
BATCH = 2


@pytest.fixture(scope="module")
def data_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    synthetic.generate(str(root), IMAGES, 0, seed=4, style="solid")
    return Config().replace(coco_root=str(root), coco_classes=["background", "book", "disc", "triangle"],
                            max_instance_count=8, img_height=64, img_width=96, num_parallel_workers=1,
                            flip_ratio=0.5, scale_jitter_range=[0.6, 1.4], photometric_distortion=True, seed=9)


def _batches(config, passes, start_step=0):
    """Every batch of ``passes`` MindSpore epochs, each as a list of numpy columns."""
    pipeline = create_new_dataset(config.coco_root, BATCH, True, 1, config, start_step=start_step)
    iterator = pipeline.create_tuple_iterator(num_epochs=passes, output_numpy=True)
    return [batch for _ in range(passes) for batch in iterator]


def _assert_same(batches, expected):
    assert len(batches) == len(expected)
    for got, want in zip(batches, expected):
        for column_got, column_want in zip(got, want):
            np.testing.assert_array_equal(column_got, column_want)


@pytest.mark.parametrize("start_step", [2, 3], ids=["epoch_boundary", "mid_epoch"])
def test_a_resumed_pipeline_continues_the_uninterrupted_one(data_config, start_step):
    uninterrupted = _batches(data_config, 3)
    assert len(uninterrupted) == 3 * (IMAGES // BATCH)
    resumed = _batches(data_config, 2, start_step=start_step)
    _assert_same(resumed[:len(uninterrupted) - start_step], uninterrupted[start_step:])
    # Not the data of the run's start (what a resume gave before).
    assert not np.array_equal(resumed[0][0], uninterrupted[0][0])


def test_every_pass_has_the_sampler_length_and_the_stream_skips_only_dropped_items():
    sampler = EpochSampler(5, seed=3, start_step=3, batch_size=2)
    passes = [list(sampler) for _ in range(2)]
    assert [len(p) for p in passes] == [5, 5]
    # step 3 is the second step of epoch 1 (0-based): items 2 and 3 of epoch 1's order, then epoch 2
    epoch_1 = EpochSampler(5, seed=3).epoch_order(1)
    epoch_2 = EpochSampler(5, seed=3).epoch_order(2)
    assert passes[0][:4] == [5 + int(i) for i in epoch_1[2:4]] + [10 + int(i) for i in epoch_2[:2]]
