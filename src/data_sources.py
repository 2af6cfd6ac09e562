"""What GeneratorDataset reads: the training order and the per-item work of the workers.

:class:`EpochSampler` gives the shuffled, sharded training order and carries the epoch of every
item to the workers; :class:`TrainSource` decodes, rasterises, augments (src/augment.py) and
packs one training item into the columns of src/batch.py; :class:`EvalSource` preprocesses one
evaluation item and pads the set to whole batches with PAD_IMAGE_ID items.
:func:`src.dataset.create_new_dataset` wires them into the pipeline.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from src import augment, transforms
from src.batch import PAD_IMAGE_ID
from src.config import Config

if TYPE_CHECKING:  # src.dataset imports this module
    from src.dataset import COCOSubDataset


class EpochSampler:
    """Shuffled training order that tells the source the epoch of every item.

    Each epoch's order is a permutation of this shard's indices drawn from ``(seed, epoch)``, and
    each item is yielded as ``epoch * len(dataset) + index``; the source splits that back into
    (epoch, index) and augments the item with ``augment.sample_rng(seed, epoch, index)``. So the
    order and the augmentation of every item depend only on the seed, never on which worker
    process handles it.

    The items a run trains on form one stream: the first ``steps_per_epoch * batch_size`` items
    of each epoch's order (the pipeline drops an incomplete last batch), epoch after epoch. Every
    pass (MindSpore's epoch) yields the next ``steps_per_epoch * batch_size`` of them, then the
    rest of that epoch's order, which the batcher drops (MindSpore wants ``len()`` items per
    pass). A resumed run (``start_step``) starts the stream where the interrupted one stopped,
    mid-epoch too: it trains on exactly the items, in the same order and with the same
    augmentation, as the uninterrupted run; its passes then end mid-epoch (the training
    callbacks count epochs from the global step).

    Args:
        size: number of items of the whole dataset.
        seed: the run's seed.
        shuffle: permute the order each epoch (else 0..size-1).
        num_shards, shard_id: data-parallel training: this shard's share of each permutation
            (the permutation is padded by wrapping so that every shard has the same length).
        start_step: global step (batches of ``batch_size``, over all epochs) already trained.
        batch_size: items per step.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True, num_shards: int = 1, shard_id: int = 0,
                 start_step: int = 0, batch_size: int = 1):
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.num_shards = num_shards
        self.shard_id = shard_id
        # items of each epoch that reach a batch (at least one, so that the stream advances)
        self.used_per_epoch = max(1, len(self) // batch_size * batch_size)
        self.position = start_step * batch_size  # in the stream of used items

    def __len__(self) -> int:
        return int(math.ceil(self.size / self.num_shards))

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This shard's indices in the order of ``epoch``."""
        order = (np.random.default_rng([self.seed, epoch]).permutation(self.size) if self.shuffle
                 else np.arange(self.size))
        return np.resize(order, len(self) * self.num_shards)[self.shard_id::self.num_shards]

    def __iter__(self):
        # A generator: MindSpore calls iter() while building the pipeline without consuming it,
        # so the stream only advances when a pass really starts.
        start = self.position
        self.position += self.used_per_epoch
        orders = {}
        epoch = start // self.used_per_epoch
        for position in range(start, start + self.used_per_epoch):
            epoch, offset = divmod(position, self.used_per_epoch)
            order = orders.setdefault(epoch, self.epoch_order(epoch))
            yield int(epoch * self.size + order[offset])
        # The rest of the pass, dropped by the batcher: the unused tail of the last epoch's order.
        for index in orders.get(epoch, self.epoch_order(epoch))[self.used_per_epoch:]:
            yield int(epoch * self.size + index)


class TrainSource:
    """Random-access source for GeneratorDataset: decode + rasterise + augment in the worker.

    Keys are ``epoch * len(dataset) + index`` (see :class:`EpochSampler`); a plain index is
    epoch 0. ``source[key]`` -> the TRAIN_COLUMNS of one item (src/batch.py).
    """

    def __init__(self, dataset: "COCOSubDataset", config: Config):
        self.dataset = dataset
        self.config = config
        self.augmentations = augment.build_augmentations(config)

    def __len__(self) -> int:
        return len(self.dataset)

    def augmented(self, key: int) -> augment.Sample:
        """The augmented sample of key ``epoch * len + index`` (image inside the input size)."""
        epoch, index = divmod(int(key), len(self.dataset))
        rng = augment.sample_rng(self.config.seed, epoch, index)
        index, img = self.dataset.decode_usable(index)  # an undecodable image: the next one, counted
        annos, masks = self.dataset.annotations(index)
        return augment.apply_augmentations(self.augmentations, augment.Sample(img, annos, masks), rng)

    def __getitem__(self, key: int):
        cfg = self.config
        sample = self.augmented(key)
        return transforms.pack_train(sample.image, sample.annos, sample.masks, sample.scale_h, sample.scale_w,
                                     cfg.img_height, cfg.img_width, cfg.max_instance_count,
                                     cfg.img_mean, cfg.img_std)


class EvalSource:
    """Eval items padded to whole batches: indices past the end repeat item 0 with image id
    PAD_IMAGE_ID. ``source[index]`` -> the EVAL_COLUMNS of one item (src/batch.py)."""

    def __init__(self, dataset: "COCOSubDataset", config: Config, batch_size: int):
        self.dataset = dataset
        self.config = config
        self.length = int(math.ceil(len(dataset) / batch_size)) * batch_size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        cfg = self.config
        index = int(index)
        real = index < len(self.dataset)
        item = index if real else 0
        image, image_shape = transforms.preprocess_eval(
            self.dataset.decode(item), cfg.img_height, cfg.img_width, cfg.img_mean, cfg.img_std,
            cfg.keep_ratio, cfg.resize_to)
        image_id = self.dataset.image_ids[item] if real else PAD_IMAGE_ID
        return image, image_shape, np.array(image_id, np.int32)
