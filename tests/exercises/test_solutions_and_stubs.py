"""Every checker of chapters 3b, 4, 5 and 7 accepts its reference solution (solutions/chNN.py) and rejects the stub
(NotAttempted, COURSE_SOLUTIONS unset); the wrong answers each rejects are in test_chNN.py."""
import importlib

import pytest

from course_lib.exercises import NotAttempted, load_solution

EXERCISES = {
    "ch03b": ["box_iou", "encode_boxes", "nms", "anchor_grid"],
    "ch04": ["roi_max_pool", "sample_rois", "multitask_loss"],
    "ch05": ["label_anchors", "filter_proposals"],
    "ch07": ["top_down_pathway", "level_of_rois"],
}


@pytest.mark.parametrize("chapter,name", [(c, n) for c, names in EXERCISES.items() for n in names],
                         ids=[f"{c}.{n}" for c, names in EXERCISES.items() for n in names])
def test_solution_passes_and_stub_is_not_attempted(chapter, name, stub):
    check = getattr(importlib.import_module(f"course_lib.exercises.{chapter}"), f"check_{name}")
    solution = load_solution(chapter, name)
    assert check(solution) is solution
    with pytest.raises(NotAttempted):
        check(stub)
