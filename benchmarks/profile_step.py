"""Where a training step's (or an inference batch's) time goes: MindSpore's CPU profiler, by stage.

    python benchmarks/profile_step.py [--mode train|eval] [--image 256x256] [--steps 2] [--batch 2]
        [--data_dir DIR] [--ckpt PATH] [--kernels_json PATH]

``--mode train`` (default) builds the default recipe's training step (as bench_train.py does) on
a real batch of a small synthetic set (or of ``--data_dir``), runs two warm-up steps and profiles
``--steps`` steps on that batch. ``--mode eval`` builds the network for inference and profiles
``--steps`` batches of the validation split (after one warm-up batch), as eval.py runs them.
``--ckpt`` loads a train.py checkpoint of the default recipe first: a random network fills every
RoI and detection slot, trained weights fill as many as a real run does (late training, a
trained model's evaluation).

Prints JSON lines: one per network stage (the top-level attribute of ``Mask_Rcnn_Resnet50``:
backbone, fpn, mask_head, ...) with its forward and backward kernel milliseconds per step (per
batch in eval mode), one per kernel type, and a total. ``--kernels_json`` also writes every kernel
as ``[[op type, full name, ms per step], ...]`` (bench_peer.py's ``profile_HxW`` case reads it).
Caveat: MindSpore names a gradient kernel after the first Cell that used that primitive's
gradient, so backward milliseconds can be credited to the wrong stage; forward ones are exact.
"""

import argparse
import collections
import csv
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

from bench_train import build_train_step
from common import REPO_ROOT, emit

# The stage of a kernel: the network's attribute after the training wrapper's
# ".../net-Mask_Rcnn_Resnet50/" ...
STAGE = re.compile(r"net-Mask_Rcnn_Resnet50/([A-Za-z0-9_]+)-")
# ... or, when the network runs on its own (inference), right under "Default/" (an attribute
# starts lower-case, its Cell class upper-case; "Default/Reshape-op7" is the network's own op).
INFERENCE_STAGE = re.compile(r"^Default/([a-z][A-Za-z0-9_]*)-[A-Z]")


def kernel_rows(profile_dir: str, steps: int):
    """``[(op type, full op name, ms per step)]``, one per kernel, from the profiler's CSV."""
    paths = glob.glob(os.path.join(profile_dir, "**", "cpu_op_detail_info_*.csv"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"no cpu_op_detail_info_*.csv under {profile_dir}")
    with open(paths[0], newline="", encoding="utf-8") as handle:
        return [(row["op_type"], row["full_op_name"], float(row["op_total_time(ms)"]) / steps)
                for row in csv.DictReader(handle)]


def kernel_times(rows):
    """{(stage, "fwd"|"bwd"): ms per step}, {kernel type: ms per step} of :func:`kernel_rows`."""
    by_stage, by_type = collections.Counter(), collections.Counter()
    for kind, name, ms_per_step in rows:
        match = STAGE.search(name) if "WithLossCell" in name else INFERENCE_STAGE.search(name)
        stage = match.group(1) if match else ("optimizer" if "optimizer" in name else "step_wrapper")
        by_stage[(stage, "bwd" if name.startswith("Gradients") else "fwd")] += ms_per_step
        by_type[kind] += ms_per_step
    return by_stage, by_type


def train_runs(height: int, width: int, batch_size: int, steps: int, data_dir: str, ckpt: str = ""):
    """``steps + 2`` calls of the training step on one batch (the first two are the warm-up)."""
    train_cell, batch, _ = build_train_step(height, width, batch_size, data_dir, ckpt=ckpt)
    return [lambda: train_cell(*batch)[0].asnumpy()] * (steps + 2)


def eval_runs(height: int, width: int, batch_size: int, steps: int, data_dir: str, ckpt: str = ""):
    """``steps + 1`` inference calls on successive validation batches (the first is the warm-up;
    the split is cycled when it holds fewer batches)."""
    import mindspore as ms

    from bench_eval import inference_setup
    from src.config import load_config

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    config = load_config(overrides={"img_height": height, "img_width": width, "coco_root": data_dir,
                                    "batch_size": batch_size, "num_parallel_workers": 1})
    net, _, items = inference_setup(config, ckpt)
    batches = [(ms.Tensor(item["image"]), ms.Tensor(item["image_shape"])) for item in items]
    if not batches:
        raise ValueError(f"{data_dir}: no validation batch of {batch_size} images")

    def run(batch):
        return lambda: [output.asnumpy() for output in net(*batch)]

    return [run(batches[k % len(batches)]) for k in range(steps + 1)]


def profile(mode: str, height: int, width: int, batch_size: int, steps: int, data_dir: str, out_dir: str,
            kernels_json: str = "", ckpt: str = "") -> None:
    from mindspore.profiler import ProfilerActivity, profile as ms_profile, tensorboard_trace_handler

    runs = (train_runs if mode == "train" else eval_runs)(height, width, batch_size, steps, data_dir, ckpt)
    warmup, profiled = runs[:-steps], runs[-steps:]
    for run in warmup:
        run()
    with ms_profile(activities=[ProfilerActivity.CPU], on_trace_ready=tensorboard_trace_handler(out_dir)) as prof:
        for run in profiled:
            run()
            prof.step()
    rows = kernel_rows(out_dir, steps)
    by_stage, by_type = kernel_times(rows)
    if kernels_json:
        with open(kernels_json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle)
    common = {"mode": mode, "image": f"{height}x{width}", "batch": batch_size, "weights": ckpt or "random"}
    for (stage, direction), value in sorted(by_stage.items(), key=lambda item: -item[1]):
        emit({"bench": "profile_stage", **common, "stage": stage, "direction": direction,
              "ms_per_step": round(value, 1)})
    for kind, value in by_type.most_common(12):
        emit({"bench": "profile_kernel", **common, "kernel": kind, "ms_per_step": round(value, 1)})
    emit({"bench": "profile_total", **common, "kernel_ms_per_step": round(sum(by_type.values()), 1)})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("train", "eval"), default="train",
                        help="profile training steps or inference batches")
    parser.add_argument("--image", default="256x256", help="HEIGHTxWIDTH")
    parser.add_argument("--steps", type=int, default=2, help="profiled steps (eval: validation batches)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--data_dir", default="", help="COCO-format set (default: a small synthetic one)")
    parser.add_argument("--kernels_json", default="", help="also write every kernel's ms per step here")
    parser.add_argument("--ckpt", default="", help="train.py checkpoint of the default recipe (default: random init)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.ckpt and not os.path.isfile(args.ckpt):
        parser.error(f"--ckpt: no such file: {args.ckpt}")
    height, width = (int(v) for v in args.image.split("x"))
    with tempfile.TemporaryDirectory(prefix="profile_step_") as tmp:
        data_dir = args.data_dir
        if not data_dir:
            data_dir = os.path.join(tmp, "synthetic")
            val = (args.steps + 1) * args.batch  # eval mode: a new batch for every call
            subprocess.run([sys.executable, "-m", "src.synthetic", "--out", data_dir, "--train", "8", "--val",
                            str(val), "--seed", "0"], check=True, cwd=REPO_ROOT, capture_output=True)
        profile(args.mode, height, width, args.batch, args.steps, data_dir, os.path.join(tmp, "profile"),
                args.kernels_json, args.ckpt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
