"""The fine-tuning run, as named builders a reader follows top to bottom: the run folder's lock,
the resume checkpoint, data, model, optimizer, train step, resume, the run folder, callbacks, then
``Model.train`` (:func:`train`).

``train.py`` parses the command line and calls :func:`train`; the run directory
(``config.run_dir``) receives the resolved config, ``losses.csv`` and the checkpoints (see
``train.py``'s help), and nothing before every input (data, checkpoints) has been read and
checked. In data-parallel runs rank 0 alone writes it (``src/engine/distributed.py``).
"""

import contextlib
import functools
import logging
import os
import shlex
import time
from typing import List, Optional, Sequence, Tuple

import yaml

from src.config import Config, ConfigError, resolve_path
from src.engine.runtime import EXIT_INTERRUPTED, EXIT_OK, EXIT_TRAINING_STOPPED, EnvironmentFailure

logger = logging.getLogger("train")


def write_run_config(config: Config, run_dir: str) -> None:
    """The resolved config as ``run_dir/config.yaml`` (the folder is created), written whole or
    not at all (a temporary file renamed over it).

    Raises:
        EnvironmentFailure: the file cannot be written (a full disk); the message names it.
    """
    path = os.path.join(run_dir, "config.yaml")
    partial = f"{path}.{os.getpid()}.partial"
    try:
        os.makedirs(run_dir, exist_ok=True)
        with open(partial, "w", encoding="utf-8") as handle:
            yaml.safe_dump(config.to_dict(), handle, sort_keys=False)
        os.replace(partial, path)
    except OSError as e:
        raise EnvironmentFailure(f"{path}: cannot write the run's config: {e.strerror or e}") from e
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def start_run_folder(config: Config, run_dir: str, resume_step: Optional[int]) -> None:
    """Once every input is checked: clear what killed checkpoint writes left, write
    ``config.yaml``, log to ``train.log``, and (``--resume``) drop the rows the interrupted run
    logged after ``resume_step``."""
    from src.checkpoint.io import remove_interrupted_writes
    from src.engine.loss_log import drop_rows_after_step
    from src.engine.runtime import add_log_file

    remove_interrupted_writes(run_dir)
    write_run_config(config, run_dir)
    add_log_file(os.path.join(run_dir, "train.log"))
    if resume_step is not None:
        drop_rows_after_step(os.path.join(run_dir, "losses.csv"), resume_step)


def resume_command(argv: Sequence[str], last_ckpt: str) -> str:
    """The command that continues this run: ``argv`` (train.py's arguments) with ``--resume last_ckpt``."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            args.append(arg)
    return shlex.join(["python", "train.py", *args, "--resume", last_ckpt])


def build_training_data(config: Config, rank: int, group_size: int, start_step: int = 0):
    """The training pipeline of this rank's shard, continuing after ``start_step`` steps (a resumed
    run); returns ``(dataset, steps_per_epoch)``."""
    from src.dataset import create_new_dataset

    image_dir, _ = config.split_paths(config.train_data_type)
    dataset = create_new_dataset(resolve_path(config.coco_root), config.batch_size, is_training=True,
                                 num_parallel_workers=config.num_parallel_workers, config=config,
                                 num_shards=group_size, shard_id=rank, start_step=start_step)
    steps_per_epoch = dataset.get_dataset_size()
    if steps_per_epoch == 0:
        raise ConfigError(f"{image_dir}: fewer training images than batch_size={config.batch_size}")
    logger.info("training set: %s, %d steps per epoch x %d epochs", image_dir, steps_per_epoch, config.epoch_size)
    return dataset, steps_per_epoch


def build_training_model(config: Config, pre_trained: str):
    """``Mask_Rcnn_Resnet50`` of the config with ``pre_trained`` loaded (if given)."""
    from src.checkpoint.load import load_pretrained
    from src.maskrcnn.builder import build_model

    net = build_model(config, pretrained_backbone=bool(pre_trained))
    if pre_trained:
        report = load_pretrained(net, pre_trained)
        logger.info("pre-trained weights: %s", report)
    return net


def optimizer_groups(net, weight_decay: float):
    """Weight decay on conv/dense weights only, not on biases and norm parameters."""
    trainable = net.trainable_params()
    decay = [p for p in trainable if p.name.endswith(".weight")]
    no_decay = [p for p in trainable if not p.name.endswith(".weight")]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(config: Config, net, steps_per_epoch: int, rank: int, group_size: int):
    """Momentum over :func:`optimizer_groups` with the LR schedule (scaled for data parallel).

    Returns:
        ``(optimizer, lr)``: ``lr`` is the run's per-step learning rates (the optimizer holds them
        padded, :func:`src.engine.lr_schedule.padded_for_graph`).
    """
    from mindspore import Tensor, nn

    from src.engine.distributed import scaled_base_lr
    from src.engine.lr_schedule import build_lr_schedule, padded_for_graph

    lr_base = scaled_base_lr(config.base_lr, group_size, config.lr_scaling)
    if group_size > 1:
        logger.info("rank %d of %d: global batch %d, base_lr %g (lr_scaling=%s)", rank, group_size,
                    group_size * config.batch_size, lr_base, config.lr_scaling)
    lr = build_lr_schedule(config.replace(base_lr=lr_base), steps_per_epoch)
    optimizer = nn.Momentum(optimizer_groups(net, config.weight_decay), learning_rate=Tensor(padded_for_graph(lr)),
                            momentum=config.momentum)
    return optimizer, lr


def build_train_step(config: Config, net, optimizer):
    """``TrainOneStepCell(WithLossCell(net, LossNet()), optimizer)`` with the config's loss scale
    and clip, in training mode."""
    from src.engine.train_step import LossNet, TrainOneStepCell, WithLossCell

    train_cell = TrainOneStepCell(WithLossCell(net, LossNet()), optimizer, loss_scale=config.loss_scale,
                                  dynamic_loss_scale=config.dynamic_loss_scale,
                                  grad_clip_norm=config.grad_clip_norm)
    train_cell.set_train(True)
    return train_cell


def restore_train_state(train_cell, resume: str, state, steps_per_epoch: int, sink_mode: bool) -> Tuple[int, int]:
    """Load the ``--resume`` checkpoint (``state``: read by ``read_train_state``) into the train
    step; returns ``(start_epoch, start_step)``.

    A checkpoint saved mid-epoch (a run stopped by a signal) continues mid-epoch: the data
    pipeline skips the steps already taken (``build_training_data(start_step=...)``).

    Raises:
        ConfigError: a mid-epoch checkpoint with ``dataset_sink_mode`` (a sunk epoch cannot start
            mid-way).
    """
    from src.checkpoint.load import load_train_state

    global_step = load_train_state(train_cell, resume, state)
    if sink_mode and global_step % steps_per_epoch:
        raise ConfigError(f"{resume}: saved mid-epoch (step {global_step}, {steps_per_epoch} steps per epoch); "
                          f"resume it with --dataset_sink_mode false (a sunk epoch cannot start mid-way)")
    start_epoch = global_step // steps_per_epoch
    logger.info("resumed from %s at global step %d (epoch %d)", resume, global_step, start_epoch)
    return start_epoch, global_step


def build_callbacks(config: Config, net, run_dir: str, writer: bool, steps_per_epoch: int, lr,
                    start_step: int, log_every: Optional[int]) -> Tuple[List, object, object, bool]:
    """Loss log (+ progress bar on a terminal), evaluation (+ early stopping), checkpoints and
    TensorBoard (the latter three on the writing rank only), and the stop on SIGINT / SIGTERM
    (last: it stops after the step is logged).

    Returns:
        ``(callbacks, loss_callback, signal_stop, show_bar)``.
    """
    from src.checkpoint.io import save_checkpoint_atomic
    from src.checkpoint.names import NUMERICS_KEY
    from src.engine.callbacks import CheckpointCallback, LossCallBack, SignalStopCallback
    from src.engine.progress import ProgressBarCallback, console_mode

    show_bar, log_every = console_mode(log_every, steps_per_epoch)
    show_bar = show_bar and writer
    loss_cb = LossCallBack(os.path.join(run_dir, "losses.csv") if writer else None, steps_per_epoch,
                           config.epoch_size, log_every=log_every, lr_schedule=lr, step_offset=start_step)
    callbacks = [loss_cb]
    if show_bar:
        callbacks.append(ProgressBarCallback(steps_per_epoch, config.epoch_size, loss_cb))
    # Checkpoints record the numerics preset, so loading them under another one warns.
    save_fn = functools.partial(save_checkpoint_atomic, append_dict={NUMERICS_KEY: config.numerics})
    if writer:
        eval_cb = None
        if config.eval_interval:
            from src.evaluation.hook import EvalCallback

            eval_cb = EvalCallback(net, config, run_dir, config.eval_interval, save_fn, steps_per_epoch,
                                   step_offset=start_step, loss_callback=loss_cb)
            if start_step:  # --resume: the same best score and early-stopping count
                eval_cb.restore()
            callbacks.append(eval_cb)
        # After the evaluation of the same step: a run killed while it evaluates resumes from the
        # checkpoint before, and evaluates that epoch again instead of never.
        callbacks.append(CheckpointCallback(save_fn, net, run_dir, "maskrcnn",
                                            config.save_checkpoint_epochs, config.keep_checkpoint_max, loss_cb,
                                            step_offset=start_step, steps_per_epoch=steps_per_epoch))
        if config.tensorboard:
            from src.engine.callbacks import TENSORBOARD_DIR, TensorBoardCallback

            callbacks.append(TensorBoardCallback(os.path.join(run_dir, TENSORBOARD_DIR), loss_cb, eval_cb))
    signal_stop = SignalStopCallback()
    callbacks.append(signal_stop)
    return callbacks, loss_cb, signal_stop, show_bar


def train(config: Config, pre_trained: str = "", resume: str = "", log_every: Optional[int] = None,
          argv: Sequence[str] = ()) -> int:
    """Run the fine-tuning described by ``config``; returns the process exit code.

    Args:
        argv: train.py's command-line arguments, for the ``--resume`` command logged when a
            signal stops the run.
    """
    from src.engine.distributed import init_data_parallel, is_writer
    from src.engine.run_folder import RunLock

    rank, group_size = init_data_parallel()
    writer = is_writer(rank)
    run_dir = resolve_path(config.run_dir)
    # One run per folder: the lock first, before anything is read or written.
    with RunLock(run_dir) if writer else contextlib.nullcontext():
        return _train_in_locked_folder(config, pre_trained, resume, log_every, argv, run_dir, writer, rank,
                                       group_size)


def _train_in_locked_folder(config: Config, pre_trained: str, resume: str, log_every: Optional[int],
                            argv: Sequence[str], run_dir: str, writer: bool, rank: int, group_size: int) -> int:
    from mindspore.train import Model

    from src.checkpoint.load import read_train_state
    from src.checkpoint.names import LAST_CHECKPOINT_NAME
    from src.engine import runtime
    from src.engine.distributed import log_parameter_digest
    from src.engine.lr_schedule import graph_lr_length
    from src.engine.progress import redirect_logging
    from src.engine.run_folder import check_fresh_folder

    if writer and not resume:
        check_fresh_folder(run_dir)
    resume_state = read_train_state(resume) if resume else None
    dataset, steps_per_epoch = build_training_data(config, rank, group_size,
                                                   start_step=resume_state[1] if resume_state else 0)
    net = build_training_model(config, pre_trained)
    optimizer, lr = build_optimizer(config, net, steps_per_epoch, rank, group_size)
    train_cell = build_train_step(config, net, optimizer)

    start_epoch = start_step = 0
    if resume:
        start_epoch, start_step = restore_train_state(train_cell, resume, resume_state, steps_per_epoch,
                                                      config.dataset_sink_mode)
        resume_state = None  # the tensors are in the network now
        if start_epoch >= config.epoch_size:
            logger.info("nothing to do: the checkpoint is already at epoch %d of %d", start_epoch, config.epoch_size)
            return EXIT_OK
    if writer:
        start_run_folder(config, run_dir, start_step if resume else None)
    else:
        runtime.add_log_file(None)

    callbacks, loss_cb, signal_stop, show_bar = build_callbacks(config, net, run_dir, writer, steps_per_epoch, lr,
                                                                start_step, log_every)
    model = Model(train_cell)
    started = time.time()
    # The graph holds the LR schedule as a parameter whose padded length shapes it (its values do
    # not); a sunk epoch runs steps_per_epoch steps in one call (a device that sinks only). A
    # pre-trained backbone freezes stages: another graph.
    graph_inputs = {"pretrained_backbone": bool(pre_trained), "lr_steps": graph_lr_length(len(lr))}
    if runtime.sinks_epochs(config):
        graph_inputs["steps_per_epoch"] = steps_per_epoch
    signal_stop.install()  # after MindSpore's start-up, before the compile: a signal then counts too
    try:
        with runtime.compile_cache(config, "train", graph_inputs), redirect_logging(show_bar):
            model.train(config.epoch_size, dataset, callbacks=callbacks, dataset_sink_mode=config.dataset_sink_mode,
                        initial_epoch=start_epoch)
    finally:
        signal_stop.restore()
    logger.info("training took %.1f s", time.time() - started)
    if group_size > 1:
        log_parameter_digest(train_cell, rank, group_size)
    if loss_cb.error is not None:
        logger.error("training stopped: %s", loss_cb.error)
        return EXIT_TRAINING_STOPPED
    last_step = loss_cb.history[-1]["step"] if loss_cb.history else start_step
    if signal_stop.received is not None and last_step < steps_per_epoch * config.epoch_size:
        last = os.path.join(run_dir, LAST_CHECKPOINT_NAME)
        epoch, step_in_epoch = divmod(last_step, steps_per_epoch)
        logger.warning("interrupted (%s) after step %d of %d (epoch %d, step %d of %d), saved in %s; "
                       "continue with: %s", signal_stop.received, last_step, steps_per_epoch * config.epoch_size,
                       epoch + (1 if step_in_epoch else 0), step_in_epoch or steps_per_epoch, steps_per_epoch,
                       last, resume_command(argv, last))
        return EXIT_INTERRUPTED
    return EXIT_OK
