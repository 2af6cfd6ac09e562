"""Data-parallel training with msrun on two CPU workers: scripts/run_distribute_train.sh.

Two launches of the same job: ``run_distribute_train.sh 2`` (one server, two ranks) and two
invocations of the script as node 0 and node 1 of a two-server job (one rank each, the master on
127.0.0.1). Each is a 1-step run on a 2-image set (one image per rank, batch 1, 64x64) and checks
that both ranks finish with identical parameters, that only rank 0 wrote the run directory, that
the ranks saw different images, and that the step equals plain SGD with the linearly scaled
learning rate on the mean of the two single-image gradients computed here in one process from the
same start weights.

Why the set-up makes that comparison exact: BatchNorm is frozen (a ``--pre_trained`` start, moving
statistics), momentum and weight decay are 0, no clipping, no flip, and every sampler takes all
eligible candidates (RPN: samples >= anchors with positive fraction 1; RoI head: twice as many
slots as candidates at fraction 0.5), so no random draw changes the losses.
"""

import csv
import glob
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from src.checkpoint.io import read_checkpoint
from src.config import load_config
from src.engine.distributed import DIGEST_LOG_PREFIX
from src.synthetic import generate

pytestmark = pytest.mark.slow(135)

BASE_LR = 0.01
RANKS = 2
# Tiny network input and light heads: two ranks compile and run one step in about a minute.
TINY = {
    # Every synthetic shape is a class, so no training image is skipped for lack of instances.
    "coco_classes": ["background", "book", "disc", "triangle", "cross"],
    "img_height": 64, "img_width": 64, "batch_size": 1, "epoch_size": 1, "num_parallel_workers": 1,
    "max_instance_count": 4, "flip_ratio": 0.0, "fpn_channels": 32, "box_head_channels": 64,
    "mask_head_channels": 32, "frozen_backbone_stages": 0,
    "rpn_num_samples": 2048, "rpn_pos_fraction": 1.0,
    "rpn_pre_nms_top_k_train": 64, "rpn_post_nms_top_k_train": 16,
    "rcnn_num_samples": 40, "rcnn_pos_fraction": 0.5,
    "momentum": 0.0, "weight_decay": 0.0, "grad_clip_norm": 0.0, "warmup_steps": 0,
    "lr_schedule": "step", "lr_step_gamma": 1.0, "base_lr": BASE_LR, "lr_scaling": "linear", "save_checkpoint_epochs": 1,
}
STEP_LOSS = re.compile(r"step 1/1 loss=([0-9.]+)")


def _overrides(data_dir, run_dir):
    args = ["--coco_root", str(data_dir), "--run_dir", str(run_dir)]
    for key, value in TINY.items():
        text = "[" + ", ".join(value) + "]" if isinstance(value, list) else str(value)
        args += [f"--{key}", text]
    return args


def _launch(data_dir, run_dir, init_ckpt, timeout=600, **env_values):
    env = dict(os.environ, GLOG_v="3", **env_values)
    return subprocess.run(["bash", "scripts/run_distribute_train.sh", str(RANKS), "FineTune/default.yaml",
                           str(init_ckpt), *_overrides(data_dir, run_dir)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def _launch_two_nodes(data_dir, run_dir, init_ckpt, timeout=600):
    """The script run twice, as node 0 and node 1 of a RANKS-worker job (one worker each); returns
    both results (node 0's first)."""
    from src.engine.distributed import free_port

    env = dict(os.environ, GLOG_v="3", MSRUN_CLUSTER_TIMEOUT="200")
    port = str(free_port())

    def command(node_rank):
        return ["bash", "scripts/run_distribute_train.sh", "--worker_num", str(RANKS), "--local_worker_num", "1",
                "--master_addr", "127.0.0.1", "--master_port", port, "--node_rank", str(node_rank),
                "FineTune/default.yaml", str(init_ckpt), *_overrides(data_dir, run_dir)]

    node0 = subprocess.Popen(command(0), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env)
    try:
        node1 = subprocess.run(command(1), cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env)
        out, err = node0.communicate(timeout=timeout)
    finally:
        if node0.poll() is None:
            node0.kill()
    return subprocess.CompletedProcess(node0.args, node0.returncode, out, err), node1


def test_learning_rate_rule_for_the_global_batch():
    from src.engine.distributed import scaled_base_lr

    assert scaled_base_lr(0.01, 8, "linear") == pytest.approx(0.08)
    assert scaled_base_lr(0.01, 8, "none") == 0.01
    assert scaled_base_lr(0.01, 1, "linear") == 0.01
    with pytest.raises(ValueError, match="lr_scaling must be one of"):
        scaled_base_lr(0.01, 2, "sqrt")


def test_bad_lr_scaling_and_compute_dtype_keys_are_named():
    from src.config import ConfigError

    with pytest.raises(ConfigError, match="key 'lr_scaling' = 'sqrt' must be 'linear' or 'none'"):
        load_config(None, {"lr_scaling": "sqrt"})
    with pytest.raises(ConfigError, match="key 'compute_dtype' = 'bf16'"):
        load_config(None, {"compute_dtype": "bf16"})


def test_only_node_0_keeps_its_msrun_scheduler():
    from src.engine.distributed import is_duplicate_scheduler

    assert is_duplicate_scheduler({"MS_ROLE": "MS_SCHED", "MSRUN_NODE_RANK": "1"})
    assert not is_duplicate_scheduler({"MS_ROLE": "MS_SCHED", "MSRUN_NODE_RANK": "0"})
    assert not is_duplicate_scheduler({"MS_ROLE": "MS_SCHED"})  # msrun started by hand: one node
    assert not is_duplicate_scheduler({"MS_ROLE": "MS_WORKER", "MSRUN_NODE_RANK": "1"})


def test_launcher_reads_the_run_directory_of_config_and_overrides(tmp_path):
    result = subprocess.run([sys.executable, "-m", "src.engine.distributed", "run-dir", "--config_path",
                             "FineTune/default.yaml", "--run_dir", str(tmp_path / "r")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "r")


def _worker_log(run_dir, rank):
    """Rank ``rank``'s console: msrun_logs/worker_R.log (one server) or msrun_logs/node_N/worker_R.log."""
    (path,) = glob.glob(os.path.join(run_dir, "msrun_logs", "**", f"worker_{rank}.log"), recursive=True)
    with open(path, encoding="utf-8") as handle:
        return handle.read()


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """Data (2 train images), the tiny config and a start checkpoint with random weights."""
    import mindspore as ms

    from src.maskrcnn.builder import build_model

    root = tmp_path_factory.mktemp("dp")
    data_dir = root / "data"
    generate(str(data_dir), RANKS, 1, seed=5)
    config = load_config(None, {"coco_root": str(data_dir), "run_dir": str(root / "run"), **TINY})
    ms.set_seed(config.seed)
    net = build_model(config, pretrained_backbone=True)
    init_ckpt = root / "init.ckpt"
    ms.save_checkpoint(net, str(init_ckpt))
    return root, data_dir, config, init_ckpt


@pytest.fixture(scope="module", params=["one_server", "two_nodes"])
def dp_run(start, request):
    """The run directory of the job launched on one server, or as two nodes of one job."""
    root, data_dir, _, init_ckpt = start
    run_dir = root / f"run_{request.param}"
    if request.param == "one_server":
        results = [_launch(data_dir, run_dir, init_ckpt)]
    else:
        results = _launch_two_nodes(data_dir, run_dir, init_ckpt)
        # each node's ranks log into their own folder, also when the servers share the run folder
        assert sorted(os.listdir(run_dir / "msrun_logs")) == ["node_0", "node_1"]
        assert glob.glob(str(run_dir / "msrun_logs" / "node_1" / "worker_*.log")) == [
            str(run_dir / "msrun_logs" / "node_1" / "worker_1.log")]
    for result in results:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


def test_both_ranks_finish_with_identical_parameters(dp_run):
    digests = []
    for rank in range(RANKS):
        found = re.findall(rf"rank {rank} of {RANKS}: {DIGEST_LOG_PREFIX} ([0-9a-f]{{64}})", _worker_log(dp_run, rank))
        assert len(found) == 1, f"rank {rank} logged no parameter digest"
        digests.append(found[0])
    assert digests[0] == digests[1]


def test_only_rank_0_writes_the_run_directory(dp_run):
    names = set(os.listdir(dp_run))
    assert names == {"config.yaml", "train.log", "losses.csv", "last.ckpt", "maskrcnn-1_1.ckpt", "msrun_logs",
                     "tensorboard"}
    with open(dp_run / "train.log", encoding="utf-8") as handle:
        text = handle.read()
    assert f"rank 0 of {RANKS}" in text and f"rank 1 of {RANKS}" not in text
    with open(dp_run / "losses.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1  # the one step, written once (by rank 0)
    # linear scaling rule: the global batch of RANKS images trains at RANKS * base_lr
    assert float(rows[0]["lr"]) == pytest.approx(RANKS * BASE_LR)


def _single_image_grads(config, init_ckpt):
    """Per training image (dataset order): (total loss, {param name: gradient}) in this process."""
    import mindspore as ms
    from mindspore import nn

    from src.checkpoint.load import load_pretrained
    from src.dataset import create_new_dataset
    from src.maskrcnn.builder import build_model
    from src.engine.train_step import LossNet, WithLossCell

    class TotalLoss(nn.Cell):
        def __init__(self, with_loss):
            super().__init__(auto_prefix=False)
            self.with_loss = with_loss

        def construct(self, *batch):
            return self.with_loss(*batch)[0]

    ms.set_context(mode=ms.GRAPH_MODE)
    net = build_model(config, pretrained_backbone=True)
    load_pretrained(net, str(init_ckpt))
    loss = TotalLoss(WithLossCell(net, LossNet()))
    loss.set_train(True)
    params = net.trainable_params()
    # One graph gives the loss and its gradients (one compile, not two).
    loss_and_grads = ms.value_and_grad(loss, None, ms.ParameterTuple(params))
    dataset = create_new_dataset(None, 1, is_training=True, num_parallel_workers=1, config=config, shuffle=False)
    results = []
    for batch in dataset.create_tuple_iterator():
        total, grads = loss_and_grads(*batch)
        results.append((float(total.asnumpy()), {p.name: g.asnumpy() for p, g in zip(params, grads)}))
    return results


@pytest.fixture(scope="module")
def per_image_grads(start):
    """_single_image_grads of the start weights, once for both launches (graph mode, restored)."""
    import mindspore as ms

    _, _, config, init_ckpt = start
    previous = ms.get_context("mode")
    try:
        return _single_image_grads(config, init_ckpt)
    finally:
        ms.set_context(mode=previous)


def test_ranks_saw_different_images_and_the_step_is_the_averaged_gradient(start, dp_run, per_image_grads):
    _, _, _, init_ckpt = start
    per_image = per_image_grads
    assert len(per_image) == RANKS
    image_losses = [total for total, _ in per_image]
    assert abs(image_losses[0] - image_losses[1]) > 1e-2, "the two images must be told apart by their loss"

    # Each rank's first-step loss (its own batch, before averaging) is the loss of a different image.
    seen = []
    for rank in range(RANKS):
        (rank_loss,) = [float(v) for v in STEP_LOSS.findall(_worker_log(dp_run, rank))]
        matches = [i for i, value in enumerate(image_losses) if abs(value - rank_loss) < 2e-4 + 1e-4 * abs(value)]
        assert len(matches) == 1, f"rank {rank} loss {rank_loss} vs per-image losses {image_losses}"
        seen.append(matches[0])
    assert sorted(seen) == list(range(RANKS))

    # p1 = p0 - lr * mean_r(g_r) with lr = RANKS * base_lr (linear scaling rule).
    # read_checkpoint leaves out the strings a checkpoint stores (e.g. its numerics preset).
    start_params = {k: v.asnumpy() for k, v in read_checkpoint(str(init_ckpt)).items()}
    after = {k: v.asnumpy() for k, v in read_checkpoint(str(dp_run / "last.ckpt")).items()}
    lr = RANKS * BASE_LR
    mean_grads = {name: np.mean([grads[name] for _, grads in per_image], axis=0) for name in per_image[0][1]}
    observed = np.concatenate([((start_params[n] - after[n]) / lr).ravel() for n in mean_grads])
    expected = np.concatenate([mean_grads[n].ravel() for n in mean_grads])
    assert np.linalg.norm(expected) > 0
    rel = np.linalg.norm(observed - expected) / np.linalg.norm(expected)
    assert rel < 1e-3, f"relative difference {rel:.2e} between the step and -lr * mean gradient"
    np.testing.assert_allclose(observed, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


def test_a_failing_rank_ends_the_job_with_its_message(start, tmp_path):
    """One corrupt image: the rank whose shard holds it fails; msrun stops the other (no hang)."""
    import shutil

    root, data_dir, _, init_ckpt = start
    broken = tmp_path / "data"
    shutil.copytree(data_dir, broken)
    victim = sorted((broken / "train2017").iterdir())[0]
    victim.write_bytes(b"not a jpeg")
    # MindSpore's scheduler notices a dead worker when its heartbeats stop for MS_NODE_TIMEOUT
    # seconds (30 by default; 10 here: the job still has to notice, only sooner)
    result = _launch(broken, tmp_path / "run", init_ckpt, timeout=400, MS_NODE_TIMEOUT="10")
    assert result.returncode != 0
    failed = re.findall(r"rank (\d) failed; last lines of \S+worker_(\d)\.log", result.stderr)
    assert len(failed) == 1 and failed[0][0] == failed[0][1], result.stderr[-3000:]
    assert f"{victim}: corrupt or unreadable image" in result.stderr
