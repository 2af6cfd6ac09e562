"""Mask R-CNN (ResNet50 + FPN) fine-tuning pipeline for MindSpore."""

import os

# OpenMP threads sleep after a parallel region instead of spinning: the oneDNN 3 convolutions
# (src/maskrcnn/ops/conv3x3_onednn.c) run on libgomp's threads, and spinning ones take the cores from
# the MindSpore kernels that run next (BENCHMARKS.md, "Which convolution MindSpore runs"). libgomp
# reads this once, when it is loaded, i.e. at `import mindspore`; every entry point imports `src`
# first. A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
