"""Early stopping and the best checkpoint in src/evaluation/hook.py: the evaluation it stops at,
the state file, and a resume that carries on with the same best score and count.

The callback is driven as ``Model.train`` drives it (:func:`_train`): passes of
``steps_per_epoch`` steps with ``cur_step_num`` counted from 0 in every run, each pass closed by
``on_train_epoch_end``, a stop request ending the pass and the training. Epochs are whole ones of
the global step; a resumed run's passes and a stopped run's last pass end mid-epoch.
"""

import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest

from src.config import load_config
from src.evaluation import hook
from src.evaluation.hook import BEST_CKPT_NAME, EARLY_STOP_STATE_FILE, EvalCallback

pytestmark = pytest.mark.slow(20)

STEPS_PER_EPOCH = 3


class _Net:
    def set_train(self, mode=True):
        self.training = mode


class _Context:
    def __init__(self):
        self.cur_step_num = 0
        self.stopped = False

    def original_args(self):
        return SimpleNamespace(cur_step_num=self.cur_step_num)

    def request_stop(self):
        self.stopped = True


@pytest.fixture
def scripted_metrics(monkeypatch):
    """Evaluations return the next scripted segm AP (bbox AP = half of it); no data, no network."""
    script = []

    def fake_evaluate(net, dataset, evaluator, progress=False):
        value = script.pop(0)
        return {iou: {"AP": v, "AP50": v, "AP75": v} for iou, v in (("segm", value), ("bbox", value / 2))}

    monkeypatch.setattr(hook, "evaluate_model", fake_evaluate)
    split = SimpleNamespace(image_dir="", defect_counts={}, image_counts={})
    monkeypatch.setattr(hook, "build_eval_split", lambda config, num_parallel_workers=1: (None, None, split))
    import src.evaluation.report as report

    monkeypatch.setattr(report, "write_report", lambda *args, **kwargs: "report.html")
    return script


def _config(patience, metric="segm_AP", interval=1):
    return load_config(overrides={"eval_interval": interval, "early_stop_patience": patience,
                                  "early_stop_metric": metric})


def _callback(folder, patience, interval=1, metric="segm_AP", step_offset=0, saved=None, loss_callback=None):
    folder.mkdir(exist_ok=True)
    save = (lambda net, path: saved.append(path)) if saved is not None else (lambda net, path: None)
    return EvalCallback(_Net(), _config(patience, metric, interval), str(folder), interval, save, STEPS_PER_EPOCH,
                        step_offset=step_offset, loss_callback=loss_callback)


def _train(callback, epochs, signal_at=None, nan_at=None):
    """Drive ``callback`` as ``Model.train(epochs, initial_epoch=step_offset // STEPS_PER_EPOCH)``
    does, with the run's other callbacks stopping it: after the schedule's last step (LossCallBack),
    at a non-finite loss at ``nan_at`` (LossCallBack, before this callback) or at a signal received
    during step ``signal_at`` (SignalStopCallback, after it).

    Returns:
        ({global step: epoch evaluated in that step's or that pass's callbacks}, last global step).
    """
    context = _Context()
    callback.on_train_begin(context)
    evaluated = {}
    step = callback.step_offset

    def note_evaluation():
        if len(callback.records) > len(evaluated):
            evaluated[step] = callback.records[-1]["epoch"]

    for _ in range(callback.step_offset // STEPS_PER_EPOCH, epochs):
        for _ in range(STEPS_PER_EPOCH):
            context.cur_step_num += 1
            step = callback.step_offset + context.cur_step_num
            if step == nan_at:
                callback.loss_callback.error = FloatingPointError(f"loss became nan at step {step}")
            if step == nan_at or step == STEPS_PER_EPOCH * epochs:
                context.request_stop()
            callback.on_train_step_end(context)
            note_evaluation()
            if step == signal_at:
                context.request_stop()
            if context.stopped:
                break
        callback.on_train_epoch_end(context)
        note_evaluation()
        if context.stopped:
            break
    return evaluated, step


def test_stops_after_patience_evaluations_without_a_new_best(tmp_path, scripted_metrics):
    saved = []
    callback = _callback(tmp_path, patience=3, saved=saved)
    # best 0.3 at epoch 2; 0.2, 0.3 (a tie is no improvement), 0.25 -> third without a new best at epoch 5
    scripted_metrics.extend([0.1, 0.3, 0.2, 0.3, 0.25, 0.9])
    evaluated, last_step = _train(callback, epochs=6)
    assert evaluated == {3: 1, 6: 2, 9: 3, 12: 4, 15: 5} and last_step == 15
    assert callback.stopped_at_epoch == 5
    assert saved == [str(tmp_path / BEST_CKPT_NAME)] * 2  # epochs 1 and 2
    state = json.loads((tmp_path / EARLY_STOP_STATE_FILE).read_text())
    assert state["best_epoch"] == 2 and state["best_value"] == 0.3
    assert state["evaluations_without_improvement"] == 3 and state["metric"] == "segm_AP"
    assert scripted_metrics == [0.9]  # the evaluation after the stop never ran


def test_patience_zero_never_stops_and_the_metric_is_configurable(tmp_path, scripted_metrics):
    callback = _callback(tmp_path, patience=0)
    scripted_metrics.extend([0.5, 0.4, 0.3, 0.2, 0.1])
    assert _train(callback, epochs=5) == ({3: 1, 6: 2, 9: 3, 12: 4, 15: 5}, 15)
    bbox = _callback(tmp_path / "b", patience=1, metric="bbox_AP")
    scripted_metrics.extend([0.2, 0.4, 0.4])
    assert _train(bbox, epochs=5) == ({3: 1, 6: 2, 9: 3}, 9)
    assert bbox.best == {"epoch": 2, "value": 0.2}  # bbox AP = half the scripted segm AP


def test_resume_mid_epoch_keeps_best_score_and_count_and_evaluates_at_whole_epochs(tmp_path, scripted_metrics):
    """Every 2 epochs; the interrupted run evaluated epochs 2, 4, 6 and 8 and was killed at step 26
    with last.ckpt of step 20 (mid-epoch 7). The resumed run's passes are steps 21-23, 24-26, ...:
    it evaluates epochs 8 and 10 at steps 24 and 30 (not at its pass ends, 23 and 26), and stops
    at epoch 10 as the uninterrupted run does."""
    values = [0.1, 0.3, 0.2, 0.25, 0.2, 0.9]
    whole = _callback(tmp_path / "whole", patience=3, interval=2)
    scripted_metrics.extend(values)
    assert _train(whole, epochs=12) == ({6: 2, 12: 4, 18: 6, 24: 8, 30: 10}, 30)
    scripted_metrics.clear()

    first = _callback(tmp_path / "run", patience=3, interval=2)
    scripted_metrics.extend(values[:4])
    assert _train(first, epochs=12, signal_at=26) == ({6: 2, 12: 4, 18: 6, 24: 8}, 26)
    resumed = _callback(tmp_path / "run", patience=3, interval=2, step_offset=20)
    resumed.restore()
    assert resumed.evaluations == [{"epoch": 2, "value": 0.1}, {"epoch": 4, "value": 0.3},
                                   {"epoch": 6, "value": 0.2}]  # epoch 8 is after last.ckpt: run again
    assert resumed.best == {"epoch": 4, "value": 0.3} and resumed.evaluations_without_improvement == 1
    scripted_metrics.extend(values[3:])
    assert _train(resumed, epochs=12) == ({24: 8, 30: 10}, 30)
    assert resumed.stopped_at_epoch == 10 and scripted_metrics == [0.9]


def test_a_resumed_run_whose_last_pass_ends_early_evaluates_the_last_epoch_once(tmp_path, scripted_metrics):
    """Resumed at step 4 of a 4-epoch run: passes 5-7, 8-10, 11-12 (the last one stopped after the
    schedule's last step); epochs 2, 3 and 4 are evaluated at steps 6, 9 and 12."""
    callback = _callback(tmp_path, patience=0, step_offset=4)
    scripted_metrics.extend([0.1, 0.2, 0.3, 0.4])
    assert _train(callback, epochs=4) == ({6: 2, 9: 3, 12: 4}, 12)
    assert scripted_metrics == [0.4]


def test_a_run_stopped_mid_epoch_does_not_evaluate_the_partial_epoch(tmp_path, scripted_metrics):
    callback = _callback(tmp_path, patience=0)
    scripted_metrics.extend([0.1, 0.2, 0.3])
    # SIGINT during step 7 (epoch 3 has 2 of its 3 steps): the pass ends there and MindSpore calls
    # on_train_epoch_end.
    assert _train(callback, epochs=5, signal_at=7) == ({3: 1, 6: 2}, 7)
    assert [e["epoch"] for e in json.loads((tmp_path / EARLY_STOP_STATE_FILE).read_text())["evaluations"]] == [1, 2]


def test_a_signal_at_the_last_step_of_an_epoch_still_evaluates_it(tmp_path, scripted_metrics):
    callback = _callback(tmp_path, patience=0)
    scripted_metrics.extend([0.1, 0.2, 0.3])
    assert _train(callback, epochs=5, signal_at=6) == ({3: 1, 6: 2}, 6)


def test_no_evaluation_at_the_step_of_a_non_finite_loss(tmp_path, scripted_metrics):
    """A NaN at step 6, the last of epoch 2: the weights were not updated on that step, the epoch is
    not complete."""
    callback = _callback(tmp_path, patience=0, loss_callback=SimpleNamespace(error=None))
    scripted_metrics.extend([0.1, 0.2])
    assert _train(callback, epochs=5, nan_at=6) == ({3: 1}, 6)


def test_an_epoch_is_evaluated_once(tmp_path, scripted_metrics):
    callback = _callback(tmp_path, patience=0)
    scripted_metrics.extend([0.1, 0.2])
    context = _Context()
    context.cur_step_num = STEPS_PER_EPOCH
    callback.on_train_step_end(context)
    callback.on_train_step_end(context)  # the same global step again
    callback.on_train_epoch_end(context)
    assert [r["epoch"] for r in callback.records] == [1] and scripted_metrics == [0.2]
    resumed = _callback(tmp_path, patience=0, step_offset=STEPS_PER_EPOCH)  # from the epoch-1 checkpoint
    resumed.restore()
    assert resumed.evaluations == [{"epoch": 1, "value": 0.1}]
    assert _train(resumed, epochs=2) == ({6: 2}, 6)


def test_a_state_of_another_metric_is_not_taken(tmp_path, scripted_metrics):
    first = _callback(tmp_path, patience=2)
    scripted_metrics.extend([0.5, 0.1])
    _train(first, epochs=2)
    other = _callback(tmp_path, patience=2, metric="segm_AP50", step_offset=2 * STEPS_PER_EPOCH)
    other.restore()
    assert other.evaluations == []


def test_early_stopping_keys_are_checked():
    with pytest.raises(ValueError, match=r"key 'early_stop_patience' = 2 needs evaluations in training: set "
                                         r"eval_interval > 0"):
        load_config(overrides={"early_stop_patience": 2})
    with pytest.raises(ValueError, match=r"key 'early_stop_metric' = 'AP' must be one of bbox_AP, bbox_AP50, "
                                         r"bbox_AP75, segm_AP, segm_AP50, segm_AP75"):
        load_config(overrides={"early_stop_metric": "AP"})
    with pytest.raises(ValueError, match=r"key 'early_stop_patience' = -1 must not be negative"):
        load_config(overrides={"early_stop_patience": -1, "eval_interval": 1})
    with pytest.raises(ValueError, match=r"EvalCallback: steps_per_epoch must be >= 1, got 0"):
        EvalCallback(_Net(), _config(1), ".", 1, print, 0)


# ---------------------------------------------------------------------------------------------
# through train.py: interrupted by a signal mid-epoch, resumed with --resume
# ---------------------------------------------------------------------------------------------

def _tiny_split(folder, name, count):
    """``count`` 64x64 JPEGs with one painted box each, and their annotation file."""
    from helpers import painted, rect_ann, write_json, write_photo

    images, anns = [], []
    for k in range(count):
        box = (6 + 4 * k, 8, 40 + 4 * k, 44)
        write_photo(str(folder / name / f"{k}.jpg"), painted(64, 64, [(box, (200, 40 + 50 * k, 60))]))
        images.append({"id": k + 1, "file_name": f"{k}.jpg", "height": 64, "width": 64})
        anns.append(rect_ann(k + 1, k + 1, 1, box))
    return write_json(str(folder / f"{name}.json"), {"images": images, "annotations": anns,
                                                      "categories": [{"id": 1, "name": "book"}]})


def _weights_digest(named_arrays):
    """SHA-256 over the sorted names and the bytes of ``{name: array}``."""
    digest = hashlib.sha256()
    for name in sorted(named_arrays):
        digest.update(name.encode("utf-8") + np.ascontiguousarray(named_arrays[name]).tobytes())
    return digest.hexdigest()


def test_train_stops_at_the_right_evaluation_after_an_interrupt_and_resume(tmp_path, monkeypatch, request):
    """train.py --eval_interval 1 --early_stop_patience 2 over 5 epochs of one step; the training,
    checkpoints, signal and resume are real, the segm AP of each evaluation is scripted:

    run 1: epoch 1 0.3 (best, best.ckpt), epoch 2 0.2; SIGINT during step 2: exit 130.
    run 2 (--resume last.ckpt): epoch 3 0.25 is the second evaluation without a new best: stop
    there, best.ckpt still the weights of epoch 1. Had the resume lost the best score, epoch 3
    would be a new best; had it lost the count, training would go on to epoch 4's 0.9.

    The network runs in PyNative mode: a graph compile costs most of a minute per run, more than
    these 3 steps (graph-mode training: tests/engine/test_trainer.py). Where a resumed run's passes
    end mid-epoch: the callback-level tests above."""
    import signal

    import mindspore as ms

    import train
    from src.checkpoint.io import read_checkpoint_with_metadata
    from src.engine import callbacks as engine_callbacks
    from src.engine import runtime
    from src.evaluation import report as report_module

    graph_context = runtime.set_mindspore_context
    monkeypatch.setattr(runtime, "set_mindspore_context",
                        lambda device, seed=None, graph_mode=True: graph_context(device, seed, graph_mode=False))
    request.addfinalizer(lambda previous=ms.get_context("mode"): ms.set_context(mode=previous))

    run_dir = tmp_path / "run"
    segm_ap_of_epoch = {1: 0.3, 2: 0.2, 3: 0.25, 4: 0.9, 5: 0.9}
    evaluated = []  # (last global step logged, segm AP given, digest of the network's weights)

    def scripted_evaluation(net, dataset, evaluator, progress=False):
        step = int((run_dir / "losses.csv").read_text().splitlines()[-1].split(",")[1])
        value = segm_ap_of_epoch[step]  # one step per epoch
        evaluated.append((step, value, _weights_digest({p.name: p.asnumpy() for p in net.get_parameters()})))
        return {iou: {"AP": v, "AP50": v, "AP75": v} for iou, v in (("segm", value), ("bbox", value / 2))}

    reports = []
    monkeypatch.setattr(hook, "evaluate_model", scripted_evaluation)
    monkeypatch.setattr(report_module, "write_report", lambda out, ev, metrics, image_dir, info: reports.append(info))

    interrupt_at = {"step": 2}
    log_step = engine_callbacks.LossCallBack.on_train_step_end

    def log_then_interrupt(self, run_context):  # Ctrl-C while step 2 runs
        log_step(self, run_context)
        if self.history and self.history[-1]["step"] == interrupt_at["step"]:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(engine_callbacks.LossCallBack, "on_train_step_end", log_then_interrupt)

    args = ["--train_ann_file", _tiny_split(tmp_path, "train", 2), "--train_image_dir", str(tmp_path / "train"),
            "--val_ann_file", _tiny_split(tmp_path, "val", 1), "--val_image_dir", str(tmp_path / "val"),
            "--coco_classes", "[background, book]", "--run_dir", str(run_dir),
            "--img_height", "64", "--img_width", "64", "--batch_size", "2", "--epoch_size", "5",
            "--eval_interval", "1", "--early_stop_patience", "2", "--keep_checkpoint_max", "0",
            "--fpn_channels", "32", "--box_head_channels", "64", "--mask_head_channels", "32",
            "--rpn_pre_nms_top_k_train", "200", "--rpn_post_nms_top_k_train", "50", "--rpn_pre_nms_top_k_test", "100",
            "--rpn_post_nms_top_k_test", "50", "--rcnn_num_samples", "32", "--warmup_steps", "1",
            "--compile_cache_dir", "null", "--num_parallel_workers", "1", "--log_every", "1", "--tensorboard", "false"]
    assert train.main(args) == train.EXIT_INTERRUPTED
    assert [(step, value) for step, value, _ in evaluated] == [(1, 0.3), (2, 0.2)]
    best = run_dir / BEST_CKPT_NAME
    best_bytes = best.read_bytes()
    interrupt_at["step"] = None
    assert train.main(args + ["--resume", str(run_dir / "last.ckpt")]) == train.EXIT_OK
    assert [(step, value) for step, value, _ in evaluated[2:]] == [(3, 0.25)]

    state = json.loads((run_dir / EARLY_STOP_STATE_FILE).read_text())
    assert [(e["epoch"], e["value"]) for e in state["evaluations"]] == [(1, 0.3), (2, 0.2), (3, 0.25)]
    assert (state["best_epoch"], state["best_value"], state["evaluations_without_improvement"]) == (1, 0.3, 2)
    history = [json.loads(line) for line in (run_dir / hook.EVAL_HISTORY_FILE).read_text().splitlines()]
    assert [(r["epoch"], r["segm_AP"]) for r in history] == [(1, 0.3), (2, 0.2), (3, 0.25)]
    log = (run_dir / "train.log").read_text()
    assert "best segm_AP 0.3000 at epoch 1, 1 evaluations since" in log
    assert ("early stopping at epoch 3: segm_AP has not improved for 2 evaluations (best 0.3000 at epoch 1, "
            f"kept in {best})") in log
    steps = [int(line.split(",")[1]) for line in (run_dir / "losses.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3]  # stopped after step 3 of 5
    # best.ckpt: the weights evaluated at epoch 1, left alone by the resumed run
    assert best.read_bytes() == best_bytes and [r["epoch"] for r in reports] == [1]
    best_weights = {name: p.asnumpy() for name, p in read_checkpoint_with_metadata(str(best))[0].items()}
    assert _weights_digest(best_weights) == evaluated[0][2]
    assert len({digest for _, _, digest in evaluated}) == 3  # the weights changed at every step
