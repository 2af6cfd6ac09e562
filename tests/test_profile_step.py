"""benchmarks/profile_step.py: the profiler CSV is read per kernel and summed per stage, direction and
kernel type."""

import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

import profile_step  # noqa: E402

HEADER = "op_side,op_type,op_name,full_op_name,op_occurrences,op_total_time(ms),op_avg_time(ms),total_proportion\n"
ROWS = [
    ("Conv2D", "Default/network-WithLossCell/net-Mask_Rcnn_Resnet50/mask_head-MaskHead/conv1-Conv2d/Conv2D-op0", 200),
    ("Conv2D", "Default/network-WithLossCell/net-Mask_Rcnn_Resnet50/backbone-ResNet50/conv1-Conv2d/Conv2D-op3", 40),
    ("Conv2DBackpropInput", "Gradients/Default/network-WithLossCell/net-Mask_Rcnn_Resnet50/mask_head-MaskHead/"
                            "conv1-Conv2d/Grad_Conv2D/Conv2DBackpropInput-op1", 300),
    ("ApplyMomentum", "Default/optimizer-Momentum/ApplyMomentum-op2", 10),
    ("ReduceSum", "Default/ReduceSum-op7", 6),
]


def test_kernel_times_per_step_by_stage_direction_and_type(tmp_path):
    folder = tmp_path / "run" / "FRAMEWORK"
    folder.mkdir(parents=True)
    lines = [HEADER] + [f"Host,{kind},x,{name},2,{ms},0,0\n" for kind, name, ms in ROWS]
    (folder / "cpu_op_detail_info_0.csv").write_text("".join(lines))
    by_stage, by_type = profile_step.kernel_times(profile_step.kernel_rows(str(tmp_path), steps=2))
    assert by_stage == {("mask_head", "fwd"): 100, ("backbone", "fwd"): 20, ("mask_head", "bwd"): 150,
                        ("optimizer", "fwd"): 5, ("step_wrapper", "fwd"): 3}
    assert by_type == {"Conv2D": 120, "Conv2DBackpropInput": 150, "ApplyMomentum": 5, "ReduceSum": 3}
    # Every kernel on its own, as bench_peer.py's profile case reads them (--kernels_json).
    assert profile_step.kernel_rows(str(tmp_path), steps=2) == [(kind, name, ms / 2) for kind, name, ms in ROWS]


def test_a_missing_profile_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        profile_step.kernel_rows(str(tmp_path), steps=1)
