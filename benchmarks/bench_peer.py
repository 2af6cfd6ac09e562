"""Side by side: this project and torchvision's ``maskrcnn_resnet50_fpn``, same data, same settings.

    python benchmarks/bench_peer.py [--peer_python PATH] [--cases train_256x256,train_384x640,ap,eval_384x640]
        [--steps 10] [--warmup 2] [--budget_steps 192] [--skip_ap] [--profile_steps 2] [--out results.jsonl]

The peer runs in its own Python (``--peer_python`` or the environment variable ``PEER_PYTHON``),
never a project requirement; create one with::

    python3 -m venv ~/.venvs/torchvision && ~/.venvs/torchvision/bin/pip install torch torchvision \\
        pycocotools opencv-python-headless pyyaml

Without it the peer is skipped with one JSON line that says so. Both sides read the same
synthetic COCO-format set (``python -m src.synthetic --out DIR --train 100 --val 30 --seed 0``,
generated in the work folder unless ``--data_dir`` is given) from its JSON, at batch 2 from random
init, with every setting taken from the project's config (``--config_path``, default
FineTune/default.yaml) and handed to benchmarks/peer_torchvision.py as a settings JSON: the
canvas (keep-ratio resize into ``img_height x img_width``, padded to it), ``img_mean/img_std``,
the classes, RPN/RoI sample counts and proposal counts, lr / momentum / weight decay, the
warm-up + cosine schedule, gradient clipping, horizontal flip. torch runs on ``--threads`` (2).

Our side runs the project's CLIs as subprocesses: ``train.py`` with overrides (step times read
from its ``losses.csv``), ``eval.py`` (``metrics.json``) and ``benchmarks/bench_eval.py``.
Cases (one JSON line per framework and case, ``"bench": "peer"``):

- ``train_HxW``: ``steady_step_s`` = median ``step_seconds`` of ``--steps`` steps after the first
  ``--warmup`` (training on the data set, a new batch every step); ``first_step_s`` = from the
  process start to the first finished step (imports, data set, model, graph compile included),
  measured the same way on both sides: the time until the step's row appears in the loss CSV;
  ``last_step_s`` the same for the last step (the training's wall time on both sides; ``wall_s``
  runs to the process's end and so also counts saving, and in the ap case the peer's evaluation).
- ``ap``: train ``--budget_steps`` steps at 256x256 (the quick start's 192, a whole number of
  our epochs), then bbox / segm AP and AP50 on the val split with pycocotools (the same
  categories, images, maxDets and mask threshold on both sides).
  It also times evaluation at 384x640 of the model it trained (``trained_eval_384x640_*``: the
  mask heads run on real detections, fewer than a random model's).
- ``eval_HxW``: evaluation images/s of a random-init model over the val images (bench_eval.py's
  definition: steady network + paste-back/RLE time plus COCOeval, the first batch excluded).
- ``profile_HxW`` (not in the default list): where a training step's time goes, kernel by kernel,
  summed into the categories of :func:`our_kernel_category` / :func:`peer_kernel_category`
  (``ms_<category>`` per step, and ``kernel_ms_per_step``). Ours: ``profile_step.py``
  (MindSpore's profiler, ``--profile_steps`` steps after two, the default recipe's step on one
  batch of the set); the peer: its training loop (warm-up schedule and clipping, a new batch every
  step), ``torch.profiler`` self CPU time over its last ``--profile_steps`` of ``--warmup`` +
  ``--profile_steps`` steps. Both profilers add overhead; compare categories, not wall time.

Differences that remain (each side's own convention): torchvision has no crowd ignore regions
(crowd annotations are left out of its targets), fills unused positive RoI slots with negatives
(the project's default ``rcnn_fill_with_negatives: false``), resizes with its own bilinear
filter inside the model (the project: OpenCV area/bilinear in the data workers), and has its
own RPN details (minimum proposal size 1e-3, low-quality matches without ``rpn_min_pos_iou``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

from common import REPO_ROOT, emit

BENCH = "peer"
OURS, PEER = "mindspore", "torchvision"
DEFAULT_CASES = "train_256x256,train_384x640,ap,eval_384x640"
AP_CANVAS = (256, 256)
# The ap case also times evaluation of the model it trained (real detections, not every slot).
TRAINED_EVAL_CANVAS = (384, 640)
PEER_SCRIPT = os.path.join(REPO_ROOT, "benchmarks", "peer_torchvision.py")
PEER_ENV_VAR = "PEER_PYTHON"
PEER_VENV_HINT = ("python3 -m venv ~/.venvs/torchvision && ~/.venvs/torchvision/bin/pip install torch torchvision "
                  "pycocotools opencv-python-headless pyyaml")
PEER_MODULES = "torch, torchvision, pycocotools, cv2, numpy"
POLL_S = 0.05
# What the peer reports about itself (peer_torchvision.py's last JSON line).
PEER_VERSION_KEYS = ("torch", "torchvision", "threads")
# Config keys handed to the peer as they are (the rest of its settings are derived below).
PEER_CONFIG_KEYS = (
    "coco_root", "train_data_type", "val_data_type", "instance_set", "max_instance_count", "flip_ratio",
    "img_mean", "img_std", "num_parallel_workers", "fpn_channels", "anchor_scales", "anchor_ratios",
    "rpn_pos_iou_thr", "rpn_neg_iou_thr", "rpn_num_samples", "rpn_pos_fraction", "rpn_pre_nms_top_k_train",
    "rpn_post_nms_top_k_train", "rpn_pre_nms_top_k_test", "rpn_post_nms_top_k_test", "rpn_nms_thr",
    "rcnn_num_samples", "rcnn_pos_fraction", "rcnn_pos_iou_thr", "rcnn_neg_iou_thr", "box_target_stds",
    "roi_box_size", "roi_mask_size", "roi_sampling_ratio", "box_head_channels", "mask_head_channels",
    "test_score_thr", "test_nms_thr", "test_max_per_img", "mask_thr", "batch_size", "base_lr", "lr_schedule",
    "lr_step_ratios", "lr_step_gamma", "warmup_steps", "warmup_ratio", "momentum", "weight_decay",
    "grad_clip_norm", "seed")


# ---- pure helpers -------------------------------------------------------------------------------

def parse_case(name: str) -> Tuple[str, Optional[Tuple[int, int]]]:
    """``"train_384x640"`` -> ("train", (384, 640)); ``"ap"`` -> ("ap", None).

    Raises:
        ValueError: naming the case, when it is not train_HxW, eval_HxW, profile_HxW or ap.
    """
    if name == "ap":
        return "ap", None
    kind, _, size = name.partition("_")
    try:
        height, width = (int(v) for v in size.lower().split("x"))
    except ValueError:
        height = width = 0
    if kind not in ("train", "eval", "profile") or height <= 0 or width <= 0:
        raise ValueError(f"case '{name}' is not train_HxW, eval_HxW, profile_HxW or ap")
    return kind, (height, width)


KERNEL_CATEGORIES = ("convolution", "batch_norm", "relu", "roi_align", "matmul", "pooling_upsampling", "nms",
                     "optimizer", "other")


def our_kernel_category(op_type: str, full_name: str) -> str:
    """The category of one of our kernels (MindSpore op type and scope name).

    Convolutions include their bias add and its gradient (torch's convolution kernels do both);
    the ``pyfunc`` Custom ops are told apart by their Cell scope (RoIAlign, stem max-pool, FPN).
    """
    name = full_name.lower()
    if op_type.startswith("Conv2D") or op_type in ("BiasAdd", "BiasAddGrad"):
        return "convolution"
    if op_type.startswith("BatchNorm"):
        return "batch_norm"
    if op_type in ("ReLU", "ReluGrad"):
        return "relu"
    if op_type == "Custom":
        return "roi_align" if "roi_align" in name else "pooling_upsampling"
    if op_type.startswith(("MaxPool", "ResizeNearestNeighbor")):
        return "pooling_upsampling"
    if op_type in ("MatMul", "BatchMatMul"):
        return "matmul"
    if op_type.startswith("NMS"):
        return "nms"
    if op_type.startswith("Apply") or "optimizer" in name:
        return "optimizer"
    return "other"


def peer_kernel_category(name: str) -> str:
    """The category of a ``torch.profiler`` op name (an aten / torchvision op or autograd node)."""
    lower = name.lower()
    rules = (("convolution", ("convolution",)), ("batch_norm", ("batch_norm", "batchnorm")),
             ("relu", ("relu", "clamp_min", "threshold_backward")), ("roi_align", ("roi_align",)),
             ("pooling_upsampling", ("max_pool", "maxpool", "upsample")), ("nms", ("nms",)),
             ("optimizer", ("optimizer.",)))
    for category, words in rules:
        if any(word in lower for word in words):
            return category
    if lower in ("aten::mm", "aten::addmm", "aten::bmm") or "mmbackward" in lower:
        return "matmul"
    return "other"


def category_totals(kernels) -> Dict[str, float]:
    """``{"ms_<category>": ms per step}`` over ``(category, ms)`` pairs, every category present."""
    totals = dict.fromkeys(KERNEL_CATEGORIES, 0.0)
    for category, ms in kernels:
        totals[category] += ms
    return {f"ms_{category}": round(ms, 1) for category, ms in totals.items()}


def profile_record(kernels, steps: int) -> dict:
    """The profile case's record from ``(category, ms per step)`` pairs."""
    kernels = list(kernels)
    return {"profiled_steps": steps, "kernel_ms_per_step": round(sum(ms for _, ms in kernels), 1),
            **category_totals(kernels)}


def trained_eval_fields(record: dict) -> dict:
    """An eval-speed record as the ap case's ``trained_eval_*`` fields (its error, if any)."""
    canvas = "x".join(str(side) for side in TRAINED_EVAL_CANVAS)
    keys = ("images_per_s", "net_s_per_image", "num_detections", "error")
    return {f"trained_eval_{canvas}_{key}": record[key] for key in keys if key in record}


def peer_settings(config, canvas: Tuple[int, int], threads: int) -> dict:
    """The settings JSON of peer_torchvision.py: the config's values the peer needs, and the canvas."""
    settings = {key: getattr(config, key) for key in PEER_CONFIG_KEYS}
    settings.update(classes=list(config.coco_classes), canvas=list(canvas), threads=threads)
    return settings


def read_loss_rows(csv_path: str) -> List[Dict[str, str]]:
    """Complete rows of a loss CSV (train.py's losses.csv or the peer's); [] while it is absent."""
    if not os.path.exists(csv_path):
        return []
    with open(csv_path, newline="", encoding="utf-8") as handle:
        lines = handle.read()
    if not lines.endswith("\n"):  # a row being written
        lines = lines[: lines.rfind("\n") + 1]
    rows = list(csv.reader(lines.splitlines()))
    if len(rows) < 2:
        return []
    header = rows[0]
    return [dict(zip(header, row)) for row in rows[1:] if len(row) == len(header)]


def steady_step_s(rows: Sequence[Dict[str, str]], warmup: int) -> Optional[float]:
    """Median ``step_seconds`` of the rows after the first ``warmup`` (None without such rows)."""
    times = [float(row["step_seconds"]) for row in rows[warmup:]]
    return round(statistics.median(times), 3) if times else None


def resolve_python(path: str) -> str:
    """``~/.venvs/x/bin/python`` or ``python3.11`` (on PATH) -> an absolute path ('' stays '')."""
    if not path:
        return ""
    path = os.path.expanduser(path)
    if os.sep not in path:
        return shutil.which(path) or path
    return os.path.abspath(path)


def installed_version(package: str) -> Optional[str]:
    """The installed version of ``package`` in this Python (None if absent)."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def peer_python_problem(peer_python: str) -> Optional[str]:
    """Why ``peer_python`` cannot run the peer (None when it can)."""
    if not peer_python:
        return f"no peer Python given (--peer_python or {PEER_ENV_VAR})"
    if not (os.path.isfile(peer_python) and os.access(peer_python, os.X_OK)):
        return f"peer Python not found or not executable: {peer_python}"
    try:
        result = subprocess.run([peer_python, "-c", "import torch, torchvision, pycocotools, cv2, numpy"],
                                capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{peer_python} does not run: {e}"
    if result.returncode:
        lines = result.stderr.strip().splitlines()
        return f"{peer_python} cannot import {PEER_MODULES}: {lines[-1] if lines else result.returncode}"
    return None


# ---- running the two sides ----------------------------------------------------------------------

def _tail(path: str, lines: int = 3) -> List[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip().splitlines()[-lines:]
    except OSError:
        return []


def exit_text(returncode: Optional[int]) -> str:
    """``exit 1``, or ``killed by SIGKILL (out of memory?)`` for a negative return code."""
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        return f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    return f"exit {returncode}"


def failure_record(what: str, result: subprocess.CompletedProcess) -> dict:
    """``{"error": ...}`` naming the failed command, how it ended and its last stderr lines."""
    return {"error": f"{what} {exit_text(result.returncode)}: " + " | ".join(result.stderr.strip().splitlines()[-3:])}


def eval_speed_record(what: str, result: subprocess.CompletedProcess, version_keys: Sequence[str]) -> dict:
    """The eval-speed fields of the last JSON line a finished eval benchmark printed (or its failure)."""
    record = last_json_in(result.stdout)
    if result.returncode or record is None:
        return failure_record(what, result)
    keep = ("num_images", "num_detections", "compile_s", "net_s_per_image", "postprocess_s_per_image",
            "cocoeval_s", "images_per_s", *version_keys)
    return {key: record[key] for key in keep if key in record}


def profile_case_record(what: str, result: subprocess.CompletedProcess, kernels_json: str, steps: int,
                        category_of) -> dict:
    """The profile case's record from the ``kernels.json`` a finished profiler run wrote (rows of
    ``[*names, ms per step]``, ``category_of(*names)`` their category), or its failure."""
    if result.returncode or not os.path.exists(kernels_json):
        return failure_record(what, result)
    with open(kernels_json, encoding="utf-8") as handle:
        rows = json.load(handle)
    return profile_record(((category_of(*row[:-1]), row[-1]) for row in rows), steps)


def peer_versions(result: Optional[dict]) -> dict:
    """What the peer reported about itself (``PEER_VERSION_KEYS``) in its last JSON line."""
    return {key: result[key] for key in PEER_VERSION_KEYS if key in (result or {})}


def last_json_in(text: str) -> Optional[dict]:
    """The last line of ``text`` that is a JSON object (None without one)."""
    lines = [line for line in text.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def _last_json_in_file(path: str) -> Optional[dict]:
    """:func:`last_json_in` of a log file (None when it cannot be read)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return last_json_in(handle.read())
    except OSError:
        return None


def run_and_watch(cmd: Sequence[str], csv_path: str, log_prefix: str, env: dict, stop_after_steps: int = 0) -> dict:
    """Run ``cmd``, watching ``csv_path`` for finished steps.

    Args:
        cmd: the command (its own process group, so it can be stopped with its data workers).
        csv_path: the loss CSV the command writes, one row per finished step.
        log_prefix: stdout/stderr go to ``<log_prefix>.out`` / ``.err``.
        env: its environment.
        stop_after_steps: > 0: stop the command (SIGTERM to its group) once that many rows exist.

    Returns:
        dict(first_step_s / last_step_s: seconds from the start to the first / the last row (None
        if none), rows: the complete rows, returncode (None when stopped by us), wall_s (to the
        process's end: it also counts what the command does after its last step), stdout, stderr
        paths).
    """
    out_path, err_path = log_prefix + ".out", log_prefix + ".err"
    start = time.perf_counter()
    with open(out_path, "w", encoding="utf-8") as out, open(err_path, "w", encoding="utf-8") as err:
        process = subprocess.Popen(list(cmd), cwd=REPO_ROOT, env=env, stdout=out, stderr=err, start_new_session=True)
        first = last = None
        seen = 0
        stopped = False
        try:
            while process.poll() is None:
                time.sleep(POLL_S)
                rows = read_loss_rows(csv_path)
                if len(rows) > seen:
                    seen, last = len(rows), time.perf_counter() - start
                    first = last if first is None else first
                if stop_after_steps and len(rows) >= stop_after_steps:
                    os.killpg(process.pid, signal.SIGTERM)
                    stopped = True
                    break
        finally:
            if process.poll() is None and not stopped:  # interrupted (Ctrl-C): leave nothing running
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    wall = time.perf_counter() - start
    rows = read_loss_rows(csv_path)
    if len(rows) > seen:  # rows written between the last poll and the end
        last = wall
        first = wall if first is None else first
    return {"first_step_s": round(first, 1) if first is not None else None,
            "last_step_s": round(last, 1) if last is not None else None, "rows": rows,
            "returncode": None if stopped else process.returncode, "wall_s": round(wall, 1),
            "stdout": out_path, "stderr": err_path}


class Bench:
    """Shared state of one bench_peer run: paths, config, interpreters, where results go."""

    def __init__(self, args, data_dir: str, work_dir: str):
        self.args = args
        self.data_dir = data_dir
        self.work_dir = work_dir
        self.out_handle = open(args.out, "a", encoding="utf-8") if args.out else None
        self.ours_env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.ours_env.setdefault("GLOG_v", "3")
        self.peer_env = dict(os.environ)

    def report(self, framework: str, case: str, record: dict) -> None:
        record = dict({"bench": BENCH, "framework": framework, "case": case}, **record)
        record.setdefault("unix_time", int(time.time()))
        emit(record)
        if self.out_handle:
            self.out_handle.write(json.dumps(record, sort_keys=True) + "\n")
            self.out_handle.flush()

    def config(self, canvas: Tuple[int, int], **overrides):
        from src.config import load_config

        values = {"coco_root": self.data_dir, "img_height": canvas[0], "img_width": canvas[1]}
        values.update(overrides)
        return load_config(self.args.config_path, values)

    def folder(self, name: str) -> str:
        path = os.path.join(self.work_dir, name)
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        return path

    def epochs_for(self, steps: int) -> int:
        """Whole epochs of our data set that hold ``steps`` steps (at least 1)."""
        return max(1, math.ceil(steps / self.steps_per_epoch()))

    def steps_per_epoch(self) -> int:
        """Our training steps per epoch on the data set (images with an instance // batch)."""
        from src.dataset import COCOSubDataset

        config = self.config(AP_CANVAS)
        return len(COCOSubDataset(self.data_dir, is_training=True, config=config)) // config.batch_size

    # -- our side -------------------------------------------------------------------------------
    def _train_cmd(self, run_dir: str, canvas: Tuple[int, int], epochs: int) -> List[str]:
        return [sys.executable, "train.py", "--config_path", self.args.config_path, "--coco_root", self.data_dir,
                "--run_dir", run_dir, "--img_height", str(canvas[0]), "--img_width", str(canvas[1]),
                "--epoch_size", str(epochs), "--log_every", "1000000"]

    def ours_train(self, canvas: Tuple[int, int]) -> dict:
        needed = self.args.warmup + self.args.steps
        run_dir = self.folder(f"ours_train_{canvas[0]}x{canvas[1]}")
        run = run_and_watch(self._train_cmd(run_dir, canvas, self.epochs_for(needed)),
                            os.path.join(run_dir, "losses.csv"), os.path.join(run_dir, "train"), self.ours_env,
                            stop_after_steps=needed)
        return self._train_record(run, needed)

    def ours_ap(self) -> dict:
        per_epoch = self.steps_per_epoch()
        budget = self.args.budget_steps
        run_dir = self.folder("ours_ap")
        run = run_and_watch(self._train_cmd(run_dir, AP_CANVAS, budget // per_epoch),
                            os.path.join(run_dir, "losses.csv"), os.path.join(run_dir, "train"), self.ours_env)
        record = dict(self._train_record(run, budget), steps_per_epoch=per_epoch)
        if "error" in record:
            return record
        eval_dir = os.path.join(run_dir, "eval")
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "eval.py", "--config_path", self.args.config_path, "--coco_root",
                                 self.data_dir, "--img_height", str(AP_CANVAS[0]), "--img_width", str(AP_CANVAS[1]),
                                 "--ckpt", os.path.join(run_dir, "last.ckpt"), "--out", eval_dir, "--no_progress"],
                                cwd=REPO_ROOT, env=self.ours_env, capture_output=True, text=True)
        if result.returncode:
            return failure_record("eval.py", result)
        with open(os.path.join(eval_dir, "metrics.json"), encoding="utf-8") as handle:
            metrics = json.load(handle)
        record.update(eval_s=round(time.perf_counter() - start, 1), num_images=metrics.get("num_images"),
                      num_detections=metrics.get("num_detections"))
        for iou_type in ("bbox", "segm"):
            for stat in ("AP", "AP50"):
                record[f"{iou_type}_{stat}"] = round(float(metrics[iou_type][stat]), 4)
        trained_eval = self.ours_eval(TRAINED_EVAL_CANVAS, os.path.join(run_dir, "last.ckpt"))
        return dict(record, **trained_eval_fields(trained_eval))

    def ours_eval(self, canvas: Tuple[int, int], ckpt: str = "") -> dict:
        result = subprocess.run([sys.executable, os.path.join("benchmarks", "bench_eval.py"), "--sizes",
                                 f"{canvas[0]}x{canvas[1]}", "--num_images", str(self.args.eval_images),
                                 "--config_path", self.args.config_path, "--coco_root", self.data_dir]
                                + (["--ckpt", ckpt] if ckpt else []),
                                cwd=REPO_ROOT, env=self.ours_env, capture_output=True, text=True)
        return eval_speed_record("bench_eval.py", result, ("mindspore",))

    def ours_profile(self, canvas: Tuple[int, int]) -> dict:
        out_dir = self.folder(f"ours_profile_{canvas[0]}x{canvas[1]}")
        kernels_json = os.path.join(out_dir, "kernels.json")
        result = subprocess.run([sys.executable, os.path.join("benchmarks", "profile_step.py"), "--image",
                                 f"{canvas[0]}x{canvas[1]}", "--steps", str(self.args.profile_steps), "--batch",
                                 str(self.config(canvas).batch_size), "--data_dir", self.data_dir,
                                 "--kernels_json", kernels_json],
                                cwd=REPO_ROOT, env=self.ours_env, capture_output=True, text=True)
        return profile_case_record("profile_step.py", result, kernels_json, self.args.profile_steps,
                                   our_kernel_category)

    def _train_record(self, run: dict, needed: int) -> dict:
        """first_step_s, steady_step_s (median after --warmup over the first ``needed`` steps), ..."""
        rows = run["rows"][:needed]
        if len(rows) < needed:
            return {"error": f"{len(rows)} of {needed} steps finished ({exit_text(run['returncode'])}): "
                             + " | ".join(_tail(run["stderr"]))}
        return {"first_step_s": run["first_step_s"], "last_step_s": run["last_step_s"],
                "steady_step_s": steady_step_s(rows, self.args.warmup), "steps": needed,
                "warmup_steps": self.args.warmup, "final_loss": round(float(rows[-1]["total"]), 4),
                "wall_s": run["wall_s"]}

    # -- the peer -------------------------------------------------------------------------------
    def _peer_cmd(self, mode: str, settings: dict, out_dir: str, *extra: str) -> List[str]:
        settings_path = os.path.join(out_dir, "settings.json")
        with open(settings_path, "w", encoding="utf-8") as handle:
            json.dump(settings, handle, indent=1)
        return [self.args.peer_python, PEER_SCRIPT, mode, "--settings", settings_path, "--out", out_dir, *extra]

    def _peer_train_cmd(self, canvas: Tuple[int, int], steps: int, out_dir: str, *extra: str) -> List[str]:
        """The peer trains ``steps`` steps on the LR schedule of the whole epochs that hold them (ours)."""
        settings = peer_settings(self.config(canvas), canvas, self.args.threads)
        schedule_steps = self.epochs_for(steps) * self.steps_per_epoch()
        return self._peer_cmd("train", settings, out_dir, "--steps", str(steps), "--schedule_steps",
                              str(schedule_steps), *extra)

    def peer_train(self, canvas: Tuple[int, int]) -> dict:
        needed = self.args.warmup + self.args.steps
        out_dir = self.folder(f"peer_train_{canvas[0]}x{canvas[1]}")
        run = run_and_watch(self._peer_train_cmd(canvas, needed, out_dir), os.path.join(out_dir, "losses.csv"),
                            os.path.join(out_dir, "peer"), self.peer_env)
        return dict(self._train_record(run, needed), **peer_versions(_last_json_in_file(run["stdout"])))

    def peer_profile(self, canvas: Tuple[int, int]) -> dict:
        out_dir = self.folder(f"peer_profile_{canvas[0]}x{canvas[1]}")
        cmd = self._peer_train_cmd(canvas, self.args.warmup + self.args.profile_steps, out_dir,
                                   "--profile_steps", str(self.args.profile_steps))
        result = subprocess.run(cmd, cwd=REPO_ROOT, env=self.peer_env, capture_output=True, text=True)
        record = profile_case_record("peer", result, os.path.join(out_dir, "kernels.json"), self.args.profile_steps,
                                     peer_kernel_category)
        return dict(record, **peer_versions(last_json_in(result.stdout)))

    def peer_ap(self) -> dict:
        budget = self.args.budget_steps
        out_dir = self.folder("peer_ap")
        settings = peer_settings(self.config(AP_CANVAS), AP_CANVAS, self.args.threads)
        cmd = self._peer_cmd("train", settings, out_dir, "--steps", str(budget), "--schedule_steps", str(budget),
                             "--evaluate", "--save_weights", os.path.join(out_dir, "trained.pt"))
        run = run_and_watch(cmd, os.path.join(out_dir, "losses.csv"), os.path.join(out_dir, "peer"), self.peer_env)
        record = self._train_record(run, budget)
        if "error" in record:
            return record
        result = _last_json_in_file(run["stdout"])
        if run["returncode"] or result is None:
            return {"error": f"peer {exit_text(run['returncode'])}: " + " | ".join(_tail(run["stderr"]))}
        keep = ("num_images", "num_detections", "bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50", "eval_s",
                "steps_per_epoch", *PEER_VERSION_KEYS)
        record.update({key: result[key] for key in keep if key in result})
        trained_eval = self.peer_eval(TRAINED_EVAL_CANVAS, os.path.join(out_dir, "trained.pt"))
        return dict(record, **trained_eval_fields(trained_eval))

    def peer_eval(self, canvas: Tuple[int, int], weights: str = "") -> dict:
        out_dir = self.folder(f"peer_eval_{canvas[0]}x{canvas[1]}{'_trained' if weights else ''}")
        # bench_eval.py feeds our side with one data worker.
        settings = peer_settings(self.config(canvas, num_parallel_workers=1), canvas, self.args.threads)
        cmd = self._peer_cmd("eval_speed", settings, out_dir, "--num_images", str(self.args.eval_images),
                             *(["--weights", weights] if weights else []))
        result = subprocess.run(cmd, cwd=REPO_ROOT, env=self.peer_env, capture_output=True, text=True)
        return eval_speed_record("peer", result, PEER_VERSION_KEYS)


def run_case(bench: Bench, framework: str, case: str) -> dict:
    """One framework on one case; returns its JSON record (without bench/framework/case)."""
    kind, canvas = parse_case(case)
    ours = framework == OURS
    if kind == "ap":
        canvas = AP_CANVAS
        record = {"budget_steps": bench.args.budget_steps, **(bench.ours_ap() if ours else bench.peer_ap())}
    elif kind == "train":
        record = bench.ours_train(canvas) if ours else bench.peer_train(canvas)
    elif kind == "profile":
        record = bench.ours_profile(canvas) if ours else bench.peer_profile(canvas)
    else:
        record = bench.ours_eval(canvas) if ours else bench.peer_eval(canvas)
    versions = {"mindspore": installed_version("mindspore")} if ours else {}
    return {"image": f"{canvas[0]}x{canvas[1]}", "batch": bench.config(canvas).batch_size, **versions, **record}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer_python", default=os.environ.get(PEER_ENV_VAR, ""),
                        help=f"Python with {PEER_MODULES} (default: ${PEER_ENV_VAR}); absent = peer skipped")
    parser.add_argument("--frameworks", default=f"{OURS},{PEER}", help=f"comma-separated: {OURS}, {PEER}")
    parser.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated train_HxW, eval_HxW, profile_HxW, ap")
    parser.add_argument("--steps", type=int, default=10, help="train cases: steps timed after the warm-up")
    parser.add_argument("--warmup", type=int, default=2, help="train cases: first steps not timed (compile)")
    parser.add_argument("--budget_steps", type=int, default=192,
                        help="ap case: training steps at 256x256 (a multiple of our steps per epoch)")
    parser.add_argument("--skip_ap", action="store_true", help="leave out the ap case")
    parser.add_argument("--eval_images", type=int, default=30, help="eval cases: val images")
    parser.add_argument("--profile_steps", type=int, default=2, help="profile cases: profiled steps")
    parser.add_argument("--train_images", type=int, default=100, help="synthetic set: train images")
    parser.add_argument("--val_images", type=int, default=30, help="synthetic set: val images")
    parser.add_argument("--data_dir", default="", help="existing COCO-format set (default: synthetic, generated)")
    parser.add_argument("--config_path", default=os.path.join(REPO_ROOT, "FineTune", "default.yaml"),
                        help="our recipe; the peer's settings are read from it too")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads of the peer")
    parser.add_argument("--work_dir", default="", help="keep runs here (default: a temporary folder, removed)")
    parser.add_argument("--out", default="", help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    args.peer_python = resolve_python(args.peer_python)
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    unknown = [f for f in frameworks if f not in (OURS, PEER)]
    if unknown:
        parser.error(f"--frameworks: unknown '{unknown[0]}' (choose from {OURS}, {PEER})")
    cases = [c.strip() for c in args.cases.split(",") if c.strip() and not (args.skip_ap and c.strip() == "ap")]
    try:
        for case in cases:
            parse_case(case)
    except ValueError as e:
        parser.error(f"--cases: {e}")
    if min(args.steps, args.budget_steps, args.eval_images, args.profile_steps) < 1 or args.warmup < 1:
        parser.error("--steps, --warmup, --budget_steps, --eval_images and --profile_steps must be at least 1")
    if any(parse_case(c)[0] == "eval" for c in cases) and args.eval_images < 4:
        parser.error("--eval_images must cover at least two batches of 2 (the first one is not timed)")

    work_dir = args.work_dir or tempfile.mkdtemp(prefix="bench_peer_")
    os.makedirs(work_dir, exist_ok=True)
    bench = Bench(args, data_dir="", work_dir=work_dir)
    try:
        if PEER in frameworks:
            problem = peer_python_problem(args.peer_python)
            if problem:
                bench.report(PEER, "all", {"skipped": f"{problem}; create one with: {PEER_VENV_HINT}; then pass "
                                                      f"--peer_python ~/.venvs/torchvision/bin/python or set "
                                                      f"{PEER_ENV_VAR}"})
                frameworks.remove(PEER)
        if not frameworks or not cases:
            return 0
        data_dir = args.data_dir
        if not data_dir:
            data_dir = os.path.join(work_dir, "synthetic")
            subprocess.run([sys.executable, "-m", "src.synthetic", "--out", data_dir, "--train",
                            str(args.train_images), "--val", str(args.val_images), "--seed", "0"],
                           check=True, cwd=REPO_ROOT, env=bench.ours_env, stdout=subprocess.DEVNULL)
        bench.data_dir = os.path.abspath(data_dir)
        if "ap" in cases and OURS in frameworks and args.budget_steps % bench.steps_per_epoch():
            per_epoch = bench.steps_per_epoch()
            print(f"bench_peer.py: --budget_steps {args.budget_steps} is not a whole number of our epochs "
                  f"({per_epoch} steps per epoch on {bench.data_dir}); use a multiple of {per_epoch}", file=sys.stderr)
            return 2
        for case in cases:
            for framework in frameworks:
                bench.report(framework, case, run_case(bench, framework, case))
    finally:
        if bench.out_handle:
            bench.out_handle.close()
        if not args.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
