"""Fine-tune Mask R-CNN (ResNet50 + FPN) on a COCO-format set.

    python train.py [--config_path FineTune/default.yaml] [--pre_trained CKPT] [--resume CKPT]
                    [--device_target CPU|Ascend|GPU] [--any_config_key VALUE ...]

The run directory (``run_dir`` in the config) receives the resolved config, ``train.log``,
``losses.csv`` (every loss component per step) and the checkpoints (``last.ckpt`` and numbered
ones, written atomically; with ``--eval_interval K`` also ``best.ckpt`` by segm AP).
Exit codes: 0 done, 1 training stopped (non-finite loss), 2 bad input.
"""

import argparse
import functools
import logging
import os
import sys
import time
from typing import List, Optional, Sequence

import numpy as np
import yaml

from src.config import ConfigError, add_config_arguments, config_from_cli, resolve_path

logger = logging.getLogger("train")

EXIT_OK = 0
EXIT_TRAINING_STOPPED = 1
EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--pre_trained", default="",
                        help="backbone checkpoint (convert_checkpoint.py output), a model-zoo or torchvision "
                             "ResNet50 / Mask R-CNN checkpoint (.ckpt, .safetensors, .pth), or a checkpoint of "
                             "this model; empty = random init")
    parser.add_argument("--resume", default="",
                        help="checkpoint written by this script (e.g. RUN_DIR/last.ckpt): restores the "
                             "weights, optimizer state and global step, and continues from there")
    parser.add_argument("--log_every", type=int, default=1, help="print the losses every N steps")
    return parser


def _init_distributed():
    """Data parallelism when launched by msrun/mpirun (several ranks); returns (rank, group size)."""
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    if int(os.environ.get("MS_WORKER_NUM", os.environ.get("RANK_SIZE", "1"))) <= 1:
        return 0, 1
    init()
    rank, size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=size)
    return rank, size


def _optimizer_groups(net, weight_decay: float):
    """Weight decay on conv/dense weights only, not on biases and norm parameters."""
    trainable = net.trainable_params()
    decay = [p for p in trainable if p.name.endswith(".weight")]
    no_decay = [p for p in trainable if not p.name.endswith(".weight")]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(config, pre_trained: str = "", resume: str = "", log_every: int = 1) -> int:
    """Run the fine-tuning described by ``config``; returns the process exit code."""
    import mindspore as ms
    from mindspore import Tensor, nn
    from mindspore.train import Model

    from src.checkpoint import NUMERICS_KEY, load_pretrained, load_train_state, save_checkpoint_atomic
    from src.dataset import create_new_dataset
    from src.lr_schedule import build_lr_schedule
    from src.maskrcnn.mask_rcnn import build_model
    from src.network_define import CheckpointCallback, LossCallBack, LossNet, TrainOneStepCell, WithLossCell

    rank, group_size = _init_distributed()
    run_dir = resolve_path(config.run_dir)
    ckpt_dir = run_dir if group_size == 1 else os.path.join(run_dir, f"rank_{rank}")
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

    lr = build_lr_schedule(config, steps_per_epoch)
    optimizer = nn.Momentum(_optimizer_groups(net, config.weight_decay), learning_rate=Tensor(lr),
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

    loss_cb = LossCallBack(os.path.join(ckpt_dir, "losses.csv"), steps_per_epoch, config.epoch_size,
                           log_every=log_every, lr_schedule=lr, step_offset=start_step)
    callbacks = [loss_cb]
    # Checkpoints record the numerics preset, so loading them under another one warns.
    save_fn = functools.partial(save_checkpoint_atomic, append_dict={NUMERICS_KEY: config.numerics})
    if rank == 0:
        callbacks.append(CheckpointCallback(save_fn, ckpt_dir, "maskrcnn",
                                            config.save_checkpoint_epochs, config.keep_checkpoint_max, loss_cb,
                                            step_offset=start_step))
        if config.eval_interval:
            from src.evaluation import EvalCallback

            callbacks.append(EvalCallback(net, config, ckpt_dir, config.eval_interval, save_fn))

    model = Model(train_cell)
    sink = config.device_target == "Ascend"
    started = time.time()
    model.train(config.epoch_size, dataset, callbacks=callbacks, dataset_sink_mode=sink,
                initial_epoch=start_epoch)
    logger.info("training took %.1f s", time.time() - started)
    if loss_cb.error is not None:
        logger.error("training stopped: %s", loss_cb.error)
        return EXIT_TRAINING_STOPPED
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, config = config_from_cli(parser, argv)
    from src.runtime import set_mindspore_context, setup_logging

    setup_logging(os.path.join(resolve_path(config.run_dir), "train.log"))
    set_mindspore_context(config.device_target, seed=config.seed)
    from src.checkpoint import CheckpointError
    from src.dataset import DatasetError

    try:
        return train(config, pre_trained=args.pre_trained, resume=args.resume, log_every=args.log_every)
    except (ConfigError, CheckpointError, DatasetError) as e:
        logger.error("%s", e)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
