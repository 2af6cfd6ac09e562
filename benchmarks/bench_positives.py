"""Real positive RoI slots per image that stage-2 sampling yields in the first training steps.

    python benchmarks/bench_positives.py [--config_path FineTune/default.yaml] [--data DIR] [--steps 20]

The figure behind the choice of ``mask_rois_per_image`` (how many RoIs per image the mask head
trains on). Trains the recipe from random initialisation through the real training cells and,
before each step, counts on the same weights and batch the sampled positives of stage 2
(``RCNNTargets`` picks ``min(#positive candidates, P_max)`` of them whatever its random keys, so
the count is the training step's). ``--data`` defaults to a synthetic set made like the quick
start's (100 training images, seed 0). ``--ckpt`` starts from trained weights (e.g. the quick
start's ``last.ckpt``: late in training the proposals sit on the objects and the positives
multiply). One JSON line: the distribution of positives per image and the share of real positives
a bound K keeps, per image (K slots each) and shared by the batch (``B * K`` slots, as
``MaskLoss.select`` picks them).
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

from common import REPO_ROOT, emit

BOUNDS = (8, 12, 16, 20, 24)


def _count_cell(net):
    from mindspore import nn

    class CountPositives(nn.Cell):
        """The training graph up to stage-2 sampling: (positives [B], real instances [B])."""

        def __init__(self, network):
            super().__init__(auto_prefix=False)
            self.net = network

        def construct(self, image, image_shape, box, label, instance_valid, mask):
            _, objectness, deltas = self.net._features(image)  # pylint: disable=protected-access
            proposals, valid = self.net.proposals_train(objectness, deltas, self.net.anchors, image_shape)
            box_weights = self.net.rcnn_targets(proposals, valid, box, label, instance_valid)[4]
            return box_weights.sum(axis=1), instance_valid.sum(axis=1)

    return CountPositives(net)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config_path", default=os.path.join(REPO_ROOT, "FineTune", "default.yaml"))
    parser.add_argument("--data", default=None, help="COCO-format root (default: a generated synthetic set)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ckpt", default=None, help="start from these weights (default: random init)")
    args = parser.parse_args(argv)

    import mindspore as ms
    from mindspore import Tensor, nn

    import train as train_module
    from src.config import load_config
    from src.dataset import create_new_dataset
    from src.engine.lr_schedule import build_lr_schedule
    from src.maskrcnn.builder import build_model
    from src.engine.train_step import LossNet, TrainOneStepCell, WithLossCell

    data = args.data
    if data is None:
        data = os.path.join(tempfile.mkdtemp(prefix="bench_positives_"), "synthetic")
        subprocess.run([sys.executable, "-m", "src.synthetic", "--out", data, "--train", "100", "--val", "2",
                        "--seed", "0"], check=True, cwd=REPO_ROOT)
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    config = load_config(args.config_path).replace(coco_root=data, num_parallel_workers=1)
    p_max = int(config.rcnn_num_samples * config.rcnn_pos_fraction)
    ms.set_seed(config.seed)
    dataset = create_new_dataset(data, config.batch_size, is_training=True, num_parallel_workers=1, config=config)
    net = build_model(config)
    if args.ckpt:
        from src.checkpoint.load import load_inference_checkpoint

        load_inference_checkpoint(net, args.ckpt)
    lr = build_lr_schedule(config, dataset.get_dataset_size())
    optimizer = nn.Momentum(train_module.optimizer_groups(net, config.weight_decay),
                            learning_rate=Tensor(lr), momentum=config.momentum)
    step_cell = TrainOneStepCell(WithLossCell(net, LossNet()), optimizer, grad_clip_norm=config.grad_clip_norm)
    step_cell.set_train(True)
    counter = _count_cell(net)
    counter.set_train(True)
    positives, instances = [], []
    for step, batch in enumerate(dataset.create_tuple_iterator()):
        if step == args.steps:
            break
        counted, real = counter(*batch)
        positives += counted.asnumpy().astype(int).tolist()
        instances += real.asnumpy().astype(int).tolist()
        step_cell(*batch)
    counts = np.array(positives)
    kept = {str(k): round(float(np.minimum(counts, k).sum() / max(counts.sum(), 1)), 3) for k in BOUNDS}
    per_batch = counts[: counts.size // config.batch_size * config.batch_size].reshape(-1, config.batch_size).sum(1)
    kept_shared = {str(k): round(float(np.minimum(per_batch, config.batch_size * k).sum() / max(per_batch.sum(), 1)), 3)
                   for k in BOUNDS}
    emit({"benchmark": "stage2_positives_per_image", "config": os.path.relpath(args.config_path, REPO_ROOT),
          "img_height": config.img_height, "img_width": config.img_width, "p_max": p_max,
          "steps": args.steps, "images": int(counts.size), "min": int(counts.min()),
          "median": float(np.median(counts)), "max": int(counts.max()), "mean": round(float(counts.mean()), 2),
          "instances_median": float(np.median(instances)), "share_of_positives_kept_at_bound": kept,
          "share_kept_at_bound_shared_by_batch": kept_shared, "ckpt": args.ckpt,
          "per_image": positives})


if __name__ == "__main__":
    main()
