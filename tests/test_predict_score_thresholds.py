"""predict.py --score_thr auto: per-class thresholds from report.json (no network: a stand-in returns fixed outputs)."""

import json

import numpy as np
import pytest

import predict as predict_cli
from helpers import FixedDetectionsNet as _FixedNet  # labels 1, 2, 1 with scores .9, .6, .4
from src.predictor import Predictor
from src.config import load_config
from src.engine.runtime import EXIT_BAD_INPUT


@pytest.fixture()
def config():
    return load_config(overrides={"img_height": 64, "img_width": 64, "coco_classes": ["background", "book", "disc"]})


def _kept(predictor):
    detections = predictor(np.zeros((64, 64, 3), np.uint8))
    return sorted(zip(detections.labels.tolist(), [round(float(s), 2) for s in detections.scores]))


def test_per_class_thresholds_filter_each_class(config, tmp_path):
    from src.evaluation.report_data import load_score_thresholds

    report = tmp_path / "report.json"
    report.write_text(json.dumps({"score_thresholds": {"book": 0.5, "disc": 0.7}}))
    thresholds = load_score_thresholds(str(report), config.coco_classes, 0.5)
    assert _kept(Predictor(_FixedNet(), config, thresholds, [1, 2])) == [(1, 0.9)]
    report.write_text(json.dumps({"score_thresholds": {"book": 0.3, "disc": 0.5}}))
    thresholds = load_score_thresholds(str(report), config.coco_classes, 0.5)
    assert _kept(Predictor(_FixedNet(), config, thresholds, [1, 2])) == [(1, 0.4), (1, 0.9), (2, 0.6)]
    # one number for every class, and --classes still applies
    assert _kept(Predictor(_FixedNet(), config, 0.5, [1, 2])) == [(1, 0.9), (2, 0.6)]
    assert _kept(Predictor(_FixedNet(), config, 0.0, [2])) == [(2, 0.6)]


def test_auto_without_report_is_a_one_line_error(tmp_path, capsys):
    image = tmp_path / "a.png"
    import cv2

    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    missing = tmp_path / "run" / "report.json"
    rc = predict_cli.main(["--ckpt", str(tmp_path / "x.ckpt"), "--input", str(image), "--out", str(tmp_path / "o"),
                           "--score_thr", "auto", "--report_json", str(missing)])
    assert rc == EXIT_BAD_INPUT
    errors = [line for line in capsys.readouterr().err.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"report file not found: {missing}" in errors[0]


def test_score_thr_must_be_a_number_or_auto(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict_cli.main(["--ckpt", "x", "--input", "y", "--out", "z", "--score_thr", "best"])
    assert exit_info.value.code == 2
    assert "--score_thr must be a number between 0 and 1 or 'auto', got 'best'" in capsys.readouterr().err
