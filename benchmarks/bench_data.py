"""Training input-pipeline throughput: images/s with masks, and peak memory.

Runs ``create_new_dataset(is_training=True)`` on the synthetic set (generated into a temporary
folder unless ``--coco_root`` is given) at the configured input size and prints one JSON line::

    python benchmarks/bench_data.py --img_height 768 --img_width 1280 --workers 2 [--augment full]

``--augment``: ``plain`` = keep-ratio resize + flip (the pipeline before src/augment.py),
``recipe`` = the augmentations of FineTune/default.yaml, ``full`` = every augmentation of
src/augment.py (random crop p=0.5, scale jitter 0.5-2.0, flip, photometric distortion).

Peak RSS is sampled every 200 ms over this process and all its children (the workers); RSS counts
shared-memory pages once per process that maps them, PSS splits them (closer to real use).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from typing import Optional, Sequence

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src import synthetic  # noqa: E402
from src.config import load_config  # noqa: E402
from src.data_sources import TrainSource  # noqa: E402
from src.dataset import COCOSubDataset, create_new_dataset  # noqa: E402

SAMPLE_PERIOD_S = 0.2
# Config overrides of each --augment choice.
AUGMENT_PRESETS = {
    "plain": {"scale_jitter_range": [], "crop_prob": 0.0, "photometric_distortion": False},
    "recipe": {},
    "full": {"scale_jitter_range": [0.5, 2.0], "crop_prob": 0.5, "photometric_distortion": True},
}


class _PeakRSS:
    """Samples the summed RSS (and PSS, which counts shared pages once) of this process and its
    descendants in a thread."""

    def __init__(self) -> None:
        self.peak = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self):
        me = psutil.Process()
        rss = pss = 0
        for proc in [me] + me.children(recursive=True):
            try:
                info = proc.memory_full_info()
            except psutil.Error:
                continue  # a worker exited between listing and reading
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        return rss, pss

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss = self._total()
            self.peak = max(self.peak, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self._stop.wait(SAMPLE_PERIOD_S)

    def __enter__(self) -> "_PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco_root", default=None, help="dataset root (default: generate synthetic)")
    parser.add_argument("--num_images", type=int, default=120, help="synthetic training images")
    parser.add_argument("--img_height", type=int, default=768)
    parser.add_argument("--img_width", type=int, default=1280)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max_instance_count", type=int, default=16)
    parser.add_argument("--warmup_batches", type=int, default=5)
    parser.add_argument("--batches", type=int, default=50, help="timed batches")
    parser.add_argument("--cpu_samples", type=int, default=40, help="samples timed in CPU seconds")
    parser.add_argument("--augment", choices=sorted(AUGMENT_PRESETS), default="plain",
                        help="augmentation list (see the module docstring)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.coco_root
        if root is None:
            root = os.path.join(tmp, "synthetic")
            synthetic.generate(root, args.num_images, 0, seed=0)
        cfg = load_config(overrides={
            "coco_root": root, "img_height": args.img_height, "img_width": args.img_width,
            "batch_size": args.batch_size, "num_parallel_workers": args.workers,
            "max_instance_count": args.max_instance_count, **AUGMENT_PRESETS[args.augment]})
        with _PeakRSS() as rss:
            dataset = create_new_dataset(root, args.batch_size, True, args.workers, cfg)
            iterator = dataset.create_tuple_iterator(num_epochs=-1, output_numpy=True)
            for _ in range(args.warmup_batches):
                next(iterator)
            start = time.perf_counter()
            for _ in range(args.batches):
                next(iterator)
            elapsed = time.perf_counter() - start
            iterator.stop()
        # CPU seconds per image in this process (one sample at a time): unlike images/s it
        # hardly depends on what else runs on the machine.
        source = TrainSource(COCOSubDataset(root, True, cfg), cfg)
        cpu_start = time.process_time()
        for key in range(args.cpu_samples):
            source[key]
        cpu_per_image = (time.process_time() - cpu_start) / args.cpu_samples
    images = args.batches * args.batch_size
    print(json.dumps({
        "benchmark": "data_pipeline_train", "img_height": args.img_height, "img_width": args.img_width,
        "batch_size": args.batch_size, "workers": args.workers,
        "max_instance_count": args.max_instance_count, "augment": args.augment, "images": images,
        "seconds": round(elapsed, 3), "images_per_s": round(images / elapsed, 2),
        "peak_rss_mb_incl_children": round(rss.peak / 2**20, 1),
        "peak_pss_mb_incl_children": round(rss.peak_pss / 2**20, 1),
        "cpu_s_per_image": round(cpu_per_image, 4), "cpu_samples": args.cpu_samples}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
