import numpy as np
import pytest

from src.config import load_config
from src.engine.lr_schedule import GRAPH_LR_MIN_LENGTH, build_lr_schedule, graph_lr_length, padded_for_graph


def test_warmup_then_step_decay_exact_values():
    cfg = load_config(overrides={"base_lr": 0.1, "warmup_steps": 4, "warmup_ratio": 0.0, "epoch_size": 10,
                                 "lr_schedule": "step", "lr_step_ratios": [0.5, 0.8], "lr_step_gamma": 0.1})
    lr = build_lr_schedule(cfg, steps_per_epoch=2)  # 20 steps
    assert lr.shape == (20,) and lr.dtype == np.float32
    np.testing.assert_allclose(lr[:5], [0.0, 0.025, 0.05, 0.075, 0.1], rtol=1e-6)
    np.testing.assert_allclose(lr[9], 0.1, rtol=1e-6)   # before the first milestone (step 10)
    np.testing.assert_allclose(lr[10], 0.01, rtol=1e-6)
    np.testing.assert_allclose(lr[15], 0.01, rtol=1e-6)
    np.testing.assert_allclose(lr[16], 0.001, rtol=1e-5)


def test_cosine_reaches_zero_at_the_end_and_is_monotone_after_warmup():
    cfg = load_config(overrides={"base_lr": 0.02, "warmup_steps": 4, "epoch_size": 4, "lr_schedule": "cosine"})
    lr = build_lr_schedule(cfg, steps_per_epoch=25)
    assert lr[4] == pytest.approx(0.02)
    assert np.all(np.diff(lr[4:]) <= 1e-9)
    assert lr[-1] < 0.02 * 0.01
    # Decay spans steps 4..100 (96 steps); at a quarter, half and three quarters of it the
    # half-cosine gives base/2 * (1 + cos(pi/4)), base/2 and base/2 * (1 - cos(pi/4)).
    # (A quadratic decay (1 - p)^2 would give 0.01125 at the quarter point.)
    half_sqrt2 = np.sqrt(2.0) / 2
    np.testing.assert_allclose(lr[[28, 52, 76]], [0.01 * (1 + half_sqrt2), 0.01, 0.01 * (1 - half_sqrt2)],
                               rtol=1e-5)


def test_warmup_is_capped_for_tiny_runs():
    cfg = load_config(overrides={"base_lr": 0.02, "warmup_steps": 500, "warmup_ratio": 0.1, "epoch_size": 1})
    lr = build_lr_schedule(cfg, steps_per_epoch=30)
    # warm-up capped at a third of the 30 steps: a linear ramp from base * 0.1 at step 0
    # (0.002, + 0.0018 a step) that is still below base at step 9; full rate from step 10
    np.testing.assert_allclose(lr[:10], 0.002 + 0.0018 * np.arange(10), rtol=1e-5)
    assert lr[9] < cfg.base_lr
    assert lr[10] == pytest.approx(cfg.base_lr, rel=1e-3)


def test_zero_steps_is_an_error():
    with pytest.raises(ValueError, match="steps_per_epoch must be positive"):
        build_lr_schedule(load_config(), 0)


def test_the_graphs_schedule_is_padded_to_a_power_of_two_with_the_last_rate():
    assert [graph_lr_length(n) for n in (1, 192, 1024, 1025, 5000)] == [1024, 1024, 1024, 2048, 8192]
    assert GRAPH_LR_MIN_LENGTH == 1024
    cfg = load_config(overrides={"base_lr": 0.02, "warmup_steps": 4, "epoch_size": 4, "lr_schedule": "cosine"})
    rates = build_lr_schedule(cfg, steps_per_epoch=25)
    padded = padded_for_graph(rates)
    assert padded.shape == (1024,) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[:100], rates)
    assert np.all(padded[100:] == rates[-1])
    # A longer run of the same order (a resume with more epochs) gives the graph the same length.
    longer = build_lr_schedule(cfg.replace(epoch_size=6), steps_per_epoch=25)
    assert padded_for_graph(longer).shape == padded.shape
