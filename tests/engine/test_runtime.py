"""The compile cache: a second process loads the saved training graph and computes the same step.

MindSpore's compile cache reuses a saved graph when only the entry script is unchanged: it checks
neither the graph's constants nor its input shapes (measured on 2.7.2: a cached ``x * k`` kept
the old ``k``). These tests pin the three things that make it safe and useful here: the CPU
RoIAlign's Python functions are registered under keys that are the same in every process, the
cache folder changes with everything that shapes the graph (and not with data-only keys), and a
second ``train.py`` process with a warm cache loads the graph and computes what an uncached run
with its own settings computes. That second-process test runs ``train.py`` three times (64x64,
light heads, two steps): two graph compiles (the cold run that fills the cache, the uncached
reference, which also runs with sink mode on) and one cache load; the reference is a compile of
its own because only a graph compiled at the warm run's learning rate shows that the loaded graph
keeps none of the cold run's values. The last tests check which graph inputs key the cache and
that OMP_NUM_THREADS sets the CPU kernel threads.
"""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from src.config import REPO_ROOT, load_config
from src.engine.runtime import (CACHE_LOADED_MESSAGE, COMPILE_CACHE_IGNORED_KEYS, compile_cache, compile_cache_folder,
                         source_digest)
from src.synthetic import generate
from train_process import train_env

pytestmark = pytest.mark.slow(55)


def test_pyfunc_ops_have_process_independent_keys():
    from mindspore.ops.operations._pyfunc_registry import get_pyfunc

    from src.maskrcnn.ops import roi_align_cpu as roi_align
    from src.maskrcnn.ops.cpu_ops import CpuMaxPool2d, pyfunc_key

    op = roi_align.cpu_roi_align_op(7, 2)
    key = op.attrs["fn_id"]
    assert key == pyfunc_key("roi_align.forward", (7, 2), roi_align.__file__)
    assert get_pyfunc(key) is op.func
    assert 0 < key < 2 ** 63
    pool = CpuMaxPool2d(3, 2, "same").pool
    assert get_pyfunc(pool.attrs["fn_id"]) is pool.func
    # Another process computes the same keys (id() would differ from process to process).
    code = ("from src.maskrcnn.ops import roi_align_cpu as roi_align; from src.maskrcnn.ops.cpu_ops import CpuMaxPool2d; "
            "print(roi_align.cpu_roi_align_op(7, 2).attrs['fn_id'], roi_align.cpu_roi_align_op(14, 2).attrs['fn_id'], "
            "CpuMaxPool2d(3, 2, 'same').pool.attrs['fn_id'], CpuMaxPool2d(3, 2, 1).pool.attrs['fn_id'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=REPO_ROOT)).stdout.split()
    here = [key, roi_align.cpu_roi_align_op(14, 2).attrs["fn_id"], pool.attrs["fn_id"],
            CpuMaxPool2d(3, 2, 1).pool.attrs["fn_id"]]
    assert [int(v) for v in out] == here
    assert len(set(here)) == 4


def test_cache_folder_follows_what_shapes_the_graph(monkeypatch):
    config = load_config()
    base = compile_cache_folder(config, "train")
    assert base.startswith(os.path.join(REPO_ROOT, "FineTune", ".compile_cache", "train-"))
    # Graph constants, shapes, dtypes and graph inputs the caller names give another folder.
    for changed in ({"img_height": 320}, {"rcnn_num_samples": 64}, {"compute_dtype": "float16"},
                    {"seed": 2}, {"weight_decay": 0.0}, {"grad_clip_norm": 5.0}):
        assert compile_cache_folder(config.replace(**changed), "train") != base, changed
    # Sink mode shapes the graph where the device sinks an epoch, not on the CPU (step by step).
    ascend = config.replace(device_target="Ascend")
    assert compile_cache_folder(ascend.replace(dataset_sink_mode=True), "train") != compile_cache_folder(ascend, "train")
    assert compile_cache_folder(config.replace(dataset_sink_mode=True), "train") == base
    assert compile_cache_folder(config, "train", {"pretrained_backbone": True}) != base
    assert compile_cache_folder(config, "train", {"lr_steps": 192}) != compile_cache_folder(config, "train",
                                                                                            {"lr_steps": 240})
    assert compile_cache_folder(config, "eval") != base
    # File locations, data-pipeline keys and values the graph reads from parameters (the LR
    # schedule, whose length train.py passes as a graph input, and the momentum) reuse the graph.
    same = config.replace(run_dir="elsewhere", coco_root="other", flip_ratio=0.0, num_parallel_workers=1,
                          base_lr=0.02, warmup_steps=10, lr_schedule="step", epoch_size=7, momentum=0.8)
    assert compile_cache_folder(same, "train") == base
    assert set(COMPILE_CACHE_IGNORED_KEYS) <= set(config.to_dict())
    # A machine that cannot build the C kernels gets graphs without them: another folder.
    from src.maskrcnn.ops import cpu_kernels

    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    assert compile_cache_folder(config, "train") != base
    monkeypatch.undo()
    # null or "" turns the cache off.
    assert compile_cache_folder(config.replace(compile_cache_dir=None), "train") is None
    assert compile_cache_folder(config.replace(compile_cache_dir=""), "train") is None


def test_source_digest_follows_every_source_byte(tmp_path):
    extra = tmp_path / "entry.py"
    extra.write_text("x = 1\n")
    before = source_digest([str(extra)])
    assert source_digest([str(extra)]) == before
    extra.write_text("x = 2\n")
    assert source_digest([str(extra)]) != before


def test_cache_is_off_by_config_and_for_a_second_run_in_a_process(tmp_path, monkeypatch):
    import src.engine.runtime as runtime

    config = load_config(overrides={"compile_cache_dir": str(tmp_path / "cache")})
    with compile_cache(config.replace(compile_cache_dir=None), "train") as folder:
        assert folder is None
    monkeypatch.setattr(runtime, "_compile_cache_used", True)
    with compile_cache(config, "train") as folder:
        assert folder is None
    assert not (tmp_path / "cache").exists()


def _train_once(data_dir, run_dir, cache_dir, base_lr=0.01, sink=False):
    """train.py in a fresh process, 2 steps of a small config (64x64, light heads) at ``base_lr``
    from the first step (no warm-up), ``dataset_sink_mode`` = ``sink``; ``cache_dir`` None turns
    the cache off. Returns (losses rows, log text)."""
    command = [sys.executable, os.path.join(REPO_ROOT, "train.py"), "--coco_root", str(data_dir),
               "--run_dir", str(run_dir), "--compile_cache_dir", str(cache_dir or "null"), "--img_height", "64",
               "--img_width", "64", "--batch_size", "2", "--epoch_size", "1", "--num_parallel_workers", "1",
               "--fpn_channels", "32", "--box_head_channels", "64", "--mask_head_channels", "32",
               "--rpn_pre_nms_top_k_train", "200", "--rpn_post_nms_top_k_train", "64", "--rcnn_num_samples", "32",
               "--log_every", "1", "--base_lr", str(base_lr), "--warmup_steps", "0",
               "--dataset_sink_mode", "true" if sink else "false"]
    # GLOG_v=2 shows MindSpore's warning that it ran a graph from the cache.
    result = subprocess.run(command, cwd=REPO_ROOT, env=train_env("2"), capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(run_dir / "losses.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle)), result.stdout + result.stderr


def test_a_second_process_loads_the_graph_and_follows_its_own_learning_rate(tmp_path):
    """A warm start with another base_lr runs the cached graph with the new LR: its losses are
    those of an uncached run at that LR, not the cold run's after the first update.

    The uncached reference runs with ``dataset_sink_mode`` on, which the CPU trains step by step
    (MindSpore 2.7 logs that it cannot sink): its own compile, so equal rows also show that sink
    mode gives the losses of step-by-step training on the CPU (the sink's step counting on a
    device that sinks: tests/engine/test_sink_mode.py). One run fewer than checking each claim
    alone, that is one training-graph compile fewer in the suite."""
    data_dir = tmp_path / "data"
    generate(str(data_dir), 4, 1, seed=0)
    cache_dir = tmp_path / "cache"
    cold_rows, cold_log = _train_once(data_dir, tmp_path / "cold", cache_dir, base_lr=0.01)
    graphs = sorted(cache_dir.glob("train-*/rank_0/graph_cache/compile_cache_*.mindir"))
    assert len(graphs) == 1, graphs  # the training graph, in the folder of this config
    assert CACHE_LOADED_MESSAGE not in cold_log
    saved_at = graphs[0].stat().st_mtime_ns

    warm_rows, warm_log = _train_once(data_dir, tmp_path / "warm", cache_dir, base_lr=0.03)
    assert CACHE_LOADED_MESSAGE in warm_log
    assert graphs[0].stat().st_mtime_ns == saved_at  # loaded, not compiled and saved again
    uncached_rows, uncached_log = _train_once(data_dir, tmp_path / "uncached_sink", None, base_lr=0.03, sink=True)
    assert CACHE_LOADED_MESSAGE not in uncached_log
    assert len(warm_rows) == len(cold_rows) == len(uncached_rows) == 2
    assert [int(r["step"]) for r in uncached_rows] == [int(r["step"]) for r in warm_rows] == [1, 2]
    loss_keys = [k for k in cold_rows[0] if k not in ("lr", "loss_scale", "step_seconds")]

    def losses(row):
        return {k: row[k] for k in loss_keys}

    assert [losses(r) for r in warm_rows] == [losses(r) for r in uncached_rows]
    assert [r["lr"] for r in warm_rows] == [r["lr"] for r in uncached_rows]
    assert all(np.isfinite(float(r["total"])) for r in warm_rows)
    # The first step's losses come before any update; the second follows the LR.
    assert losses(warm_rows[0]) == losses(cold_rows[0])
    assert warm_rows[1]["total"] != cold_rows[1]["total"]


def test_train_keys_the_graph_by_the_padded_length_of_its_lr_schedule(tmp_path, monkeypatch):
    """The graph holds the LR schedule padded to a power of two (at least 1024 steps): runs of 2
    and 3 steps per epoch share a graph, a run past 1024 steps gets another cache folder (the same
    folder ran the old graph and failed in its Gather once past its length)."""
    import train as train_script
    from mindspore.train import Model

    import src.engine.runtime as runtime

    seen = []

    def record(config, purpose, graph_inputs=None, entry_file=""):
        seen.append((graph_inputs, compile_cache_folder(config, purpose, graph_inputs, entry_file)))
        return runtime.contextlib.nullcontext(None)

    monkeypatch.setattr(runtime, "compile_cache", record)
    monkeypatch.setattr(Model, "train", lambda self, *args, **kwargs: None)
    for images, epochs in ((4, 1), (6, 1), (6, 400)):
        data_dir = tmp_path / f"data{images}"
        if not data_dir.exists():
            generate(str(data_dir), images, 1, seed=0)
        config = load_config(overrides={"coco_root": str(data_dir), "run_dir": str(tmp_path / f"run{images}-{epochs}"),
                                        "epoch_size": epochs, "img_height": 128, "img_width": 128,
                                        "num_parallel_workers": 1, "compile_cache_dir": str(tmp_path / "cache")})
        assert train_script.train(config) == 0
    assert [inputs for inputs, _ in seen] == [{"pretrained_backbone": False, "lr_steps": 1024}] * 2 + [
        {"pretrained_backbone": False, "lr_steps": 2048}]  # 3 steps x 400 epochs
    assert seen[0][1] == seen[1][1] != seen[2][1]


def test_omp_num_threads_sets_the_cpu_kernel_threads_once():
    code = ("import os; from src.engine.runtime import limit_cpu_threads; "
            "from mindspore._c_expression import RuntimeConf; "
            "print(limit_cpu_threads({'OMP_NUM_THREADS': 'two'}), limit_cpu_threads({'OMP_NUM_THREADS': '0'}), "
            "RuntimeConf.get_instance().is_op_threads_num_configured(), limit_cpu_threads(), "
            "limit_cpu_threads({'OMP_NUM_THREADS': '5'}), RuntimeConf.get_instance().is_op_threads_num_configured())")
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                         env=env).stdout.split()
    # not a positive integer: untouched; then the variable's 3, once (MindSpore takes it once)
    assert out == ["None", "None", "False", "3", "None", "True"]
