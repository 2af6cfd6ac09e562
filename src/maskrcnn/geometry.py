"""Geometry constants of the network: the one home for strides and sizes that other code derives from.

The config (``src/config.py``) imports these to compute derived values (feature-map sizes, the
mask side) and to check the input size; the network's stages import them from here.
"""

from typing import Tuple

# Strides of the FPN levels P2..P6 relative to the network input.
FPN_STRIDES: Tuple[int, ...] = (4, 8, 16, 32, 64)
# Strides of the backbone's C2..C5 (and of P2..P5, the levels RoIAlign pools from).
FEATURE_STRIDES: Tuple[int, ...] = FPN_STRIDES[:4]
# The mask head's deconvolution enlarges its RoIAlign input by this factor: predicted masks are
# ``Config.mask_out_size = MASK_HEAD_UPSAMPLE * roi_mask_size`` pixels square (28 for 14).
MASK_HEAD_UPSAMPLE = 2
# The network input must be divisible by the stride of the coarsest backbone stage (C5).
INPUT_SIZE_MULTIPLE = FEATURE_STRIDES[-1]
