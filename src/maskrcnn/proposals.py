"""RPN outputs -> a fixed number of proposals per image.

Per image and FPN level: keep the ``pre_nms_top_k`` anchors with the highest objectness, decode
their deltas, clip to the un-padded image, drop boxes not larger than ``min_size``, run NMS
(levels are kept apart: a box only suppresses boxes of its own level). Then the best
``post_nms_top_k`` boxes over all levels are returned, padded with ``valid = False``.

No gradient flows into the proposals (they are inputs of the second stage, as published).

Op notes: ``ops.NMSWithMask`` takes ``[K, 5]`` rows ``(x1, y1, x2, y2, score)``. On CPU/GPU it
sorts by score and returns the sorted rows; on Ascend it ignores the score, keeps the input order
and accepts at most 2864 boxes per call. The input here is already sorted by objectness
(top-k), and kept boxes/scores are read from the returned rows, so both behaviours give the
same result; ``pre_nms_top_k`` must stay <= 2864 on Ascend.
"""

import mindspore as ms
from mindspore import nn, ops

from src.maskrcnn.box_ops import DEFAULT_MAX_LOG_RATIO, clip_boxes, decode_boxes

# Score marking a dropped/suppressed/padding box (valid scores are sigmoid probabilities >= 0).
DROPPED_SCORE = -1.0
# Dropped boxes are moved here (outside every clipped box, also with "+1" area conventions) so
# they can never suppress a real box in NMS.
DROPPED_BOX_COORD = -16.0
ASCEND_NMS_MAX_BOXES = 2864


class ProposalGenerator(nn.Cell):
    """Top-k + decode + clip + size filter + per-level NMS + top-k.

    Args:
        level_anchor_counts: anchors per level, in order (``anchors.anchors_per_level``).
        pre_nms_top_k: boxes kept per level and image before NMS (2000 train / 1000 test).
        post_nms_top_k: proposals returned per image ``P`` (1000).
        nms_thr: NMS IoU threshold (0.7).
        min_size: boxes with width or height ``<= min_size`` pixels are dropped (0 drops only
            empty boxes).
        stds: 4 floats for :func:`box_ops.decode_boxes` ((1, 1, 1, 1) for the RPN).
        max_log_ratio: clamp of the decoded log size ratio.
        box_plus_one, clamp_below: box-coder conventions (:func:`box_ops.decode_boxes`).
        clip_to_input: None clips to the un-padded image; ``(height, width)`` clips to the padded
            network input instead (model zoo).
        filter_small: False keeps boxes of every size (model zoo; ``min_size`` unused).
        (See ``src/maskrcnn/numerics.py`` for the presets.)

    Inputs:
        objectness: ``[B, A]`` logits; deltas: ``[B, A, 4]``; anchors: ``[A, 4]``;
        image_shape: ``[B, 4]`` ``(resized_h, resized_w, scale_h, scale_w)``.

    Outputs:
        proposals ``[B, P, 4]`` f32 sorted by score within the valid ones (padding rows are 0),
        proposal_valid ``[B, P]`` bool.
    """

    def __init__(self, level_anchor_counts, pre_nms_top_k, post_nms_top_k, nms_thr, min_size, stds,
                 max_log_ratio=DEFAULT_MAX_LOG_RATIO, box_plus_one=False, clamp_below=True,
                 clip_to_input=None, filter_small=True):
        super().__init__()
        self.box_plus_one = bool(box_plus_one)
        self.clamp_below = bool(clamp_below)
        self.clip_to_input = None if clip_to_input is None else tuple(float(v) for v in clip_to_input)
        self.filter_small = bool(filter_small)
        counts = [int(c) for c in level_anchor_counts]
        if not counts or any(c <= 0 for c in counts):
            raise ValueError(f"ProposalGenerator: level_anchor_counts must be positive, got {counts!r}")
        if int(pre_nms_top_k) <= 0 or int(post_nms_top_k) <= 0:
            raise ValueError(f"ProposalGenerator: pre_nms_top_k and post_nms_top_k must be positive, "
                             f"got {pre_nms_top_k!r} and {post_nms_top_k!r}")
        if not 0.0 < nms_thr <= 1.0:
            raise ValueError(f"ProposalGenerator: nms_thr must be in (0, 1], got {nms_thr!r}")
        if len(stds) != 4:
            raise ValueError(f"ProposalGenerator: stds must have 4 values, got {list(stds)!r}")
        starts = [sum(counts[:i]) for i in range(len(counts))]
        self.level_slices = tuple((s, s + c, min(int(pre_nms_top_k), c)) for s, c in zip(starts, counts))
        self.num_anchors = sum(counts)
        self.num_candidates = sum(k for _, _, k in self.level_slices)
        self.post_nms_top_k = int(post_nms_top_k)
        self.min_size = float(min_size)
        self.stds = tuple(float(s) for s in stds)
        self.max_log_ratio = float(max_log_ratio)
        self.nms = ops.NMSWithMask(float(nms_thr))

    def construct(self, objectness, deltas, anchors, image_shape):
        objectness = ops.stop_gradient(objectness.astype(ms.float32))
        deltas = ops.stop_gradient(deltas.astype(ms.float32))
        anchors = anchors.astype(ms.float32)
        batch = objectness.shape[0]
        level_boxes = []
        level_scores = []
        for start, end, k in self.level_slices:
            logits, index = ops.topk(objectness[:, start:end], k, dim=-1, largest=True, sorted=True)
            index = index.astype(ms.int32)
            level_deltas = ops.gather(deltas[:, start:end], index, 1, batch_dims=1)  # [B, k, 4]
            level_anchors = ops.gather(anchors[start:end], index, 0)  # [B, k, 4]
            boxes = decode_boxes(level_anchors, level_deltas, self.stds, self.max_log_ratio,
                                 self.box_plus_one, self.clamp_below)
            boxes = clip_boxes(boxes, image_shape, self.clip_to_input)
            if self.filter_small:
                keep = ((boxes[..., 2] - boxes[..., 0]) > self.min_size) & \
                       ((boxes[..., 3] - boxes[..., 1]) > self.min_size)
            else:
                keep = ops.ones_like(logits).astype(ms.bool_)
            scores = ops.where(keep, ops.sigmoid(logits), DROPPED_SCORE)
            boxes = ops.where(ops.expand_dims(keep, 2), boxes, DROPPED_BOX_COORD)
            image_boxes = []
            image_scores = []
            for b in range(batch):
                rows, _, selected = self.nms(ops.concat((boxes[b], ops.expand_dims(scores[b], 1)), axis=1))
                kept = selected & (rows[:, 4] >= 0.0)
                image_boxes.append(rows[:, :4])
                image_scores.append(ops.where(kept, rows[:, 4], DROPPED_SCORE))
            level_boxes.append(ops.stack(image_boxes, axis=0))
            level_scores.append(ops.stack(image_scores, axis=0))
        boxes = ops.concat(level_boxes, axis=1)  # [B, K, 4]
        scores = ops.concat(level_scores, axis=1)  # [B, K]
        if self.num_candidates < self.post_nms_top_k:
            extra = self.post_nms_top_k - self.num_candidates
            boxes = ops.concat((boxes, ops.zeros((batch, extra, 4), ms.float32)), axis=1)
            scores = ops.concat((scores, ops.full((batch, extra), DROPPED_SCORE, dtype=ms.float32)), axis=1)
        top_scores, order = ops.topk(scores, self.post_nms_top_k, dim=-1, largest=True, sorted=True)
        proposals = ops.gather(boxes, order.astype(ms.int32), 1, batch_dims=1)
        valid = top_scores >= 0.0
        proposals = ops.where(ops.expand_dims(valid, 2), proposals, 0.0)
        return ops.stop_gradient(proposals), valid
