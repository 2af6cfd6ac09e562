"""COCO box / mask AP of one model under each numerics preset's mask paste and COCO box width.

    python tools/compare_mask_pastes.py --ckpt RUN/last.ckpt --config_path RUN/config.yaml [--coco_root DIR]

Runs the network once over the config's val split (its own numerics preset) and scores the same
outputs three times, written as the ``native``, ``torchvision`` and ``zoo`` presets write them
(``src/evaluation/results.py``: mask paste; the zoo also widens COCO boxes by one pixel). Prints
one JSON line per paste with bbox / segm AP, AP50, AP75, APs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.maskrcnn.numerics import PRESET_NAMES  # noqa: E402  (the repository root is put on the path above)

REPORTED = ("AP", "AP50", "AP75", "APs")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="whole-model checkpoint")
    parser.add_argument("--config_path", required=True, help="the run's config")
    parser.add_argument("--coco_root", default=None, help="data folder (default: the config's)")
    args = parser.parse_args(argv)

    import mindspore as ms

    from src.checkpoint.load import load_inference_checkpoint
    from src.config import load_config
    from src.evaluation.coco_eval import COCOEvaluator
    from src.evaluation.inference import build_eval_split, run_inference
    from src.maskrcnn.builder import build_model

    overrides = {"coco_root": args.coco_root} if args.coco_root else {}
    config = load_config(args.config_path, overrides)
    ms.set_context(mode=ms.GRAPH_MODE, device_target=config.device_target)
    net = build_model(config)
    load_inference_checkpoint(net, args.ckpt)
    dataset, evaluator, sub = build_eval_split(config)
    batches = list(run_inference(net, dataset, progress=False))
    for paste in PRESET_NAMES:
        scorer = COCOEvaluator(sub.coco, evaluator.cat_ids, sub.image_ids, config.mask_thr, sub.label_to_cat_id,
                               max_dets=config.test_max_per_img, numerics=paste)
        for predictions, image_ids, image_shapes in batches:
            scorer.process(predictions, image_ids, image_shapes)
        metrics = scorer.evaluate()
        print(json.dumps({"paste": paste, "network_numerics": config.numerics,
                          **{f"{kind}_{k}": round(float(metrics[kind][k]), 4) for kind in ("bbox", "segm")
                             for k in REPORTED}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
