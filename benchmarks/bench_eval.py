"""Evaluation throughput: images/s of inference + mask paste-back + COCOeval.

A randomly initialised Mask R-CNN (speed does not depend on the weights; a random network keeps
every detection slot filled, the worst case for paste-back) is run over the synthetic val split
(generated into a temporary folder unless ``--coco_root`` is given) at each input size, and one
JSON line is printed per size::

    python benchmarks/bench_eval.py --sizes 384x640,768x1280 --num_images 8

``--ckpt RUN/last.ckpt`` measures a trained model instead: fewer real detections, so less
mask-head work (it runs on the real detections only) and less paste-back and RLE work.

Fields: ``compile_s`` (first batch, graph compilation included), ``net_s_per_image`` (steady-state
network time), ``postprocess_s_per_image`` (paste-back + RLE encoding), ``cocoeval_s`` (bbox +
segm COCOeval of all images), ``images_per_s`` (steady state: everything but the first batch's
compilation, i.e. (num_images - batch) images over their network + post-processing time, plus
COCOeval spread over all images).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from typing import List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import emit, peak_rss_mb  # noqa: E402
from src import synthetic  # noqa: E402
from src.config import load_config  # noqa: E402

DEFAULT_SIZES = "384x640,768x1280"


def parse_sizes(text: str) -> List[Tuple[int, int]]:
    """``"384x640,768x1280"`` -> [(384, 640), (768, 1280)] (height x width)."""
    sizes = []
    for item in text.split(","):
        try:
            height, width = (int(v) for v in item.lower().split("x"))
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"size '{item}' is not HEIGHTxWIDTH") from e
        sizes.append((height, width))
    return sizes


def inference_setup(config, ckpt: Optional[str] = None):
    """What eval.py runs for ``config``: ``(net, evaluator, batches)``, the network in inference
    mode with the weights of ``ckpt`` (random initialisation without), an evaluator over the val
    split of ``config.coco_root`` and that split's batches of ``config.batch_size`` as dicts of
    NumPy arrays (image, image_shape, image_id)."""
    from src.checkpoint.load import load_inference_checkpoint
    from src.evaluation.inference import build_eval_split
    from src.maskrcnn.builder import build_model

    net = build_model(config)
    if ckpt:
        load_inference_checkpoint(net, ckpt)
    net.set_train(False)
    dataset, evaluator, _ = build_eval_split(config)
    evaluator.reset()
    return net, evaluator, list(dataset.create_dict_iterator(num_epochs=1, output_numpy=True))


def bench_size(config_path: Optional[str], coco_root: str, height: int, width: int, num_images: int,
               batch_size: int, device_target: str, ckpt: Optional[str] = None) -> dict:
    """Time one input size; returns the JSON record."""
    import mindspore as ms

    config = load_config(config_path, {"coco_root": coco_root, "img_height": height, "img_width": width,
                                       "batch_size": batch_size, "device_target": device_target,
                                       "num_parallel_workers": 1})
    net, evaluator, batches = inference_setup(config, ckpt)
    batches = batches[: max(1, -(-num_images // batch_size))]
    compile_s = net_s = post_s = 0.0
    steady_images = 0
    for index, batch in enumerate(batches):
        start = time.perf_counter()
        outputs = net(ms.Tensor(batch["image"]), ms.Tensor(batch["image_shape"]))
        predictions = tuple(o.asnumpy() for o in outputs)
        elapsed = time.perf_counter() - start
        start = time.perf_counter()
        evaluator.process(predictions, batch["image_id"], batch["image_shape"])
        post = time.perf_counter() - start
        real = int((batch["image_id"] != -1).sum())
        if index == 0:
            compile_s = elapsed
        else:
            net_s += elapsed
            post_s += post
            steady_images += real
    start = time.perf_counter()
    metrics = evaluator.evaluate()
    cocoeval_s = time.perf_counter() - start
    evaluated = len(evaluator.seen_image_ids)
    steady_time = net_s + post_s + cocoeval_s * steady_images / max(evaluated, 1)
    return {
        "bench": "eval", "img_height": height, "img_width": width, "batch_size": batch_size,
        "device_target": device_target, "num_images": evaluated, "num_detections": metrics["num_detections"],
        "test_max_per_img": config.test_max_per_img, "ckpt": ckpt,
        "compile_s": round(compile_s, 2),
        "net_s_per_image": round(net_s / max(steady_images, 1), 3),
        "postprocess_s_per_image": round(post_s / max(steady_images, 1), 4),
        "cocoeval_s": round(cocoeval_s, 3),
        "images_per_s": round(steady_images / steady_time, 3) if steady_images else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "mindspore": ms.__version__,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes(DEFAULT_SIZES),
                        help=f"input sizes HEIGHTxWIDTH, comma-separated (default {DEFAULT_SIZES})")
    parser.add_argument("--num_images", type=int, default=8, help="images per size (>= 2 batches)")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--config_path", default=None, help="recipe (default FineTune/default.yaml)")
    parser.add_argument("--coco_root", default=None, help="COCO-format root (default: synthetic, temporary)")
    parser.add_argument("--device_target", default="CPU", choices=("CPU", "Ascend", "GPU"))
    parser.add_argument("--ckpt", default=None, help="trained weights (default: random initialisation)")
    args = parser.parse_args(argv)
    if args.num_images < 2 * args.batch_size:
        parser.error("--num_images must cover at least two batches (the first one compiles)")
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("GLOG_v", "3")
    from src.engine.runtime import set_mindspore_context

    set_mindspore_context(args.device_target, seed=1)
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        root = args.coco_root
        if root is None:
            root = tmp
            synthetic.generate(root, num_train=0, num_val=args.num_images, seed=0)
        for height, width in args.sizes:
            emit(bench_size(args.config_path, root, height, width, args.num_images, args.batch_size,
                            args.device_target, args.ckpt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
