"""Where a training step's time goes: MindSpore's CPU profiler over a few steps, by stage.

    python benchmarks/profile_step.py [--image 256x256] [--steps 2] [--batch 2] [--data_dir DIR]
        [--kernels_json PATH]

Builds the default recipe's training step (as bench_train.py does) on a real batch of a small
synthetic set (or of ``--data_dir``), runs two warm-up steps, profiles ``--steps`` steps and
prints JSON lines: one per
network stage (the top-level attribute of ``Mask_Rcnn_Resnet50``: backbone, fpn, mask_head, ...)
with its forward and backward kernel milliseconds per step, one per kernel type, and a total.
``--kernels_json`` also writes every kernel as ``[[op type, full name, ms per step], ...]``
(bench_peer.py's ``profile_HxW`` case reads it).
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

STAGE = re.compile(r"net-Mask_Rcnn_Resnet50/([A-Za-z0-9_]+)-")


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
        match = STAGE.search(name)
        stage = match.group(1) if match else ("optimizer" if "optimizer" in name else "step_wrapper")
        by_stage[(stage, "bwd" if name.startswith("Gradients") else "fwd")] += ms_per_step
        by_type[kind] += ms_per_step
    return by_stage, by_type


def profile(height: int, width: int, batch_size: int, steps: int, data_dir: str, out_dir: str,
            kernels_json: str = "") -> None:
    from mindspore.profiler import ProfilerActivity, profile as ms_profile, tensorboard_trace_handler

    train_cell, batch, _ = build_train_step(height, width, batch_size, data_dir)
    for _ in range(2):  # compile + one steady step
        train_cell(*batch)[0].asnumpy()
    with ms_profile(activities=[ProfilerActivity.CPU], on_trace_ready=tensorboard_trace_handler(out_dir)) as prof:
        for _ in range(steps):
            train_cell(*batch)[0].asnumpy()
            prof.step()
    rows = kernel_rows(out_dir, steps)
    by_stage, by_type = kernel_times(rows)
    if kernels_json:
        with open(kernels_json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle)
    image = f"{height}x{width}"
    for (stage, direction), value in sorted(by_stage.items(), key=lambda item: -item[1]):
        emit({"bench": "profile_stage", "image": image, "stage": stage, "direction": direction,
              "ms_per_step": round(value, 1)})
    for kind, value in by_type.most_common(12):
        emit({"bench": "profile_kernel", "image": image, "kernel": kind, "ms_per_step": round(value, 1)})
    emit({"bench": "profile_total", "image": image, "kernel_ms_per_step": round(sum(by_type.values()), 1)})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="256x256", help="HEIGHTxWIDTH")
    parser.add_argument("--steps", type=int, default=2, help="profiled steps")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--data_dir", default="", help="COCO-format set (default: a small synthetic one)")
    parser.add_argument("--kernels_json", default="", help="also write every kernel's ms per step here")
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.image.split("x"))
    with tempfile.TemporaryDirectory(prefix="profile_step_") as tmp:
        data_dir = args.data_dir
        if not data_dir:
            data_dir = os.path.join(tmp, "synthetic")
            subprocess.run([sys.executable, "-m", "src.synthetic", "--out", data_dir, "--train", "8", "--val", "2",
                            "--seed", "0"], check=True, cwd=REPO_ROOT, capture_output=True)
        profile(height, width, args.batch, args.steps, data_dir, os.path.join(tmp, "profile"), args.kernels_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
