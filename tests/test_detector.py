"""How many mask slots the two-graph inference runs (src/maskrcnn/detector.py)."""

from src.maskrcnn.detector import MASK_SLOT_STEPS, mask_slot_count


def test_no_detection_runs_no_mask_head():
    assert mask_slot_count(0, 50) == 0


def test_the_slots_are_the_next_step_at_least_the_detections_and_at_most_k():
    for detections in range(1, 101):
        slots = mask_slot_count(detections, 100)
        assert detections <= slots <= 100
        assert slots in MASK_SLOT_STEPS + (100,)
    assert mask_slot_count(3, 50) == 4
    assert mask_slot_count(9, 50) == 16
    assert mask_slot_count(33, 50) == 50  # the next step (64) is beyond K
    assert mask_slot_count(50, 50) == 50
    assert mask_slot_count(65, 100) == 100


def test_a_small_k_caps_every_step():
    assert [mask_slot_count(n, 6) for n in range(1, 7)] == [4, 4, 4, 4, 6, 6]
