"""Evaluation during training: a MindSpore callback that evaluates every few epochs and keeps the best model."""

from __future__ import annotations

import json
import logging
import math
import os

from mindspore.train.callback import Callback

from src.evaluation.coco_eval import IOU_TYPES
from src.evaluation.inference import build_eval_split, evaluate_model

logger = logging.getLogger(__name__)

# File in the checkpoint folder collecting one JSON line of metrics per evaluation in training.
EVAL_HISTORY_FILE = "eval_metrics.jsonl"
BEST_CKPT_NAME = "best.ckpt"
# Folder in the checkpoint folder with the report page of the best checkpoint (src/evaluation/report.py).
BEST_REPORT_DIR = "best_report"


class EvalCallback(Callback):
    """Evaluate on the val split every ``interval`` epochs during training; keep the best model.

    Appends ``{"epoch", "bbox_AP", "segm_AP", ...}`` to ``ckpt_dir/eval_metrics.jsonl`` and saves
    ``ckpt_dir/best.ckpt`` (with ``save_fn(net, path)``) whenever segm AP improves, together with
    the report page of that evaluation in ``ckpt_dir/best_report/report.html``.

    Args:
        net: the ``Mask_Rcnn_Resnet50`` being trained (switched to inference for the evaluation
            and back to training after it).
        config: the run's Config.
        ckpt_dir: folder of the run's checkpoints.
        interval: epochs between evaluations (>= 1).
        save_fn: ``save_fn(net, path)``, e.g. ``src.checkpoint.io.save_checkpoint_atomic``.
    """

    def __init__(self, net, config, ckpt_dir: str, interval: int, save_fn):
        super().__init__()
        if interval < 1:
            raise ValueError(f"EvalCallback: interval must be >= 1, got {interval}")
        self.net = net
        self.config = config
        self.ckpt_dir = ckpt_dir
        self.interval = int(interval)
        self.save_fn = save_fn
        self.best_segm_ap = -math.inf
        self._split = None

    def on_train_epoch_end(self, run_context) -> None:
        epoch = int(run_context.original_args().cur_epoch_num)
        if epoch % self.interval:
            return
        if self._split is None:
            self._split = build_eval_split(self.config, num_parallel_workers=1)
        dataset, evaluator, sub = self._split
        try:
            metrics = evaluate_model(self.net, dataset, evaluator, progress=False)
        finally:
            self.net.set_train(True)
        record = {"epoch": epoch}
        for iou_type in IOU_TYPES:
            for name in ("AP", "AP50", "AP75"):
                record[f"{iou_type}_{name}"] = metrics[iou_type][name]
        with open(os.path.join(self.ckpt_dir, EVAL_HISTORY_FILE), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        logger.info("epoch %d: bbox AP %.4f, segm AP %.4f", epoch, record["bbox_AP"], record["segm_AP"])
        if record["segm_AP"] > self.best_segm_ap:
            self.best_segm_ap = record["segm_AP"]
            path = os.path.join(self.ckpt_dir, BEST_CKPT_NAME)
            self.save_fn(self.net, path)
            logger.info("new best segm AP %.4f: saved %s", self.best_segm_ap, path)
            from src.evaluation.report import write_report

            report = write_report(os.path.join(self.ckpt_dir, BEST_REPORT_DIR), evaluator, metrics, sub.image_dir,
                                  info={"checkpoint": path, "epoch": epoch})
            logger.info("report of the best checkpoint: %s", report)
