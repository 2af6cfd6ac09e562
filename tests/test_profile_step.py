"""benchmarks/profile_step.py: the profiler CSV is read per kernel and summed per stage, direction and
kernel type."""

import os
import sys

import pytest

from src.config import REPO_ROOT

pytestmark = pytest.mark.slow(25)

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


def test_inference_kernels_are_credited_to_the_network_attribute(tmp_path):
    """Without the training wrapper the stage is the attribute right under Default/; the network's
    own ops and functional expansions are not stages."""
    rows = [
        ("Conv2D", "Default/backbone-ResNet50/layer1-SequentialCell/0-Bottleneck/conv1-Conv2d/Conv2D-op0", 30),
        ("Gather", "Default/proposals_test-ProposalGenerator/Gather-op17", 8),
        ("Conv2D", "Default/mask_head-MaskHead/mask_logits-Conv2d/Conv2D-op0", 4),
        ("Reshape", "Default/Reshape-op7", 2),
        ("Mul", "Expand/_Muls/Mul-op55", 1),
    ]
    folder = tmp_path / "run"
    folder.mkdir()
    lines = [HEADER] + [f"Host,{kind},x,{name},1,{ms},0,0\n" for kind, name, ms in rows]
    (folder / "cpu_op_detail_info_0.csv").write_text("".join(lines))
    by_stage, _ = profile_step.kernel_times(profile_step.kernel_rows(str(tmp_path), steps=1))
    assert by_stage == {("backbone", "fwd"): 30, ("proposals_test", "fwd"): 8, ("mask_head", "fwd"): 4,
                        ("step_wrapper", "fwd"): 3}


def test_eval_mode_profiles_inference_batches(tmp_path):
    """--mode eval on a small synthetic set: every stage of inference shows up, no gradient."""
    import json
    import subprocess

    kernels = tmp_path / "kernels.json"
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "benchmarks", "profile_step.py"), "--mode",
                             "eval", "--image", "128x128", "--steps", "2", "--kernels_json", str(kernels)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
                            env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    stages = {(r["stage"], r["direction"]) for r in records if r["bench"] == "profile_stage"}
    for stage in ("backbone", "fpn", "rpn_head", "proposals_test", "box_roi_align", "box_head", "mask_head"):
        assert (stage, "fwd") in stages, stages
    assert not any(direction == "bwd" for _, direction in stages)
    (total,) = [r for r in records if r["bench"] == "profile_total"]
    assert total["mode"] == "eval" and total["weights"] == "random" and total["kernel_ms_per_step"] > 0
    assert abs(sum(ms for _, _, ms in json.loads(kernels.read_text())) - total["kernel_ms_per_step"]) < 1.0


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--ckpt", "/nonexistent/last.ckpt"], "--ckpt: no such file: /nonexistent/last.ckpt"),
])
def test_bad_arguments_are_named_before_any_work(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        profile_step.main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_startup_warm_cases_need_cold_first(capsys):
    import bench_startup

    for warm in ("warm", "warm_new_lr"):
        with pytest.raises(SystemExit) as exit_info:
            bench_startup.main(["--cases", f"{warm},cold"])
        assert exit_info.value.code == 2
        assert f"'{warm}' loads what 'cold' saved: list cold before {warm}" in capsys.readouterr().err
