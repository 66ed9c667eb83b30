"""Chapter 6's checkers accept the reference solutions and reject the stubs and plausible wrong answers."""
import pytest
import torch

from course_lib.exercises import ExerciseFailed, NotAttempted, ch06, load_solution

sol = lambda name: load_solution("ch06", name)  # noqa: E731


@pytest.mark.parametrize("name", ["psroi_vote", "ohem_keep"])
def test_solution_passes_and_stub_is_not_attempted(name, stub):
    check = getattr(ch06, f"check_{name}")
    assert check(sol(name)) is not None
    with pytest.raises(NotAttempted):
        check(stub)


def test_psroi_vote_rejects_plain_roi_pooling_swapped_bins_a_sum_and_round_half_even():
    solution = sol("psroi_vote")

    def not_position_sensitive(maps, roi, k, scale):  # every bin reads the class's first map
        return solution(maps.reshape(-1, k * k, *maps.shape[1:])[:, :1].expand(-1, k * k, -1, -1).reshape(maps.shape),
                        roi, k, scale)
    with pytest.raises(ExerciseFailed, match="its own part's map"):
        ch06.check_psroi_vote(not_position_sensitive)

    def rows_and_columns_swapped(maps, roi, k, scale):  # channel (c k + j) k + i
        c = maps.shape[0] // (k * k)
        swapped = maps.reshape(c, k, k, *maps.shape[1:]).transpose(1, 2).reshape(maps.shape)
        return solution(swapped, roi, k, scale)
    with pytest.raises(ExerciseFailed, match="its own part's map"):
        ch06.check_psroi_vote(rows_and_columns_swapped)

    with pytest.raises(ExerciseFailed, match="mean of the k x k bins"):
        ch06.check_psroi_vote(lambda maps, roi, k, scale: solution(maps, roi, k, scale) * k * k)

    def half_to_even(maps, roi, k, scale):  # torch.round: 0.5 -> 0, 1.5 -> 2, 6.5 -> 6
        return solution(maps, torch.round(roi * scale) / scale, k, scale)
    with pytest.raises(ExerciseFailed, match="half away from zero"):
        ch06.check_psroi_vote(half_to_even)


def test_ohem_keep_rejects_unsorted_indices_and_unstable_ties():
    with pytest.raises(ExerciseFailed, match="ascending order"):
        ch06.check_ohem_keep(lambda losses, b: torch.sort(losses, descending=True, stable=True).indices[:b])

    def last_of_the_ties(losses, b):  # ties to the *later* RoI
        flipped = torch.sort(losses.flip(0), descending=True, stable=True).indices[:b]
        return (losses.numel() - 1 - flipped).sort().values
    with pytest.raises(ExerciseFailed, match="earlier RoI wins"):
        ch06.check_ohem_keep(last_of_the_ties)

    with pytest.raises(ExerciseFailed):  # the lowest losses instead of the highest
        ch06.check_ohem_keep(lambda losses, b: torch.sort(losses, stable=True).indices[:b].sort().values)


def test_psroi_vote_rejects_a_roi_of_zero_cells():
    """A RoI inside one cell rounds to zero width and height: torchvision makes it one cell wide (max(., 1)); an
    answer without that clamp votes 0 for every class there, and agreed with torchvision on every other case."""
    import math

    def no_clamp(maps, roi, k, scale):
        x1, y1, x2, y2 = (math.floor(float(v) * scale + 0.5) for v in roi)
        if x2 - x1 >= 1 and y2 - y1 >= 1:
            return sol("psroi_vote")(maps, roi, k, scale)
        return maps.new_zeros(maps.shape[0] // (k * k))  # every bin empty
    with pytest.raises(ExerciseFailed, match="at least 1 x 1 cell"):
        ch06.check_psroi_vote(no_clamp)
