"""Inference speed of the exported MindIR (nn.GraphCell, native RoIAlign) against the checkpoint
network (CPU RoIAlign kernel), same weights, same images.

    python benchmarks/bench_export.py [--size 256] [--images 10]

Random weights (speed does not depend on them); the default recipe's heads and test-time counts.
After one warm-up call each (compilation), times ``--images`` batch-1 calls. One JSON line per model.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from common import emit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=10)
    args = parser.parse_args()
    import mindspore as ms

    from src.engine import mindir
    from src.config import load_config
    from src.maskrcnn.builder import build_model

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    ms.set_seed(0)
    config = load_config(None, {"img_height": args.size, "img_width": args.size})
    rng = np.random.default_rng(0)
    images = [ms.Tensor(rng.standard_normal((1, 3, args.size, args.size)).astype(np.float32))
              for _ in range(args.images)]
    shape = ms.Tensor(np.array([[args.size, args.size, 1.0, 1.0]], np.float32))
    net = build_model(config)
    net.set_train(False)
    with tempfile.TemporaryDirectory(prefix="bench_export_") as root:
        ckpt = os.path.join(root, "w.ckpt")
        ms.save_checkpoint(net, ckpt)
        export_net = build_model(config, for_export=True)
        ms.load_param_into_net(export_net, ms.load_checkpoint(ckpt))
        started = time.time()
        path = mindir.export_network(export_net, config, os.path.join(root, "model"), "MINDIR")
        export_s = time.time() - started
        graph = mindir.load_exported(path)
        for name, model in (("checkpoint", net), ("mindir", graph)):
            started = time.time()
            model(images[0], shape)
            first = time.time() - started
            started = time.time()
            for image in images:
                outputs = model(image, shape)
                outputs[0].asnumpy()
            seconds = time.time() - started
            emit({"benchmark": "inference_" + name, "img_size": args.size, "images": args.images,
                  "first_call_s": round(first, 2), "images_per_s": round(args.images / seconds, 3),
                  "export_s": round(export_s, 1) if name == "mindir" else None})
    return 0


if __name__ == "__main__":
    sys.exit(main())
