"""Evaluation during training: a MindSpore callback that evaluates every few epochs, keeps the best
model and stops training early when the chosen metric stops improving."""

from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Optional

from mindspore.train.callback import Callback

from src.config import TRAINING_EVAL_METRICS
from src.engine.callbacks import epoch_position
from src.evaluation.inference import build_eval_split, evaluate_model, split_report_info

logger = logging.getLogger(__name__)

# File in the checkpoint folder collecting one JSON line of metrics per evaluation in training.
EVAL_HISTORY_FILE = "eval_metrics.jsonl"
BEST_CKPT_NAME = "best.ckpt"
# Folder in the checkpoint folder with the report page of the best checkpoint (src/evaluation/report.py).
BEST_REPORT_DIR = "best_report"
# File in the checkpoint folder with the evaluations early stopping and best.ckpt are decided on,
# rewritten atomically after each one; --resume reads it back (:meth:`EvalCallback.restore`).
EARLY_STOP_STATE_FILE = "early_stopping.json"


class EvalCallback(Callback):
    """Evaluate on the val split every ``interval`` epochs during training; keep the best model;
    stop early.

    Epochs are counted from the global step (``step_offset + cur_step_num``), as the training
    callbacks of src/engine/callbacks.py count them: the evaluation of epoch ``e`` runs at the end
    of the step that completes it (step ``e * steps_per_epoch``), once. ``Model.train``'s own epoch
    ends are not used: a resumed run's passes end mid-epoch (src/data_sources.py), and a run
    stopped mid-epoch (a NaN loss, a signal) ends its last pass early; a partial epoch is never
    evaluated, and neither is the step of a non-finite loss (``loss_callback.error``).

    The val split is read and checked when training begins (before the first step), so a missing
    or broken split fails the run at once. Each evaluation appends ``{"epoch", "bbox_AP",
    "segm_AP", ...}`` to ``ckpt_dir/eval_metrics.jsonl`` and saves ``ckpt_dir/best.ckpt`` (with
    ``save_fn(net, path)``) whenever ``config.early_stop_metric`` improves, together with the report
    page of that evaluation in ``ckpt_dir/best_report/report.html``. After
    ``config.early_stop_patience`` evaluations in a row without a new best (0 = never), training
    stops (``stopped_at_epoch``). The evaluations behind these decisions are kept in
    ``ckpt_dir/early_stopping.json`` so that ``--resume`` carries on with the same best score and
    count (:meth:`restore`).

    Args:
        net: the ``Mask_Rcnn_Resnet50`` being trained (switched to inference for the evaluation
            and back to training after it).
        config: the run's Config.
        ckpt_dir: folder of the run's checkpoints.
        interval: epochs between evaluations (>= 1).
        save_fn: ``save_fn(net, path)``, e.g. ``src.checkpoint.io.save_checkpoint_atomic``.
        steps_per_epoch: steps of a whole epoch.
        step_offset: global step at which this run started (``--resume``).
        loss_callback: the run's ``LossCallBack`` (placed before this callback); its ``error``
            stops all evaluations.
    """

    def __init__(self, net, config, ckpt_dir: str, interval: int, save_fn, steps_per_epoch: int,
                 step_offset: int = 0, loss_callback=None):
        super().__init__()
        if interval < 1:
            raise ValueError(f"EvalCallback: interval must be >= 1, got {interval}")
        if steps_per_epoch < 1:
            raise ValueError(f"EvalCallback: steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.net = net
        self.config = config
        self.ckpt_dir = ckpt_dir
        self.interval = int(interval)
        self.save_fn = save_fn
        self.steps_per_epoch = int(steps_per_epoch)
        self.step_offset = int(step_offset)
        self.loss_callback = loss_callback
        self.metric = config.early_stop_metric
        self.patience = config.early_stop_patience
        self.evaluations: List[Dict[str, float]] = []  # {"epoch", metric value} behind the decisions
        self.records: List[Dict[str, float]] = []  # this run's eval_metrics.jsonl lines
        self.stopped_at_epoch: Optional[int] = None
        self._split = None

    # ---- early-stopping state -------------------------------------------------------------
    @property
    def best(self) -> Optional[Dict[str, float]]:
        """The evaluation with the best metric so far (the first of equals), or None."""
        return max(self.evaluations, key=lambda e: e["value"], default=None)

    @property
    def evaluations_without_improvement(self) -> int:
        """Evaluations since the best one."""
        best = self.best
        return 0 if best is None else sum(e["epoch"] > best["epoch"] for e in self.evaluations)

    def _state_path(self) -> str:
        return os.path.join(self.ckpt_dir, EARLY_STOP_STATE_FILE)

    def _write_state(self) -> None:
        best = self.best
        state = {"metric": self.metric, "evaluations": self.evaluations,
                 "best_epoch": best["epoch"] if best else None, "best_value": best["value"] if best else None,
                 "evaluations_without_improvement": self.evaluations_without_improvement}
        tmp = self._state_path() + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(state, handle)
        os.replace(tmp, self._state_path())

    def restore(self) -> None:
        """Take back the evaluations of the interrupted run up to the last whole epoch before
        ``step_offset`` (where this run starts); later ones are run again. A state of another
        metric is ignored."""
        start_epoch = self.step_offset // self.steps_per_epoch
        path = self._state_path()
        if not os.path.isfile(path):
            return
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
        if state.get("metric") != self.metric:
            logger.warning("%s follows %s, this run %s: early stopping starts afresh", path, state.get("metric"),
                           self.metric)
            return
        self.evaluations = [e for e in state.get("evaluations", []) if e["epoch"] <= start_epoch]
        best = self.best
        if best is not None:
            logger.info("early stopping resumed from %s: best %s %.4f at epoch %d, %d evaluations since", path,
                        self.metric, best["value"], best["epoch"], self.evaluations_without_improvement)

    # ---- callback ---------------------------------------------------------------------------
    def on_train_begin(self, run_context) -> None:
        # Read and check the val split now rather than at the first evaluation, epochs later.
        if self._split is None:
            self._split = build_eval_split(self.config, num_parallel_workers=1)

    def on_train_step_end(self, run_context) -> None:
        if self.loss_callback is not None and self.loss_callback.error is not None:
            return
        _, epoch, step_in_epoch = epoch_position(run_context, self.step_offset, self.steps_per_epoch)
        if step_in_epoch or epoch % self.interval or any(e["epoch"] == epoch for e in self.evaluations):
            return
        self._evaluate(epoch, run_context)

    def _evaluate(self, epoch: int, run_context) -> None:
        """Evaluate the network after ``epoch``; log, keep the best and stop early."""
        if self._split is None:
            self._split = build_eval_split(self.config, num_parallel_workers=1)
        dataset, evaluator, sub = self._split
        try:
            metrics = evaluate_model(self.net, dataset, evaluator, progress=False)
        finally:
            self.net.set_train(True)
        record = {"epoch": epoch}
        for key in TRAINING_EVAL_METRICS:
            iou_type, name = key.split("_", 1)
            record[key] = metrics[iou_type][name]
        self.records.append(record)
        with open(os.path.join(self.ckpt_dir, EVAL_HISTORY_FILE), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        logger.info("epoch %d: bbox AP %.4f, segm AP %.4f", epoch, record["bbox_AP"], record["segm_AP"])
        previous_best = self.best
        self.evaluations.append({"epoch": epoch, "value": record[self.metric]})
        self._write_state()
        if previous_best is None or record[self.metric] > previous_best["value"]:
            path = os.path.join(self.ckpt_dir, BEST_CKPT_NAME)
            self.save_fn(self.net, path)
            logger.info("new best %s %.4f: saved %s", self.metric, record[self.metric], path)
            from src.evaluation.report import write_report

            report = write_report(os.path.join(self.ckpt_dir, BEST_REPORT_DIR), evaluator, metrics, sub.image_dir,
                                  info={"checkpoint": path, "epoch": epoch, **split_report_info(sub)})
            logger.info("report of the best checkpoint: %s", report)
        elif self.patience and self.evaluations_without_improvement >= self.patience:
            best = self.best
            self.stopped_at_epoch = epoch
            logger.info("early stopping at epoch %d: %s has not improved for %d evaluations (best %.4f at epoch "
                        "%d, kept in %s)", epoch, self.metric, self.evaluations_without_improvement, best["value"],
                        best["epoch"], os.path.join(self.ckpt_dir, BEST_CKPT_NAME))
            run_context.request_stop()
