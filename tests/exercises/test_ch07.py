"""Chapter 7's checkers reject plausible wrong answers (solutions and stubs: test_solutions_and_stubs.py)."""
import pytest
import torch

from course_lib.exercises import ExerciseFailed, ch07, load_solution

sol = lambda name: load_solution("ch07", name)  # noqa: E731


@pytest.mark.parametrize("mistake,message", [({"mode": "bilinear"}, "nearest neighbour"),
                                             ({"output": False}, "output convolution"),
                                             ({"accumulate": False}, "merged\\* map")])
def test_top_down_pathway_rejects_usual_mistakes(mistake, message):
    with pytest.raises(ExerciseFailed, match=message):
        ch07.check_top_down_pathway(lambda *a, **k: ch07._variant(*a, **k, **mistake))


def test_top_down_pathway_rejects_a_factor_of_two():
    def times_two(features, inner_blocks, layer_blocks, top_down=True, lateral=True):
        m = inner_blocks[-1](features[-1])
        out = [layer_blocks[-1](m)]
        for k in range(len(features) - 2, -1, -1):
            m = inner_blocks[k](features[k]) + torch.nn.functional.interpolate(m, scale_factor=2.0, mode="nearest")
            out.insert(0, layer_blocks[k](m))
        return out
    with pytest.raises(ExerciseFailed, match="odd sizes"):
        ch07.check_top_down_pathway(times_two)


@pytest.mark.parametrize("mistake,message", [({"rounding": torch.round}, "floor, not round"),
                                             ({"area": True}, "not the area"),
                                             ({"clamp": False}, "Clamp k"),
                                             ({"eps": 0.0}, "tiny eps")])
def test_level_of_rois_rejects_usual_mistakes(mistake, message):
    with pytest.raises(ExerciseFailed, match=message):
        ch07.check_level_of_rois(lambda *a, **k: ch07._levels_variant(*a, **k, **mistake))
