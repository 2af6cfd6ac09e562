"""Inference over an eval split: the network's predictions batch by batch, fed to the evaluator.

:func:`build_eval_split` reads the val split once and returns its eval pipeline together with a
:class:`~src.evaluation.coco_eval.COCOEvaluator` over all of its images;
:func:`run_inference` runs the network over the pipeline; :func:`evaluate_model` does both
and returns the metrics. (Loading a whole-model checkpoint for inference:
``src.checkpoint.load.load_inference_checkpoint``.)
"""

from __future__ import annotations

from typing import Dict, Iterator, Optional, Tuple

import numpy as np

from src.evaluation.coco_eval import COCOEvaluator
from src.evaluation.results import to_numpy


def run_inference(net, dataset, progress: bool = True, max_batches: Optional[int] = None
                  ) -> Iterator[Tuple[Tuple[np.ndarray, ...], np.ndarray, np.ndarray]]:
    """Run the network over an eval dataset and yield its predictions batch by batch.

    Args:
        net: the network in inference mode (``net.set_train(False)`` is called here);
            ``net(image, image_shape)`` returns (boxes, scores, labels, valid, masks).
        dataset: a ``mindspore.dataset.Dataset`` with columns image, image_shape, image_id
            (from :func:`build_eval_split`); image_id -1 marks padding.
        progress: show a tqdm progress bar (on stderr).
        max_batches: stop after this many batches (None = all).

    Yields:
        (predictions as a tuple of 5 NumPy arrays, image_ids [B] i32, image_shapes [B, 4] f32).
    """
    import mindspore as ms  # heavy import kept out of module import time
    from tqdm import tqdm

    net.set_train(False)
    total = dataset.get_dataset_size()
    if max_batches is not None:
        total = min(total, max_batches)
    iterator = dataset.create_dict_iterator(num_epochs=1, output_numpy=True)
    with tqdm(total=total, desc="inference", unit="batch", disable=not progress) as bar:
        for index, batch in enumerate(iterator):
            if max_batches is not None and index >= max_batches:
                break
            image_shape = np.asarray(batch["image_shape"], dtype=np.float32)
            outputs = net(ms.Tensor(batch["image"]), ms.Tensor(image_shape))
            predictions = tuple(to_numpy(o) for o in outputs)
            yield predictions, np.asarray(batch["image_id"]).reshape(-1), image_shape
            bar.update(1)


def evaluate_model(net, dataset, evaluator: COCOEvaluator, progress: bool = True,
                   max_batches: Optional[int] = None) -> Dict[str, object]:
    """Reset ``evaluator``, run ``net`` over ``dataset`` and return ``evaluator.evaluate()``."""
    evaluator.reset()
    for predictions, image_ids, image_shapes in run_inference(net, dataset, progress, max_batches):
        evaluator.process(predictions, image_ids, image_shapes)
    return evaluator.evaluate()


# ---------------------------------------------------------------------------------------------
# The eval split
# ---------------------------------------------------------------------------------------------

def build_eval_split(config, data_root: Optional[str] = None, batch_size: Optional[int] = None,
                     num_parallel_workers: Optional[int] = None):
    """The eval dataset and an evaluator over the whole val split (its annotation file read once).

    Args:
        config: the run's Config; ``config.val_data_type`` is the split.
        data_root: COCO-format root (default ``config.coco_root``).
        batch_size: default ``config.batch_size``.
        num_parallel_workers: default ``config.num_parallel_workers``.

    Returns:
        (dataset with columns image, image_shape, image_id; COCOEvaluator over the cleaned
        annotations of the split (``COCOSubDataset.coco``); COCOSubDataset, whose ``image_counts``
        count the images left out because they cannot be decoded).

    Raises:
        DatasetError: the split cannot be read; with ``strict_images`` an image that cannot be
            decoded (one line naming the file).
    """
    from src.dataset import COCOSubDataset, create_eval_dataset

    root = data_root if data_root is not None else config.coco_root
    # Every image is decoded once at build time: one that cannot be is left out of the inference
    # and of the ground truth (the workers never meet it; skipping it there would leave its
    # objects in the ground truth as missed), and counted (an error with strict_images).
    sub = COCOSubDataset(root, is_training=False, config=config.replace(check_images=True))
    cat_ids = [sub.label_to_cat_id[label] for label in sorted(sub.label_to_cat_id)]
    evaluator = COCOEvaluator(sub.coco, cat_ids, sub.image_ids, config.mask_thr, sub.label_to_cat_id,
                              max_dets=config.test_max_per_img, numerics=config.numerics)
    dataset = create_eval_dataset(sub, batch_size or config.batch_size,
                                  num_parallel_workers or config.num_parallel_workers)
    return dataset, evaluator, sub


def split_report_info(sub) -> Dict[str, str]:
    """What a report page says about the split it scores (the ``COCOSubDataset`` of
    :func:`build_eval_split`): the annotation defects dropped or repaired, and the images left out
    because they cannot be decoded (both also counted in eval.py's ``metrics.json``)."""
    from src.annotations import defect_text

    unreadable = sub.image_counts.get("unreadable", 0)
    return {"annotation defects": defect_text(sub.defect_counts),
            "images left out": f"{unreadable} that cannot be decoded (cut off or corrupt)" if unreadable else "none"}
