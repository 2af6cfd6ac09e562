"""The trainer's resume decisions that need no network: where a resumed run starts, the command
it logs when a signal stops it."""

import pytest

from src.config import ConfigError
from src.engine import trainer


@pytest.fixture
def checkpoint_at_step(monkeypatch):
    """restore_train_state over a checkpoint saved at the given step (nothing is loaded)."""
    import src.checkpoint.load as load

    def restore(step, sink_mode):
        monkeypatch.setattr(load, "load_train_state", lambda cell, path, state: step)
        return trainer.restore_train_state(None, "RUN/last.ckpt", None, steps_per_epoch=3, sink_mode=sink_mode)

    return restore


def test_a_mid_epoch_checkpoint_continues_mid_epoch(checkpoint_at_step):
    assert checkpoint_at_step(7, sink_mode=False) == (2, 7)
    assert checkpoint_at_step(6, sink_mode=True) == (2, 6)


def test_a_mid_epoch_checkpoint_in_sink_mode_is_refused_with_the_fix(checkpoint_at_step):
    with pytest.raises(ConfigError, match=r"^RUN/last\.ckpt: saved mid-epoch \(step 7, 3 steps per epoch\); resume "
                                          r"it with --dataset_sink_mode false \(a sunk epoch cannot start mid-way\)$"):
        checkpoint_at_step(7, sink_mode=True)


def test_the_resume_command_replaces_an_earlier_resume_and_quotes_paths():
    argv = ["--config_path", "my recipe.yaml", "--resume", "old/last.ckpt", "--base_lr", "0.01", "--resume=x.ckpt"]
    assert trainer.resume_command(argv, "runs/a b/last.ckpt") == (
        "python train.py --config_path 'my recipe.yaml' --base_lr 0.01 --resume 'runs/a b/last.ckpt'")
