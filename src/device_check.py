"""Is the graph Ascend would compile device-safe? Checked on the CPU backend, no NPU needed.

    python -m src.device_check --config_path FineTune/coco_book.yaml [--img_size 256]
                               [--graphs train,infer] [--mindir FILE] [--any_config_key VALUE ...]

Builds the network of the recipe exactly as ``device_target: Ascend`` builds it (forced whatever
the recipe says: MindSpore's native kernels, float16 compute where ``compute_dtype`` asks for it
there, static shapes; ``src/maskrcnn/target.py`` decides all three), for training (the whole
``TrainOneStepCell`` with the recipe's loss scale) and for inference (the graph ``export.py``
writes; on Ascend the two are the same network). Each graph is compiled on the CPU backend with
MindSpore's IR dump on (the ``validate`` pass: the front end's finished graph, before any
backend pass) and every node of the IR is inspected. A node is refused when

- its primitive has a data-dependent output shape (``DYNAMIC_SHAPE_PRIMITIVES``), or one of its
  outputs has an unknown dimension (``-1``) or rank (``-2``);
- it runs Python or user code (``Custom`` pyfunc/aot ops, ``PyFunc``, ``PyExecute``);
- its primitive is not documented as supported on Ascend: the "Supported Platforms" section of
  the primitive's docstring in the installed MindSpore package (MindSpore's documentation),
  followed to the ``mindspore.ops`` function its class refers to where the class has none; a
  gradient primitive (``XGrad``, ``XBackprop...``, ``XGradWithArgmax``) counts as documented
  when its forward primitive (``X``, ``XWithArgmax``, ``XV2``) is; graph-only primitives with no
  docstring are listed in ``GRAPH_PRIMITIVES`` (and front-end substitutes in ``STANDS_FOR``),
  and anything else is refused as undocumented.

``--mindir FILE`` inspects an exported MindIR the same way (loaded and compiled as a graph).
Prints per graph the primitive counts and one line per refusal (primitive, output, and the line
of this repository's code that made it, from the IR's source map).
Exit codes: 0 device-safe, 2 refused (or bad input).
"""

import argparse
import collections
import inspect
import logging
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from src.cli import bad_input_errors
from src.config import REPO_ROOT, add_config_arguments, config_from_cli
from src.engine.runtime import EXIT_BAD_INPUT, EXIT_OK

logger = logging.getLogger("device_check")

GRAPHS = ("train", "infer")

# Primitives whose output shape depends on the input's values (MindSpore's migration guide names
# NonZero, Unique and MaskedSelect as the ops to replace with padding + a validity mask).
DYNAMIC_SHAPE_PRIMITIVES = frozenset({
    "NonZero", "NonZeroExt", "Unique", "UniqueConsecutive", "UniqueWithPad", "UniqueDim", "MaskedSelect",
    "Coalesce", "ListDiff", "SparseToDense",
})
# Primitives that run Python or user code: a device graph (and a MindIR file) cannot hold them.
USER_CODE_PRIMITIVES = frozenset({"Custom", "PyFunc", "PyExecute", "PyInterpret", "CustomAot"})
# Graph-structure primitives with no class docstring of their own: they place, pass or order
# values and launch no device kernel of their own (GraphEngine compiles them away).
GRAPH_PRIMITIVES = frozenset({
    "Return", "MakeTuple", "TupleGetItem", "Depend", "UpdateState", "Load", "Partial", "Switch",
    "MakeList", "ListGetItem", "StopGradient", "TupleToTensor", "ScalarToTensor", "TensorToTuple",
    "TensorToScalar", "RealMakeTuple", "RealTupleGetItem", "MakeRange", "ScalarCast", "ZerosLike",
    "OnesLike", "HyperMap", "Assign", "make_list", "make_tuple",
    "call",  # the IR's call of a graph value (the branch a Switch picked: control flow)
})
# Primitives the front end puts in place of a documented one (no docstring of their own); each
# is checked as the one it stands for.
STANDS_FOR = {
    "Muls": "Mul",  # a tensor times a Python scalar (ops.muls has an empty docstring)
    "MatMulExt": "MatMul",  # ops.matmul of 2-D tensors (ops.matmul_ext has an empty docstring)
}
# Prefixes the IR puts before primitive names (functional primitives, side-effect wrappers).
IR_NAME_PREFIXES = ("PrimFunc_", "S_Prim_", "Deprecated")
# A gradient primitive and the forward primitive it differentiates.
GRADIENT_NAME = re.compile(r"^(?P<forward>[A-Z]\w*?)(?:Grad(?:V\d+|Grad|Input|Filter)?|Backprop\w*|Backward)$")

_NODE = re.compile(r"^\s+%\d+\([^)]*\) = (?P<op>[A-Za-z_][\w.]*)[({ ]")
_TYPES = re.compile(r"^\s+: \(.*\) -> \((?P<outputs>.*)\)\s*$")
_SOURCE = re.compile(r"^\s+# In file (?P<file>[^:]+):(?P<line>\d+)")
_TENSOR_SHAPE = re.compile(r"<(?:Ref\[)?Tensor\[\w+\]\]?, \((?P<dims>[-\d, ]*)\)")
_PLATFORMS = re.compile(r"Supported Platforms:\s*\n(?P<body>(?:[ \t]*``\w+``.*\n?)+)")
_REFER_TO = re.compile(r"Refer to :func:`mindspore\.ops\.(?P<name>\w+)`")


@dataclass
class IrNode:
    """One node of the compiled graph: primitive, output type text and where our code made it."""

    primitive: str
    outputs: str = ""
    source: Optional[str] = None


@dataclass
class GraphReport:
    """What :func:`inspect_ir` found in one graph."""

    name: str
    counts: Dict[str, int] = field(default_factory=dict)
    refusals: List[str] = field(default_factory=list)

    @property
    def safe(self) -> bool:
        return not self.refusals

    def summary(self) -> str:
        ops_text = ", ".join(f"{name} {count}" for name, count in sorted(self.counts.items()))
        verdict = "device-safe" if self.safe else f"REFUSED ({len(self.refusals)})"
        return (f"{self.name}: {verdict}; {sum(self.counts.values())} primitive nodes, {len(self.counts)} "
                f"primitives: {ops_text}")


def primitive_name(ir_name: str) -> str:
    for prefix in IR_NAME_PREFIXES:
        if ir_name.startswith(prefix):
            return ir_name[len(prefix):]
    return ir_name


def parse_ir(text: str) -> List[IrNode]:
    """The primitive nodes of a MindSpore ``.ir`` dump (calls of sub-graphs are skipped); each
    with its output type text and the innermost line of this repository's code that made it."""
    nodes: List[IrNode] = []
    for line in text.splitlines():
        match = _NODE.match(line)
        if match:
            nodes.append(IrNode(primitive_name(match.group("op"))))
            continue
        if not nodes:
            continue
        node = nodes[-1]
        match = _TYPES.match(line)
        if match and not node.outputs:
            node.outputs = match.group("outputs")
            continue
        match = _SOURCE.match(line)
        if match:
            path = os.path.abspath(match.group("file"))
            if path.startswith(REPO_ROOT + os.sep) and os.sep + "site-packages" + os.sep not in path:
                node.source = f"{os.path.relpath(path, REPO_ROOT)}:{match.group('line')}"
    return nodes


def _documentation(name: str) -> Optional[str]:
    """The docstring of primitive class ``name`` in the installed MindSpore, else of the
    ``mindspore.ops`` function of the same name in snake case (``ReLU`` -> ``relu``), or None."""
    import importlib

    import mindspore.ops as ops

    for module_name in ("mindspore.ops.operations", "mindspore.ops.auto_generate.gen_ops_prim",
                        "mindspore.ops.operations._grad_ops", "mindspore.ops.operations._inner_ops",
                        "mindspore.ops.auto_generate"):
        cls = getattr(importlib.import_module(module_name), name, None)
        if inspect.isclass(cls) and cls.__doc__:
            return cls.__doc__
    function = getattr(ops, re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower(), None)
    return getattr(function, "__doc__", None)


def documented_platforms(name: str) -> Optional[Tuple[str, ...]]:
    """The platforms of primitive ``name``'s "Supported Platforms" section (following the class's
    "Refer to :func:`mindspore.ops.f`" to the function's docstring); None when undocumented."""
    import mindspore.ops as ops
    import mindspore.ops.auto_generate as generated

    doc = _documentation(STANDS_FOR.get(name, name))
    for _ in range(2):
        if not doc:
            return None
        match = _PLATFORMS.search(doc)
        if match:
            return tuple(re.findall(r"``(\w+)``", match.group("body")))
        refer = _REFER_TO.search(doc)
        function = (getattr(ops, refer.group("name"), None) or getattr(generated, refer.group("name"), None)
                    if refer else None)
        doc = getattr(function, "__doc__", None)
    return None


def ascend_verdict(name: str) -> Optional[str]:
    """None when MindSpore documents primitive ``name`` for Ascend, else why not."""
    if name in GRAPH_PRIMITIVES:
        return None
    platforms = documented_platforms(name)
    if platforms is None:
        gradient = GRADIENT_NAME.match(name)
        forwards = [gradient.group("forward")] if gradient else []
        if "Grad" in name[1:]:  # e.g. MaxPool3DGradWithArgmax -> MaxPool3DWithArgmax
            forwards.append(name.replace("Grad", "", 1))
        forwards += [forward + "V2" for forward in forwards]  # ResizeBilinearGrad -> ResizeBilinearV2
        if any(ascend_verdict(forward) is None for forward in forwards):
            return None
        return "no documentation of its supported platforms in MindSpore"
    if "Ascend" not in platforms:
        return f"documented for {', '.join(platforms) or 'no platform'} only, not Ascend"
    return None


def inspect_ir(name: str, text: str) -> GraphReport:
    """Count the primitives of one IR dump and list every refusal (one line each)."""
    report = GraphReport(name)
    verdicts: Dict[str, Optional[str]] = {}
    refused: Dict[str, int] = collections.Counter()
    for node in parse_ir(text):
        primitive = node.primitive
        report.counts[primitive] = report.counts.get(primitive, 0) + 1
        reasons = []
        if primitive in DYNAMIC_SHAPE_PRIMITIVES:
            reasons.append("data-dependent output shape")
        if primitive in USER_CODE_PRIMITIVES:
            reasons.append("runs Python/user code (pyfunc, aot or Custom op)")
        for dims in _TENSOR_SHAPE.finditer(node.outputs):
            if re.search(r"(^|[ ,])-[12]\b", dims.group("dims")):
                reasons.append(f"output shape ({dims.group('dims')}) not static")
                break
        if not reasons:
            if primitive not in verdicts:
                verdicts[primitive] = ascend_verdict(primitive)
            if verdicts[primitive]:
                reasons.append(verdicts[primitive])
        if reasons:
            where = f" at {node.source}" if node.source else ""
            refused[f"{name}: {primitive}{where}: {'; '.join(reasons)}"] += 1
    # One line per primitive, reason and line of code (with the node count when several).
    report.refusals = [line if count == 1 else f"{line} (x{count})" for line, count in refused.items()]
    return report


def compiled_ir(cell, inputs: Sequence, backend: bool = False) -> str:
    """Compile ``cell`` on ``inputs`` (graph mode) and return the text of the IR MindSpore dumps
    after its ``validate`` pass (the front end's finished graph, what a backend receives).

    Args:
        backend: also build the CPU kernels (``cell.compile``: a later call of ``cell`` on inputs
            of these shapes runs without compiling again); False stops after the front end, as
            ``ms.export`` does (about half the time).
    """
    import mindspore as ms
    from mindspore.common.api import _cell_graph_executor

    previous_filter = os.environ.get("MS_DEV_DUMP_IR_PASSES")
    os.environ["MS_DEV_DUMP_IR_PASSES"] = "validate"
    with tempfile.TemporaryDirectory(prefix="device_check_ir_") as folder:
        ms.set_context(save_graphs=1, save_graphs_path=folder)
        try:
            if backend:
                cell.compile(*inputs)
            else:  # an "export" phase runs the front end only (MindSpore's own ms.export does this)
                _cell_graph_executor.compile(cell, *inputs, phase=f"export.device_check.{id(cell)}", do_convert=False)
        finally:
            ms.set_context(save_graphs=0)
            if previous_filter is None:
                os.environ.pop("MS_DEV_DUMP_IR_PASSES", None)
            else:
                os.environ["MS_DEV_DUMP_IR_PASSES"] = previous_filter
        dumps = sorted((f for f in os.listdir(folder) if re.match(r"\d+_validate_\d+\.ir$", f)),
                       key=lambda f: int(f.split("_")[-1][:-3]))
        if not dumps:
            raise RuntimeError(f"MindSpore wrote no validate IR in {folder}")
        with open(os.path.join(folder, dumps[-1]), encoding="utf-8") as handle:
            return handle.read()


def device_config(config, img_size: Optional[int] = None):
    """``config`` as the Ascend target builds it (optionally at ``img_size`` x ``img_size``)."""
    changes = {"device_target": "Ascend", "compile_cache_dir": None}
    if img_size:
        # resize_to is a preprocessing rule (the image is resized before it enters the graph): at
        # another input size the graph is checked with the plain fit-into-the-input rule.
        changes.update(img_height=img_size, img_width=img_size, resize_to=[])
    return config.replace(**changes)


def zero_batch(config, training: bool) -> Tuple:
    """Tensors of the network's input shapes and dtypes (``src/batch.py``) for a compile."""
    import mindspore as ms
    import numpy as np

    b, n, h, w = config.batch_size, config.max_instance_count, config.img_height, config.img_width
    image = np.zeros((b, 3, h, w), np.float32)
    image_shape = np.tile(np.array([[h, w, 1.0, 1.0]], np.float32), (b, 1))
    if not training:
        return ms.Tensor(image), ms.Tensor(image_shape)
    arrays = (image, image_shape, np.zeros((b, n, 4), np.float32), np.zeros((b, n), np.int32),
              np.zeros((b, n), np.int32), np.zeros((b, n, h, w), np.uint8))
    return tuple(ms.Tensor(a) for a in arrays)


def training_cell(config, steps_per_epoch: int = 1):
    """The device recipe's ``TrainOneStepCell`` (Momentum over the LR schedule of
    ``steps_per_epoch`` x ``epoch_size`` steps, the recipe's loss scale), as train.py builds it:
    ``src/engine/trainer.py``'s builders."""
    from src.engine.trainer import build_optimizer, build_train_step, build_training_model

    net = build_training_model(config, "")
    optimizer, _ = build_optimizer(config, net, steps_per_epoch, 0, 1)
    return build_train_step(config, net, optimizer)


def check_config(config, graphs: Sequence[str] = GRAPHS) -> List[GraphReport]:
    """Build, compile and inspect ``config``'s graphs (call with :func:`device_config`'s config;
    the MindSpore context must be graph mode on the CPU)."""
    from src.maskrcnn.builder import build_model

    reports = []
    for graph in graphs:
        if graph == "train":
            cell, inputs = training_cell(config), zero_batch(config, training=True)
        else:
            cell, inputs = build_model(config), zero_batch(config, training=False)
            cell.set_train(False)
        reports.append(inspect_ir(graph, compiled_ir(cell, inputs)))
    return reports


def check_mindir(path: str) -> GraphReport:
    """Inspect an exported MindIR (``export.py``): loaded and compiled as a graph."""
    from src.engine.mindir import load_exported, read_metadata

    metadata = read_metadata(path)
    cell = load_exported(path)
    height, width = metadata["input_size"]
    import mindspore as ms
    import numpy as np

    batch = metadata.get("batch", 1)
    inputs = (ms.Tensor(np.zeros((batch, 3, height, width), np.float32)),
              ms.Tensor(np.tile(np.array([[height, width, 1.0, 1.0]], np.float32), (batch, 1))))
    return inspect_ir(f"mindir {os.path.basename(path)}", compiled_ir(cell, inputs))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--img_size", type=int, default=None,
                        help="check at this square input size (a multiple of 64) instead of the recipe's")
    parser.add_argument("--graphs", default=",".join(GRAPHS), help="comma-separated: train, infer (default both)")
    parser.add_argument("--mindir", default=None, help="inspect this exported MindIR instead of building the recipe")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, config = config_from_cli(parser, argv)
    graphs = [g.strip() for g in args.graphs.split(",") if g.strip()]
    unknown = [g for g in graphs if g not in GRAPHS]
    if unknown or not graphs:
        parser.error(f"--graphs must name some of {', '.join(GRAPHS)}, got {args.graphs!r}")
    from src.engine.runtime import set_mindspore_context, setup_logging

    setup_logging()
    try:
        set_mindspore_context("CPU", seed=config.seed)
        if args.mindir:
            reports, title = [check_mindir(args.mindir)], args.mindir
        else:
            config = device_config(config, args.img_size)
            title = (f"{args.config_path} as Ascend builds it ({config.img_height}x{config.img_width}, "
                     f"{'float16' if config.compute_float16 else 'float32'} compute)")
            reports = check_config(config, graphs)
    except bad_input_errors() as e:
        logger.error("%s", e)
        return EXIT_BAD_INPUT
    print(title)
    for report in reports:
        print("  " + report.summary())
    refusals = [line for report in reports for line in report.refusals]
    for line in refusals:
        print(f"refused: {line}")
    if refusals:
        print(f"{len(refusals)} refused node(s): not device-safe")
        return EXIT_BAD_INPUT
    print("device-safe")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
