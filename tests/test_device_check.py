"""src/device_check.py: the graph Ascend would compile, checked and trained on the CPU backend.

- Every recipe of FineTune/ passes as Ascend builds it (inference graph at 128x128, tiny counts);
  the device recipe's training graph passes too.
- A graph that is not device-safe is refused with the op named: the CPU's dynamic mask rows
  (``mask_rows: dynamic``, NonZero) and the CPU's pyfunc kernels (Custom).
- The device recipe's training graph (native kernels, static shapes, float16 compute, dynamic
  loss scale, dataset_sink_mode on) trains 3 steps on the CPU: finite losses, weights updated.
  The compiled training cell is shared by the inspection and the training test.
"""

import glob
import os

import numpy as np
import pytest

from conftest import REPO_ROOT
from src import device_check
from src.config import load_config
from src.synthetic import generate

pytestmark = pytest.mark.slow(140)

TINY = {"img_height": 128, "img_width": 128, "fpn_channels": 32, "box_head_channels": 64, "mask_head_channels": 16,
        "max_instance_count": 4, "rpn_pre_nms_top_k_train": 200, "rpn_post_nms_top_k_train": 64,
        "rcnn_num_samples": 32, "rpn_pre_nms_top_k_test": 100, "rpn_post_nms_top_k_test": 32,
        "test_max_per_img": 10, "batch_size": 2, "num_parallel_workers": 1}
RECIPES = sorted(os.path.relpath(p, REPO_ROOT) for p in glob.glob(os.path.join(REPO_ROOT, "FineTune", "*.yaml")))
DEVICE_RECIPE = os.path.join("FineTune", "coco_book.yaml")
TRAIN_STEPS = 3


def _cli_args(recipe, *extra):
    args = ["--config_path", os.path.join(REPO_ROOT, recipe), "--img_size", "128"]
    for key, value in TINY.items():
        if key not in ("img_height", "img_width"):
            args += [f"--{key}", str(value)]
    return args + list(extra)


@pytest.fixture(autouse=True)
def graph_mode_on_the_cpu(graph_mode):
    yield


# ---- which primitives MindSpore documents for Ascend (no compile) -----------------------------

def test_the_ascend_verdict_reads_mindspores_documentation():
    assert device_check.documented_platforms("Conv2D") == ("Ascend", "GPU", "CPU")
    assert device_check.ascend_verdict("Conv2D") is None
    # a class that only refers to its function ("Refer to :func:`mindspore.ops.reshape`")
    assert "Ascend" in device_check.documented_platforms("Reshape")
    # gradients: documented through their forward primitive (ReluGrad -> ops.relu)
    assert device_check.ascend_verdict("ReluGrad") is None
    assert device_check.ascend_verdict("Conv2DBackpropFilter") is None
    # the torchvision stem's padded max-pool and the zoo's bilinear FPN upsampling, in training
    assert device_check.ascend_verdict("MaxPool3DGradWithArgmax") is None  # MaxPool3DWithArgmax
    assert device_check.ascend_verdict("ResizeBilinearGrad") is None  # ResizeBilinearV2
    # documented, but not for Ascend
    assert device_check.ascend_verdict("BesselI0") == "documented for GPU, CPU only, not Ascend"
    assert device_check.ascend_verdict("NoSuchPrimitive") == "no documentation of its supported platforms in MindSpore"
    assert device_check.ascend_verdict("UpdateState") is None  # graph-only, listed


def test_a_bad_graphs_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        device_check.main(["--graphs", "train,export"])
    assert exit_info.value.code == 2
    assert "--graphs must name some of train, infer, got 'train,export'" in capsys.readouterr().err


# ---- the recipes as Ascend builds them ------------------------------------------------------

@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipes_inference_graph_is_device_safe(recipe, capsys):
    code = device_check.main(_cli_args(recipe, "--graphs", "infer"))
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"{os.path.join(REPO_ROOT, recipe)} as Ascend builds it (128x128, float16 compute)" in out
    assert "  infer: device-safe;" in out and out.rstrip().endswith("device-safe")
    # the mask head and RoIAlign are in the graph (static), NonZero is not
    assert " ROIAlign 2," in out and " Conv2DTranspose 1," in out and "NonZero" not in out


def test_dynamic_mask_rows_are_refused_naming_nonzero_and_the_line(capsys):
    code = device_check.main(_cli_args(DEVICE_RECIPE, "--graphs", "infer", "--mask_rows", "dynamic"))
    out = capsys.readouterr().out
    assert code == 2
    refused = [line for line in out.splitlines() if line.startswith("refused: ")]
    assert ("refused: infer: NonZero at src/maskrcnn/mask_branch.py:158: data-dependent output shape; "
            "output shape (-1, 1) not static") in refused
    # what follows from it: the mask head's convolutions on an unknown row count
    assert any(line.startswith("refused: infer: Conv2D at src/maskrcnn/mask_branch.py:") and
               "output shape (-1, 16, 14, 14) not static" in line for line in refused)
    assert out.rstrip().endswith("refused node(s): not device-safe")


def test_the_cpu_kernels_are_refused_as_python_ops():
    """The CPU's RoIAlign kernel (a SciPy pyfunc op, src/maskrcnn/ops), alone in a graph."""
    import mindspore as ms
    from mindspore import nn

    from src.maskrcnn.target import CPU_KERNELS

    class CpuRoIAlign(nn.Cell):
        def __init__(self):
            super().__init__()
            self.pool = CPU_KERNELS.roi_align(7, 2)

        def construct(self, features, rois):
            return self.pool(features, rois)

    inputs = (ms.Tensor(np.zeros((1, 8, 16, 16), np.float32)),
              ms.Tensor(np.array([[0, 1, 1, 9, 9]] * 4, np.float32)))
    report = device_check.inspect_ir("infer", device_check.compiled_ir(CpuRoIAlign(), inputs))
    assert not report.safe
    (line,) = report.refusals
    assert line.startswith("infer: Custom at ") and line.endswith(": runs Python/user code (pyfunc, aot or Custom op)")
    assert "tests/test_device_check.py" in line or "src/maskrcnn/ops/" in line


# ---- the device recipe's training graph: inspected, then trained ----------------------------

@pytest.fixture(scope="module")
def device_training(tmp_path_factory):
    """(config, train cell, inspection report) of coco_book.yaml as Ascend builds it, tiny."""
    import mindspore as ms

    data_dir = tmp_path_factory.mktemp("device_data")
    # coco_book's one class is "book": images without a book are skipped, so generate more.
    generate(str(data_dir), 4 * TRAIN_STEPS, 1, seed=3)
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    try:
        config = device_check.device_config(load_config(os.path.join(REPO_ROOT, DEVICE_RECIPE),
                                                        dict(TINY, coco_root=str(data_dir), epoch_size=1,
                                                             warmup_steps=0)))
        ms.set_seed(config.seed)
        cell = device_check.training_cell(config, TRAIN_STEPS)
        # Compiled with the backend: the training test below runs this very graph.
        ir_text = device_check.compiled_ir(cell, device_check.zero_batch(config, True), backend=True)
        report = device_check.inspect_ir("train", ir_text)
        yield config, cell, report
    finally:
        ms.set_context(mode=previous)


def test_the_device_recipes_training_graph_is_device_safe(device_training):
    config, _, report = device_training
    assert config.device_target == "Ascend" and config.compute_float16 and config.dynamic_loss_scale
    assert report.safe, report.refusals
    # the whole step: forward, backward, loss-scale check and the optimizer
    for primitive in ("Conv2DBackpropFilter", "ROIAlignGrad", "ApplyMomentum", "IsFinite", "Conv2DTranspose"):
        assert report.counts.get(primitive, 0) >= 1, primitive
    assert "NonZero" not in report.counts and "Custom" not in report.counts


def test_the_device_recipes_graph_trains_on_the_cpu_with_sink_mode(device_training):
    """Native kernels, static mask rows, float16 compute (MindSpore 2.7.2 runs float16
    convolutions on the CPU), dynamic loss scale, dataset_sink_mode on (the CPU runs the sink
    step by step): finite losses and updated weights."""
    import mindspore as ms
    from mindspore.train import Callback, Model

    from src.dataset import create_new_dataset
    from src.maskrcnn.target import FLOAT16_CELLS, built_dtypes

    config, cell, _ = device_training
    net = cell.network.net
    assert net.static_mask_rows and net.mask_loss.rois_per_image == net.mask_loss.max_positives
    assert net.box_roi_align.kernel == "native"
    assert built_dtypes(net) == {name: "float16" for name in FLOAT16_CELLS}
    assert config.dataset_sink_mode

    class Outputs(Callback):
        def __init__(self):
            super().__init__()
            self.steps = []

        def on_train_step_end(self, run_context):
            self.steps.append([o.asnumpy() for o in run_context.original_args().net_outputs])

    watched = {p.name: p for p in net.trainable_params()
               if p.name in ("fpn.lateral_convs.0.weight", "mask_head.conv1.weight", "box_head.fc1.weight")}
    before = {name: p.asnumpy().copy() for name, p in watched.items()}
    dataset = create_new_dataset(config.coco_root, config.batch_size, is_training=True, num_parallel_workers=1,
                                 config=config)
    assert dataset.get_dataset_size() >= TRAIN_STEPS
    dataset = dataset.take(TRAIN_STEPS)
    recorder = Outputs()
    Model(cell).train(1, dataset, callbacks=[recorder], dataset_sink_mode=config.dataset_sink_mode)
    assert len(recorder.steps) == TRAIN_STEPS
    for outputs in recorder.steps:
        losses = np.array([float(v) for v in outputs[:6]])  # total + the five named losses
        assert np.isfinite(losses).all() and losses[0] > 0, losses
        assert float(outputs[7]) > 0  # the dynamic loss scale in use
    assert any(bool(outputs[6]) for outputs in recorder.steps)  # at least one step applied
    assert len(watched) == 3
    for name, param in watched.items():
        assert param.dtype == ms.float32  # float32 master weights
        assert np.isfinite(param.asnumpy()).all()
        assert not np.array_equal(param.asnumpy(), before[name]), f"{name} did not change"
