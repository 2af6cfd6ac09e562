"""Data-parallel training throughput with msrun on CPU workers (scripts/run_distribute_train.sh).

    python benchmarks/bench_parallel.py [--workers 1,2] [--size 128] [--images 8] [--epochs 2]

For each worker count N: a fresh synthetic set, a run of ``run_distribute_train.sh N`` (batch 1
per rank, light heads), then the median step time of rank 0 after the first step of each epoch
(compilation and pipeline start-up excluded), read from losses.csv. Images/s = N * batch / step.
Prints one JSON line per worker count.
"""

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import REPO_ROOT, emit


def run(workers: int, size: int, images: int, epochs: int) -> dict:
    from src.synthetic import generate

    with tempfile.TemporaryDirectory(prefix="bench_dp_") as root:
        data_dir = os.path.join(root, "data")
        generate(data_dir, images, 1, seed=0)
        run_dir = os.path.join(root, "run")
        args = ["--coco_root", data_dir, "--run_dir", run_dir, "--img_height", str(size), "--img_width", str(size),
                "--batch_size", "1", "--epoch_size", str(epochs), "--num_parallel_workers", "1",
                "--coco_classes", "[background, book, disc, triangle, cross]", "--fpn_channels", "64",
                "--box_head_channels", "256", "--mask_head_channels", "64", "--rpn_pre_nms_top_k_train", "200",
                "--rpn_post_nms_top_k_train", "64", "--rcnn_num_samples", "64", "--warmup_steps", "0"]
        started = time.time()
        result = subprocess.run(["bash", "scripts/run_distribute_train.sh", str(workers), "FineTune/default.yaml", "",
                                 *args], cwd=REPO_ROOT, capture_output=True, text=True)
        wall = time.time() - started
        if result.returncode != 0:
            sys.exit(f"run_distribute_train.sh {workers} failed:\n{result.stderr[-3000:]}")
        with open(os.path.join(run_dir, "losses.csv"), newline="") as handle:
            rows = list(csv.DictReader(handle))
    steps_per_epoch = len(rows) // epochs
    if steps_per_epoch != images // workers:
        # e.g. a second process writing the same losses.csv
        sys.exit(f"{workers} workers: losses.csv has {len(rows)} rows, expected {epochs * (images // workers)}")
    steady = [float(r["step_seconds"]) for i, r in enumerate(rows) if i % steps_per_epoch != 0]
    step = statistics.median(steady)
    return {"benchmark": "data_parallel_train", "workers": workers, "img_size": size, "batch_per_rank": 1,
            "global_batch": workers, "steps_per_rank": len(rows), "median_step_s": round(step, 3),
            "images_per_s": round(workers / step, 3), "wall_s_incl_compile": round(wall, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    for workers in (int(w) for w in args.workers.split(",")):
        emit(run(workers, args.size, args.images, args.epochs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
