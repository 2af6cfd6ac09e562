"""Write an evaluation report of a *simulated* detector on the synthetic set (no network, seconds).

    python scripts/make_demo_report.py OUT_DIR [--val 30] [--seed 0]

Generates the synthetic COCO-format set (src/synthetic.py) into OUT_DIR/data, turns its
validation ground truth into detections with made-up errors (objects shifted, some missed, a few
class swaps, low-scoring background boxes) and writes OUT_DIR/report/report.html through the same
code as ``eval.py --report``. Used by scripts/check_report_page.sh to exercise the page in a
browser without a trained model; the numbers describe the simulation, not a network.
"""

import argparse
import json
import os
import sys

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from src.evaluation import report  # noqa: E402  (after the path set-up)
from src.synthetic import generate  # noqa: E402

MISS_RATE = 0.1
SWAP_RATE = 0.05
BACKGROUND_BOXES_PER_IMAGE = 1.0


def simulate(ann: dict, rng: np.random.Generator) -> list:
    """COCO results made from the ground truth of ``ann`` with random errors (boxes and RLE masks)."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = ann
    coco.createIndex()
    cat_ids = sorted(coco.cats)
    results = []
    for image_id, info in coco.imgs.items():
        height, width = info["height"], info["width"]
        for a in coco.imgToAnns[image_id]:
            if a.get("iscrowd") or rng.random() < MISS_RATE:
                continue
            x, y, w, h = a["bbox"]
            shift = rng.normal(0.0, 0.12, 2) * (w, h)  # most stay above IoU 0.5, some do not
            dx, dy = int(round(shift[0])), int(round(shift[1]))
            mask = np.roll(coco.annToMask(a), (dy, dx), axis=(0, 1))
            cat = a["category_id"] if rng.random() >= SWAP_RATE else int(rng.choice(cat_ids))
            results.append(_result(image_id, cat, mask, [x + dx, y + dy, w, h], float(rng.uniform(0.45, 1.0)),
                                   mask_utils))
        for _ in range(rng.poisson(BACKGROUND_BOXES_PER_IMAGE)):
            w, h = (int(v) for v in rng.integers(10, 40, 2))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            mask = np.zeros((height, width), np.uint8)
            mask[y:y + h, x:x + w] = 1
            results.append(_result(image_id, int(rng.choice(cat_ids)), mask, [x, y, w, h],
                                   float(rng.uniform(0.05, 0.7)), mask_utils))
    return results


def _result(image_id, cat_id, mask, bbox, score, mask_utils):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {"image_id": int(image_id), "category_id": int(cat_id), "bbox": [float(v) for v in bbox],
            "score": round(score, 4), "segmentation": rle}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--val", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = os.path.join(args.out_dir, "data")
    generate(data, num_train=0, num_val=args.val, seed=args.seed)
    ann_file = os.path.join(data, "annotations", "instances_val2017.json")
    with open(ann_file, encoding="utf-8") as handle:
        ann = json.load(handle)
    detections = os.path.join(args.out_dir, "simulated_detections.json")
    with open(detections, "w", encoding="utf-8") as handle:
        json.dump(simulate(ann, np.random.default_rng(args.seed)), handle)
    return report.main(["--ann_file", ann_file, "--detections", detections, "--image_dir",
                        os.path.join(data, "val2017"), "--out", os.path.join(args.out_dir, "report"),
                        "--title", "Evaluation report of a simulated detector (scripts/make_demo_report.py)"])


if __name__ == "__main__":
    sys.exit(main())
