"""Training speed of Mask_Rcnn_Resnet50 on the CPU backend: compile + first step, steady step.

    python benchmarks/bench_train.py [--cases 256x256,384x640,768x1280] [--steps 4] [--batch 2]

Each case runs in its own process (clean peak RSS) on a real batch from the synthetic set
and prints one JSON line: graph compile + first step seconds, median steady step seconds,
peak RSS, the model's training GFLOP per step (3x the forward convolution/dense FLOPs, counted
with forward hooks) and the achieved GFLOP/s.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import REPO_ROOT, emit, peak_rss_mb, run_in_child

DEFAULT_CASES = "256x256,384x640,768x1280"


def count_forward_flops(net, batch) -> float:
    """Multiply-add FLOPs (x2) of every Conv2d / Conv2dTranspose / Dense in one training forward."""
    import mindspore as ms
    from mindspore import nn

    total = [0.0]

    def conv_hook(cell, inputs, output):
        n, c_out, h, w = output.shape
        k_h, k_w = cell.kernel_size
        total[0] += 2.0 * n * c_out * h * w * cell.in_channels * k_h * k_w / cell.group

    def deconv_hook(cell, inputs, output):
        n, c_in, h, w = inputs[0].shape
        k_h, k_w = cell.kernel_size
        total[0] += 2.0 * n * c_in * h * w * cell.out_channels * k_h * k_w

    def dense_hook(cell, inputs, output):
        rows = 1
        for d in inputs[0].shape[:-1]:
            rows *= d
        total[0] += 2.0 * rows * cell.in_channels * cell.out_channels

    handles = []
    for _, cell in net.cells_and_names():
        if isinstance(cell, nn.Conv2dTranspose):
            handles.append(cell.register_forward_hook(deconv_hook))
        elif isinstance(cell, nn.Conv2d):
            handles.append(cell.register_forward_hook(conv_hook))
        elif isinstance(cell, nn.Dense):
            handles.append(cell.register_forward_hook(dense_hook))
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net(*batch)
    ms.set_context(mode=ms.GRAPH_MODE)
    for handle in handles:
        handle.remove()
    return total[0]


def build_train_step(height: int, width: int, batch_size: int, data_dir: str, count_flops: bool = False,
                     overrides=None, ckpt: str = ""):
    """(train_cell, one real batch, training FLOP per step or None) of the default recipe at HxW
    (with config ``overrides``, a dict), from random initialisation or the weights of ``ckpt``
    (a train.py checkpoint of that config: trained weights fill the mask head's RoI slots as late
    training does)."""
    import mindspore as ms
    from mindspore import nn

    from src.config import load_config
    from src.dataset import create_new_dataset
    from src.maskrcnn.builder import build_model
    from src.engine.train_step import LossNet, TrainOneStepCell, WithLossCell

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.set_seed(1)
    config = load_config(overrides={"img_height": height, "img_width": width, "batch_size": batch_size,
                                    "coco_root": data_dir, **(overrides or {})})
    dataset = create_new_dataset(data_dir, batch_size, is_training=True, num_parallel_workers=1, config=config)
    batch = next(dataset.create_tuple_iterator())
    net = build_model(config)
    if ckpt:
        from src.checkpoint.load import load_inference_checkpoint

        load_inference_checkpoint(net, ckpt)
    net.set_train(True)
    flops = 3.0 * count_forward_flops(net, batch) if count_flops else None
    optimizer = nn.Momentum(net.trainable_params(), learning_rate=0.001, momentum=0.9)
    train_cell = TrainOneStepCell(WithLossCell(net, LossNet()), optimizer, grad_clip_norm=config.grad_clip_norm)
    train_cell.set_train(True)
    return train_cell, batch, flops


def run_case(height: int, width: int, batch_size: int, steps: int, data_dir: str) -> dict:
    import mindspore as ms
    import numpy as np

    train_cell, batch, flops = build_train_step(height, width, batch_size, data_dir, count_flops=True)
    start = time.perf_counter()
    outputs = train_cell(*batch)
    loss = float(outputs[0].asnumpy())
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        outputs = train_cell(*batch)
        loss = float(outputs[0].asnumpy())
        times.append(time.perf_counter() - start)
    step = statistics.median(times)
    return {"bench": "train_step", "image": f"{height}x{width}", "batch": batch_size,
            "compile_and_first_step_s": round(first, 1), "steady_step_s": round(step, 2),
            "steps_timed": steps, "train_gflop_per_step": round(flops / 1e9, 1),
            "achieved_gflops": round(flops / step / 1e9, 1), "loss_finite": bool(np.isfinite(loss)),
            "loss": round(loss, 4), "peak_rss_mb": round(peak_rss_mb(include_children=False)),
            "mindspore": ms.__version__, "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated HxW input sizes")
    parser.add_argument("--steps", type=int, default=4, help="steady steps timed after the first")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--data_dir", default="", help="synthetic set (generated in a temp dir if empty)")
    parser.add_argument("--one_case", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one_case:
        height, width = (int(v) for v in args.one_case.split("x"))
        emit(run_case(height, width, args.batch, args.steps, args.data_dir))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if not data_dir:
            data_dir = os.path.join(tmp, "synthetic")
            subprocess.run([sys.executable, "-m", "src.synthetic", "--out", data_dir, "--train", "8", "--val", "2",
                            "--seed", "0"], check=True, cwd=REPO_ROOT)
        for case in args.cases.split(","):
            run_in_child(__file__, ["--one_case", case, "--steps", str(args.steps), "--batch", str(args.batch),
                                    "--data_dir", data_dir], {"bench": "train_step", "image": case})
    return 0


if __name__ == "__main__":
    sys.exit(main())
