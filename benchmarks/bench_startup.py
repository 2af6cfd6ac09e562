"""Start-up time of train.py: launch to the first finished training step, cold and warm compile cache.

    python benchmarks/bench_startup.py [--config_path FineTune/default.yaml] [--size 256x256]
                                       [--cases nocache,cold,warm,warm_new_lr] [--data DIR] [--steps 4]

Each case launches ``train.py`` as a fresh process on a tiny synthetic set (8 training images,
generated unless ``--data`` names one) and watches ``losses.csv``: the first row's arrival is
the first finished step. ``nocache`` runs with ``compile_cache_dir`` off; ``cold`` with an
empty cache folder (compiles and saves the graph); ``warm`` with the folder ``cold`` filled
(loads the graph); ``warm_new_lr`` the same with twice the config's ``base_lr`` (the LR schedule
is parameter data, so the graph still loads). One JSON line per case:

- ``time_to_first_step_s``: launch -> first row of losses.csv;
- ``first_step_s``: the first step as the loss callback timed it (graph compile or cache load,
  plus the step itself); ``before_first_step_s``: the rest (imports, data set, network build);
- ``steady_step_s``: median of the later steps (a warm start must not make them slower);
- ``first_losses``: the first step's loss components (warm must equal cold);
- ``graph_from_cache``: MindSpore logged that it ran the graph from the cache.
"""

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from common import REPO_ROOT, emit

from src.engine.runtime import CACHE_LOADED_MESSAGE

CASES = ("nocache", "cold", "warm", "warm_new_lr")
POLL_SECONDS = 0.05


def make_tiny_set(folder: str) -> str:
    """The synthetic set of the brief: 8 training and 2 validation images, seed 0."""
    subprocess.run([sys.executable, "-m", "src.synthetic", "--out", folder, "--train", "8", "--val", "2",
                    "--seed", "0"], cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return folder


def read_loss_rows(csv_path: str) -> list:
    """The data rows of a losses.csv written so far (dicts keyed by the header)."""
    if not os.path.exists(csv_path):
        return []
    with open(csv_path, newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle) if row.get("step_seconds")]


def run_case(case: str, args, data_dir: str, cache_dir: str, work_dir: str) -> dict:
    """Launch train.py once; return the case's timings and first-step losses."""
    height, width = (int(v) for v in args.size.split("x"))
    run_dir = os.path.join(work_dir, f"run_{case}")
    shutil.rmtree(run_dir, ignore_errors=True)
    csv_path = os.path.join(run_dir, "losses.csv")
    command = [sys.executable, os.path.join(REPO_ROOT, "train.py"), "--config_path", args.config_path,
               "--coco_root", data_dir, "--run_dir", run_dir, "--img_height", str(height),
               "--img_width", str(width), "--epoch_size", "1", "--log_every", "1",
               "--compile_cache_dir", "null" if case == "nocache" else cache_dir]
    if case == "warm_new_lr":
        from src.config import load_config

        command += ["--base_lr", str(2 * load_config(args.config_path).base_lr)]
    # GLOG_v=2 shows MindSpore's warning when it runs a graph from the cache.
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, GLOG_v="2")
    log_path = os.path.join(work_dir, f"{case}.log")
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        first_row_at = None
        while process.poll() is None:
            if first_row_at is None and read_loss_rows(csv_path):
                first_row_at = time.perf_counter() - started
            if first_row_at is not None and len(read_loss_rows(csv_path)) >= args.steps:
                break
            time.sleep(POLL_SECONDS)
        if process.poll() is None:
            process.terminate()
        process.wait()
    rows = read_loss_rows(csv_path)
    if not rows:
        raise RuntimeError(f"{case}: train.py wrote no losses (exit code {process.returncode}); see {log_path}")
    if first_row_at is None:  # the run ended between two polls
        first_row_at = time.perf_counter() - started
    first_step = float(rows[0]["step_seconds"])
    later = [float(r["step_seconds"]) for r in rows[1:]]
    loss_names = [k for k in rows[0] if k not in ("epoch", "step", "lr", "loss_scale", "step_seconds")]
    return {
        "bench": "startup", "case": case, "size": args.size, "config": os.path.relpath(args.config_path, REPO_ROOT),
        "time_to_first_step_s": round(first_row_at, 2), "first_step_s": round(first_step, 2),
        "before_first_step_s": round(first_row_at - first_step, 2),
        "steady_step_s": round(statistics.median(later), 3) if later else None,
        "steps_seen": len(rows), "first_losses": {k: float(rows[0][k]) for k in loss_names},
        "load_avg_1min": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count(),
        "graph_from_cache": CACHE_LOADED_MESSAGE in open(log_path, encoding="utf-8", errors="replace").read(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_path", default=os.path.join(REPO_ROOT, "FineTune", "default.yaml"))
    parser.add_argument("--size", default="256x256", help="HxW network input")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {CASES}")
    parser.add_argument("--data", default="", help="COCO-format root (default: a generated tiny set)")
    parser.add_argument("--steps", type=int, default=4, help="steps to wait for (steady step = median of 2..N)")
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"--cases: unknown case(s) {unknown}; choose from {CASES}")
    for warm in ("warm", "warm_new_lr"):
        if warm in cases and ("cold" not in cases or cases.index("cold") > cases.index(warm)):
            parser.error(f"--cases: '{warm}' loads what 'cold' saved: list cold before {warm}")
    args.config_path = os.path.abspath(args.config_path)
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as work_dir:
        data_dir = args.data or make_tiny_set(os.path.join(work_dir, "data"))
        cache_dir = os.path.join(work_dir, "compile_cache")
        results = {}
        for case in cases:
            if case == "cold":
                shutil.rmtree(cache_dir, ignore_errors=True)
            record = run_case(case, args, data_dir, cache_dir, work_dir)
            if case == "warm" and "cold" in results:
                record["same_first_losses_as_cold"] = record["first_losses"] == results["cold"]["first_losses"]
            results[case] = record
            emit(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
