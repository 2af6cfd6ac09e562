"""Data-parallel training: process group, learning-rate rule, which rank writes, consistency check.

``scripts/run_distribute_train.sh N CONFIG`` starts N copies of ``train.py`` with ``msrun``; with
``--worker_num N --local_worker_num L --master_addr ADDR --master_port PORT --node_rank R`` it starts
one server's L copies of a job over several servers (ranks ``R*L`` to ``R*L+L-1`` of N).
Each copy (a *rank*) reads its own shard of the training set (``num_shards=N, shard_id=rank``),
computes the gradient of its own batch, and ``TrainOneStepCell``'s ``DistributedGradReducer``
averages the gradients over the ranks before the (identical) optimizer step, so every rank keeps
the same weights. Only rank 0 writes files (config, ``train.log``, ``losses.csv``, checkpoints,
evaluation, ``best.ckpt``); the others log to the console, which msrun captures in
``RUN_DIR/msrun_logs/worker_<rank>.log``.

Learning-rate rule (config key ``lr_scaling``):

- ``linear`` (default): ``base_lr`` is the rate for one device's batch (``batch_size`` images).
  With N ranks the global batch is ``N * batch_size`` and the rate is ``N * base_lr`` (the
  linear scaling rule of Goyal et al., 2017); warm-up and decay follow the scaled rate.
- ``none``: ``base_lr`` is used as given whatever the number of ranks.

Command line (used by the launch script, no MindSpore import):
``python -m src.engine.distributed run-dir --config_path CONFIG [--key value ...]`` prints the run
directory; ``python -m src.engine.distributed free-port`` prints a free TCP port for msrun's scheduler.
"""

import argparse
import hashlib
import logging
import os
import socket
import sys
from typing import Optional, Sequence, Tuple

from src.config import LR_SCALING_RULES

logger = logging.getLogger(__name__)

# Rank that writes the run directory (checkpoints, losses.csv, evaluation).
WRITER_RANK = 0
# Prefix of the log line with each rank's parameter digest (tests and users compare the ranks).
DIGEST_LOG_PREFIX = "parameter digest"

# MS_ROLE values msrun gives its scheduler and worker processes.
MSRUN_ROLES = ("MS_SCHED", "MS_WORKER")
SCHEDULER_ROLE = "MS_SCHED"
# This node's rank in a job over several servers, set by scripts/run_distribute_train.sh for every
# process msrun starts (msrun itself tells only its workers, as MS_NODE_RANK).
NODE_RANK_VARIABLE = "MSRUN_NODE_RANK"

_group: Optional[Tuple[int, int]] = None


def requested_world_size() -> int:
    """Number of ranks the launcher asked for (msrun sets MS_WORKER_NUM, rank tables RANK_SIZE)."""
    text = os.environ.get("MS_WORKER_NUM", os.environ.get("RANK_SIZE", "1"))
    try:
        return int(text)
    except ValueError as e:
        raise ValueError(f"MS_WORKER_NUM/RANK_SIZE must be an integer, got {text!r}") from e


def init_data_parallel() -> Tuple[int, int]:
    """Join the process group when launched with several ranks; returns ``(rank, group size)``.

    One rank: nothing to do, ``(0, 1)``. Several: ``mindspore.communication.init()`` and the
    data-parallel context with gradient averaging (``gradients_mean=True``), which
    ``TrainOneStepCell`` reads to build its gradient all-reduce. The device must be set first.
    Calling it again returns the cached result.
    """
    global _group
    if _group is not None:
        return _group
    if is_duplicate_scheduler(os.environ):
        # msrun starts a scheduler on every node whose host holds the master address: nodes of one
        # job sharing a host (e.g. two nodes on 127.0.0.1) would each start one on the same port.
        logger.info("node %s: msrun's scheduler serves from node 0; this node's scheduler process exits",
                    os.environ[NODE_RANK_VARIABLE])
        raise SystemExit(0)
    # msrun runs this script in its scheduler process too (MS_ROLE=MS_SCHED): init() makes that
    # process serve the cluster instead of training, so it must be called even for one worker.
    launched_by_msrun = os.environ.get("MS_ROLE") in MSRUN_ROLES
    if requested_world_size() <= 1 and not launched_by_msrun:
        _group = (0, 1)
        return _group
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    init()
    rank, size = get_rank(), get_group_size()
    if size > 1:
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                     device_num=size)
    _group = (rank, size)
    return _group


def is_duplicate_scheduler(environ) -> bool:
    """True in the msrun scheduler process of a node other than node 0 (``MSRUN_NODE_RANK`` > 0).

    Only node 0's scheduler may serve the job; msrun starts another one on a node whose host also
    holds the master address, which would fail for the port already taken and fail that node.
    """
    return environ.get("MS_ROLE") == SCHEDULER_ROLE and environ.get(NODE_RANK_VARIABLE, "0") not in ("", "0")


def is_writer(rank: int) -> bool:
    """True for the one rank that writes the run directory."""
    return rank == WRITER_RANK


def scaled_base_lr(base_lr: float, group_size: int, rule: str) -> float:
    """The base learning rate for ``group_size`` ranks under ``rule`` (see the module notes).

    Args:
        base_lr: the config's rate for one device's batch.
        group_size: number of data-parallel ranks (>= 1).
        rule: one of ``LR_SCALING_RULES``.

    Returns:
        The rate the schedule starts from.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rule == "linear":
        return base_lr * group_size
    if rule == "none":
        return base_lr
    raise ValueError(f"lr_scaling must be one of {LR_SCALING_RULES}, got {rule!r}")


def parameter_digest(cell) -> str:
    """SHA-256 over every parameter's name, dtype, shape and bytes (sorted by name).

    Ranks that stayed in sync give the same digest; one differing bit changes it.
    """
    digest = hashlib.sha256()
    for param in sorted(cell.get_parameters(), key=lambda p: p.name):
        value = param.asnumpy()
        digest.update(f"{param.name}|{value.dtype}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def log_parameter_digest(cell, rank: int, group_size: int) -> str:
    """Log ``rank R of N: parameter digest HEX`` (each rank, into its own msrun log); returns it."""
    digest = parameter_digest(cell)
    logger.info("rank %d of %d: %s %s", rank, group_size, DIGEST_LOG_PREFIX, digest)
    return digest


def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="helpers of scripts/run_distribute_train.sh")
    sub = parser.add_subparsers(dest="command", required=True)
    run_dir = sub.add_parser("run-dir", help="print the run directory of a config (+ overrides)")
    from src.config import ConfigError, add_config_arguments, config_from_cli, resolve_path
    from src.engine.runtime import EXIT_BAD_INPUT, EXIT_OK

    add_config_arguments(run_dir)
    sub.add_parser("free-port", help="print a free TCP port")
    args, extra = parser.parse_known_args(argv)
    if args.command == "free-port":
        print(free_port())
        return EXIT_OK
    try:
        _, config = config_from_cli(run_dir, ["--config_path", args.config_path, *extra])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(resolve_path(config.run_dir))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
