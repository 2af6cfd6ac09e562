"""Early stopping and the best checkpoint in src/evaluation/hook.py: the evaluation it stops at,
the state file, and a resume that carries on with the same best score and count."""

import json
from types import SimpleNamespace

import pytest

from src.config import load_config
from src.evaluation import hook
from src.evaluation.hook import BEST_CKPT_NAME, EARLY_STOP_STATE_FILE, EvalCallback


class _Net:
    def set_train(self, mode=True):
        self.training = mode


class _Context:
    def __init__(self, epoch):
        self.epoch = epoch
        self.stopped = False

    def original_args(self):
        return SimpleNamespace(cur_epoch_num=self.epoch)

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
    monkeypatch.setattr(hook, "build_eval_split", lambda config, num_parallel_workers=1: (None, None, SimpleNamespace(image_dir="")))
    import src.evaluation.report as report

    monkeypatch.setattr(report, "write_report", lambda *args, **kwargs: "report.html")
    return script


def _config(patience, metric="segm_AP", interval=1):
    return load_config(overrides={"eval_interval": interval, "early_stop_patience": patience,
                                  "early_stop_metric": metric})


def _run(callback, script, values, first_epoch=1, interval=1):
    """Feed ``values`` as the evaluations of epochs first_epoch, +interval, ...; the epoch it stopped at."""
    script.extend(values)
    epoch = first_epoch
    for _ in values:
        context = _Context(epoch)
        callback.on_train_epoch_end(context)
        if context.stopped:
            return epoch
        epoch += interval
    return None


def test_stops_after_patience_evaluations_without_a_new_best(tmp_path, scripted_metrics):
    saved = []
    callback = EvalCallback(_Net(), _config(patience=3), str(tmp_path), 1, lambda net, path: saved.append(path))
    # best 0.3 at epoch 2; 0.2, 0.3 (a tie is no improvement), 0.25 -> third without a new best at epoch 5
    stopped = _run(callback, scripted_metrics, [0.1, 0.3, 0.2, 0.3, 0.25, 0.9])
    assert stopped == 5 and callback.stopped_at_epoch == 5
    assert saved == [str(tmp_path / BEST_CKPT_NAME)] * 2  # epochs 1 and 2
    state = json.loads((tmp_path / EARLY_STOP_STATE_FILE).read_text())
    assert state["best_epoch"] == 2 and state["best_value"] == 0.3
    assert state["evaluations_without_improvement"] == 3 and state["metric"] == "segm_AP"
    assert scripted_metrics == [0.9]  # the evaluation after the stop never ran


def test_patience_zero_never_stops_and_the_metric_is_configurable(tmp_path, scripted_metrics):
    callback = EvalCallback(_Net(), _config(patience=0), str(tmp_path), 1, lambda net, path: None)
    assert _run(callback, scripted_metrics, [0.5, 0.4, 0.3, 0.2, 0.1]) is None
    bbox = EvalCallback(_Net(), _config(patience=1, metric="bbox_AP"), str(tmp_path / "b"), 1, lambda n, p: None)
    (tmp_path / "b").mkdir()
    assert _run(bbox, scripted_metrics, [0.2, 0.4, 0.4]) == 3
    assert bbox.best == {"epoch": 2, "value": 0.2}  # bbox AP = half the scripted segm AP


def test_resume_keeps_best_score_and_count_and_stops_where_an_uninterrupted_run_does(tmp_path, scripted_metrics):
    values = [0.1, 0.3, 0.2, 0.25, 0.2, 0.9]
    whole = EvalCallback(_Net(), _config(patience=3, interval=2), str(tmp_path / "whole"), 2, lambda n, p: None)
    (tmp_path / "whole").mkdir()
    assert _run(whole, scripted_metrics, list(values), first_epoch=2, interval=2) == 10
    scripted_metrics.clear()

    run = tmp_path / "run"
    run.mkdir()
    first = EvalCallback(_Net(), _config(patience=3, interval=2), str(run), 2, lambda n, p: None)
    # killed after the evaluation of epoch 8, last.ckpt at epoch 6: the epoch-8 evaluation is run again
    assert _run(first, scripted_metrics, values[:4], first_epoch=2, interval=2) is None
    resumed = EvalCallback(_Net(), _config(patience=3, interval=2), str(run), 2, lambda n, p: None)
    resumed.restore(start_epoch=6)
    assert resumed.best == {"epoch": 4, "value": 0.3} and resumed.evaluations_without_improvement == 1
    assert _run(resumed, scripted_metrics, values[3:], first_epoch=8, interval=2) == 10


def test_a_state_of_another_metric_is_not_taken(tmp_path, scripted_metrics):
    first = EvalCallback(_Net(), _config(patience=2), str(tmp_path), 1, lambda n, p: None)
    _run(first, scripted_metrics, [0.5, 0.1])
    other = EvalCallback(_Net(), _config(patience=2, metric="segm_AP50"), str(tmp_path), 1, lambda n, p: None)
    other.restore(start_epoch=2)
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
