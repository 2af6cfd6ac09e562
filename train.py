"""Fine-tune Mask R-CNN (ResNet50 + FPN) on a COCO-format set.

    python train.py [--config_path FineTune/default.yaml] [--pre_trained CKPT] [--resume CKPT]
                    [--device_target CPU|Ascend|GPU] [--any_config_key VALUE ...]

The run directory (``run_dir`` in the config) receives the resolved config, ``train.log``,
``losses.csv`` (every loss component per step) and the checkpoints, written atomically:
``last.ckpt`` (weights, optimizer state and global step: the file ``--resume`` takes), numbered
``maskrcnn-<epoch>_<step>.ckpt`` (weights only; ``keep_checkpoint_max`` of them, 0 = none) and,
with ``--eval_interval K``, ``best.ckpt`` by segm AP (weights only).
Exit codes: 0 done, 1 training stopped (non-finite loss), 2 bad input.
"""

import argparse
import functools
import logging
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np
import yaml

from src.config import ConfigError, add_config_arguments, config_from_cli, resolve_path
from src.runtime import EXIT_BAD_INPUT, EXIT_OK

logger = logging.getLogger("train")

EXIT_TRAINING_STOPPED = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--pre_trained", default="",
                        help="backbone checkpoint (convert_checkpoint.py output), a model-zoo or torchvision "
                             "ResNet50 / Mask R-CNN checkpoint (.ckpt, .safetensors, .pth), or a checkpoint of "
                             "this model; empty = random init")
    parser.add_argument("--resume", default="",
                        help="RUN_DIR/last.ckpt of an earlier run: restores the weights, optimizer state and "
                             "global step, and continues from there (numbered checkpoints and best.ckpt hold "
                             "the weights only: start from those with --pre_trained)")
    parser.add_argument("--log_every", type=int, default=None,
                        help="print the losses every N steps instead of a progress bar (default: a bar with "
                             "steps/s and ETA on a terminal, a line every step otherwise)")
    return parser


def optimizer_groups(net, weight_decay: float):
    """Weight decay on conv/dense weights only, not on biases and norm parameters."""
    trainable = net.trainable_params()
    decay = [p for p in trainable if p.name.endswith(".weight")]
    no_decay = [p for p in trainable if not p.name.endswith(".weight")]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(config, pre_trained: str = "", resume: str = "", log_every: Optional[int] = None) -> int:
    """Run the fine-tuning described by ``config``; returns the process exit code."""
    import mindspore as ms
    from mindspore import Tensor, nn
    from mindspore.train import Model

    from src.checkpoint.io import save_checkpoint_atomic
    from src.checkpoint.load import load_pretrained, load_train_state
    from src.checkpoint.names import NUMERICS_KEY
    from src.dataset import create_new_dataset
    from src.loss_log import drop_rows_after_step
    from src.lr_schedule import build_lr_schedule
    from src.maskrcnn.builder import build_model
    from src.network_define import CheckpointCallback, LossCallBack, LossNet, TrainOneStepCell, WithLossCell

    from src.distributed import init_data_parallel, is_writer, log_parameter_digest, scaled_base_lr
    from src.runtime import compile_cache

    rank, group_size = init_data_parallel()
    # Data parallel: rank 0 alone writes the run directory (see src/distributed.py).
    writer = is_writer(rank)
    run_dir = resolve_path(config.run_dir)
    ckpt_dir = run_dir
    if writer:
        os.makedirs(ckpt_dir, exist_ok=True)
        with open(os.path.join(run_dir, "config.yaml"), "w", encoding="utf-8") as handle:
            yaml.safe_dump(config.to_dict(), handle, sort_keys=False)

    image_dir, _ = config.split_paths(config.train_data_type)
    dataset = create_new_dataset(resolve_path(config.coco_root), config.batch_size, is_training=True,
                                 num_parallel_workers=config.num_parallel_workers, config=config,
                                 num_shards=group_size, shard_id=rank)
    steps_per_epoch = dataset.get_dataset_size()
    if steps_per_epoch == 0:
        raise ConfigError(f"{image_dir}: fewer training images than batch_size={config.batch_size}")
    logger.info("training set: %s, %d steps per epoch x %d epochs", image_dir, steps_per_epoch, config.epoch_size)

    net = build_model(config, pretrained_backbone=bool(pre_trained))
    if pre_trained:
        report = load_pretrained(net, pre_trained)
        logger.info("pre-trained weights: %s", report)

    lr_base = scaled_base_lr(config.base_lr, group_size, config.lr_scaling)
    if group_size > 1:
        logger.info("rank %d of %d: global batch %d, base_lr %g (lr_scaling=%s)", rank, group_size,
                    group_size * config.batch_size, lr_base, config.lr_scaling)
    lr = build_lr_schedule(config.replace(base_lr=lr_base), steps_per_epoch)
    optimizer = nn.Momentum(optimizer_groups(net, config.weight_decay), learning_rate=Tensor(lr),
                            momentum=config.momentum)
    net_with_loss = WithLossCell(net, LossNet())
    train_cell = TrainOneStepCell(net_with_loss, optimizer, loss_scale=config.loss_scale,
                                  dynamic_loss_scale=config.dynamic_loss_scale,
                                  grad_clip_norm=config.grad_clip_norm)
    train_cell.set_train(True)

    start_epoch = start_step = 0
    if resume:
        global_step = load_train_state(train_cell, resume)
        start_epoch = global_step // steps_per_epoch
        start_step = start_epoch * steps_per_epoch
        if global_step != start_step:
            # e.g. the batch size or the data changed: restart the epoch, and the LR schedule with it
            logger.warning("%s was saved mid-epoch (step %d): the run restarts at the start of epoch %d",
                           resume, global_step, start_epoch + 1)
            step_param = optimizer.global_step
            step_param.set_data(Tensor(np.full(step_param.shape, start_step), step_param.dtype))
        logger.info("resumed from %s at global step %d (epoch %d)", resume, global_step, start_epoch)
        if start_epoch >= config.epoch_size:
            logger.info("nothing to do: the checkpoint is already at epoch %d of %d", start_epoch, config.epoch_size)
            return EXIT_OK

    if resume and writer:
        # The interrupted run may have logged steps after the checkpoint; they are run again.
        drop_rows_after_step(os.path.join(ckpt_dir, "losses.csv"), start_step)
    from src.progress import ProgressBarCallback, console_mode, redirect_logging

    show_bar, log_every = console_mode(log_every, steps_per_epoch)
    show_bar = show_bar and writer
    loss_cb = LossCallBack(os.path.join(ckpt_dir, "losses.csv") if writer else None, steps_per_epoch,
                           config.epoch_size, log_every=log_every, lr_schedule=lr, step_offset=start_step)
    callbacks = [loss_cb]
    if show_bar:
        callbacks.append(ProgressBarCallback(steps_per_epoch, config.epoch_size, loss_cb))
    # Checkpoints record the numerics preset, so loading them under another one warns.
    save_fn = functools.partial(save_checkpoint_atomic, append_dict={NUMERICS_KEY: config.numerics})
    if writer:
        callbacks.append(CheckpointCallback(save_fn, net, ckpt_dir, "maskrcnn",
                                            config.save_checkpoint_epochs, config.keep_checkpoint_max, loss_cb,
                                            step_offset=start_step))
        if config.eval_interval:
            from src.evaluation.hook import EvalCallback

            callbacks.append(EvalCallback(net, config, ckpt_dir, config.eval_interval, save_fn))

    model = Model(train_cell)
    started = time.time()
    # The graph holds the LR schedule as a [steps] parameter: its length (data size, batch, epochs,
    # ranks) shapes the graph, its values do not; a sunk epoch runs steps_per_epoch steps in one
    # call. A pre-trained backbone freezes stages: another graph.
    graph_inputs = {"pretrained_backbone": bool(pre_trained), "lr_steps": len(lr), "steps_per_epoch": steps_per_epoch}
    with compile_cache(config, "train", graph_inputs, __file__), redirect_logging(show_bar):
        model.train(config.epoch_size, dataset, callbacks=callbacks, dataset_sink_mode=config.dataset_sink_mode,
                    initial_epoch=start_epoch)
    logger.info("training took %.1f s", time.time() - started)
    if group_size > 1:
        log_parameter_digest(train_cell, rank, group_size)
    if loss_cb.error is not None:
        logger.error("training stopped: %s", loss_cb.error)
        return EXIT_TRAINING_STOPPED
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, config = config_from_cli(parser, argv)
    from src.distributed import init_data_parallel, is_writer
    from src.runtime import set_mindspore_context, setup_logging

    from src.checkpoint.io import CheckpointError
    from src.dataset import DatasetError
    from src.runtime import SetupError, ensure_writable_folder

    setup_logging()  # stderr only until the run folder is known to be writable
    try:
        ensure_writable_folder(resolve_path(config.run_dir), "run_dir")
        set_mindspore_context(config.device_target, seed=config.seed)
        rank, _ = init_data_parallel()
        # Other ranks log to the console only (msrun keeps it in msrun_logs/worker_<rank>.log).
        if is_writer(rank):
            setup_logging(os.path.join(resolve_path(config.run_dir), "train.log"))
        return train(config, pre_trained=args.pre_trained, resume=args.resume, log_every=args.log_every)
    except (ConfigError, CheckpointError, DatasetError, SetupError) as e:
        logger.error("%s", e)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
