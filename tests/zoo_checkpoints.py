"""Test helpers: randomly initialised model-zoo checkpoints built from name/shape lists.

The lists (``tests/data/zoo_resnet50_params.txt``, ``tests/data/zoo_maskrcnn_params.txt``) are
facts about the model zoo's checkpoints, kept in the repository so the suite stands alone.
No weights are downloaded.
"""

import os
import re
from typing import Dict, Tuple

import mindspore as ms
import numpy as np
from mindspore import Tensor

ZOO_RESNET50_LIST = "zoo_resnet50_params.txt"
ZOO_MASKRCNN_LIST = "zoo_maskrcnn_params.txt"
_LINE = re.compile(r"^(\S+) \(([\d, ]*)\)$")

# Optimizer state a zoo training checkpoint may carry besides the weights.
ZOO_OPTIMIZER_STATE = {
    "moments.conv1.weight": (64, 3, 7, 7),
    "learning_rate": (1,),
    "global_step": (1,),
}


def read_param_list(zoo_lists_dir: str, file_name: str) -> Dict[str, Tuple[int, ...]]:
    """'name (d0, d1, ...)' lines -> {name: shape} in file order ('#' lines are comments)."""
    path = os.path.join(zoo_lists_dir, file_name)
    shapes = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            match = _LINE.match(line)
            assert match, f"unparsable line in {path}: {line!r}"
            shapes[match.group(1)] = tuple(int(v) for v in match.group(2).split(",") if v.strip())
    return shapes


def random_arrays(shapes: Dict[str, Tuple[int, ...]], seed: int) -> Dict[str, np.ndarray]:
    """Float32 standard-normal arrays of the given shapes (int32 for global_step; BatchNorm moving
    variances positive, as in any real checkpoint: loading refuses negative ones)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape in shapes.items():
        if name == "global_step":
            arrays[name] = np.array([1234], np.int32)
        else:
            arrays[name] = rng.standard_normal(shape, dtype=np.float32)
            if name.endswith("moving_variance"):
                arrays[name] = np.abs(arrays[name]) + np.float32(1e-3)
    return arrays


def save_arrays(arrays: Dict[str, np.ndarray], path: str) -> str:
    """Save as a MindSpore checkpoint the way the model zoo does: a list of {'name', 'data'}."""
    ms.save_checkpoint([{"name": name, "data": Tensor(value)} for name, value in arrays.items()], path)
    return path


def zoo_checkpoint(zoo_lists_dir: str, list_name: str, path: str, seed: int,
                   extra_shapes: Dict[str, Tuple[int, ...]] = None) -> Tuple[str, Dict[str, np.ndarray]]:
    """A random model-zoo checkpoint with the names and shapes of ``list_name`` (plus
    ``extra_shapes``, e.g. optimizer state) saved at ``path``; returns ``(path, arrays by name)``."""
    shapes = read_param_list(zoo_lists_dir, list_name)
    shapes.update(extra_shapes or {})
    arrays = random_arrays(shapes, seed=seed)
    return save_arrays(arrays, path), arrays
