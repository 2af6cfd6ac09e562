"""Training step with the mask head on the real positives only (the default) or on every slot.

    python benchmarks/bench_mask_rows.py --data_dir DIR [--ckpt RUN/last.ckpt] [--image 256x256] [--steps 12]

Two modes, each in its own process, one after the other: ``positives`` (``mask_rois_per_image:
null``: the mask head runs on the batch's real positives, a dynamic shape) and ``every_slot``
(``mask_rois_per_image`` = the positive slots per image: the static graph that runs the head on
padding too). Both build the default recipe's training step at batch 2, read ``--steps + 1``
batches of DIR's train split into memory (so data work is not timed) and step once on each, from
random init (early training: few positives) or from ``--ckpt`` (late training: most slots are
real positives). One JSON line per mode: compile + first step, the median of the other steps,
the mean number of real positives per image in those batches (counted afterwards, in PyNative, on
the weights after the last step), the loss of every step (equal in both modes up to float32
rounding: the same initialisation and batches, the same loss).
"""

import argparse
import os
import statistics
import sys
import time

from bench_train import build_train_step
from common import emit, run_in_child

MODES = ("positives", "every_slot")


def run_mode(mode: str, height: int, width: int, steps: int, data_dir: str, ckpt: str) -> dict:
    import mindspore as ms
    import numpy as np

    from src.config import load_config
    from src.dataset import create_new_dataset

    config = load_config(overrides={"img_height": height, "img_width": width, "coco_root": data_dir})
    slots = int(config.rcnn_num_samples * config.rcnn_pos_fraction)
    overrides = {"mask_rois_per_image": None if mode == "positives" else slots}
    train_cell, _, _ = build_train_step(height, width, config.batch_size, data_dir, overrides=overrides)
    dataset = create_new_dataset(data_dir, config.batch_size, is_training=True, num_parallel_workers=1,
                                 config=config)
    batches = [batch for batch, _ in zip(dataset.create_tuple_iterator(), range(steps + 1))]
    net = train_cell.network.net
    if ckpt:
        from src.checkpoint.load import load_inference_checkpoint

        load_inference_checkpoint(net, ckpt)  # every parameter from the file, or an error
    positives = []

    def count_positives(cell, inputs, output):  # MaskLoss: inputs[6] = the picked slots' weights
        positives.append(float((inputs[6].asnumpy() > 0).sum()) / config.batch_size)

    times, losses = [], []
    for batch in batches:
        start = time.perf_counter()
        losses.append(float(train_cell(*batch)[0].asnumpy()))
        times.append(time.perf_counter() - start)
    # The positives per image, counted afterwards in PyNative (a hook cannot run inside the graph).
    ms.set_context(mode=ms.PYNATIVE_MODE)
    handle = net.mask_loss.register_forward_hook(count_positives)
    net.set_train(True)
    for batch in batches[1:]:
        net(*batch)
    handle.remove()
    return {"bench": "mask_rows", "mode": mode, "image": f"{height}x{width}", "batch": config.batch_size,
            "ckpt": ckpt or None, "compile_and_first_step_s": round(times[0], 1),
            "steady_step_s": round(statistics.median(times[1:]), 3), "steps_timed": len(times) - 1,
            "real_positives_per_image": round(float(np.mean(positives)), 1), "losses": [round(v, 5) for v in losses],
            "mask_head_rows": "real positives" if mode == "positives" else f"{slots} per image",
            "mindspore": ms.__version__}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="COCO-format set (e.g. the quick start's)")
    parser.add_argument("--ckpt", default="", help="start from these weights (default: random init)")
    parser.add_argument("--image", default="256x256", help="HEIGHTxWIDTH")
    parser.add_argument("--steps", type=int, default=12, help="steps timed after the first")
    parser.add_argument("--one_mode", default="", choices=("",) + MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.image.split("x"))
    if args.one_mode:
        emit(run_mode(args.one_mode, height, width, args.steps, os.path.abspath(args.data_dir), args.ckpt))
        return 0
    for mode in MODES:
        run_in_child(__file__, ["--one_mode", mode, "--data_dir", args.data_dir, "--ckpt", args.ckpt, "--image",
                                args.image, "--steps", str(args.steps)], {"bench": "mask_rows", "mode": mode})
    return 0


if __name__ == "__main__":
    sys.exit(main())
