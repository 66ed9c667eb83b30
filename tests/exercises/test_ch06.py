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


def _rounded_corners(roi, scale, rounding):
    return [rounding(float(v) * scale) for v in roi]


def test_psroi_vote_rejects_floor_of_x_plus_a_half_at_negative_half_cells():
    """floor(x + 0.5) is half away from zero only for x >= 0: -1.5 becomes -1, torchvision's round -2. It agreed
    with torchvision on every positive case, so a RoI that starts on a negative half cell is a hidden case."""
    import math

    def floor_plus_half(maps, roi, k, scale):
        corners = torch.tensor(_rounded_corners(roi, scale, lambda x: math.floor(x + 0.5)), dtype=roi.dtype)
        return sol("psroi_vote")(maps, corners / scale, k, scale)  # exact: whole cells scale back and round to themselves
    assert floor_plus_half(torch.ones(9, 4, 4), torch.tensor([16.0, 16, 48, 48]), 3, 1 / 16).eq(1).all()
    with pytest.raises(ExerciseFailed, match=r"-1.5 up to -1"):
        ch06.check_psroi_vote(floor_plus_half)


def test_psroi_vote_rejects_bins_of_a_whole_number_of_cells():
    """Bins of h // k cells each (at least one), laid end to end: wrong wherever k does not divide the RoI, and for
    a RoI narrower than k cells they run past it instead of overlapping inside it."""
    import math

    def integer_bins(maps, roi, k, scale):
        channels, height, width = maps.shape
        x1, y1, x2, y2 = _rounded_corners(roi, scale, lambda x: int(math.copysign(math.floor(abs(x) + 0.5), x)))
        bin_w, bin_h = max((x2 - x1) // k, 1), max((y2 - y1) // k, 1)
        parts, total = maps.reshape(channels // (k * k), k, k, height, width), maps.new_zeros(channels // (k * k))
        clip = lambda v, limit: min(max(v, 0), limit - 1)  # noqa: E731
        for i in range(k):
            top, bottom = clip(y1 + i * bin_h, height), clip(y1 + (i + 1) * bin_h, height)
            for j in range(k):
                left, right = clip(x1 + j * bin_w, width), clip(x1 + (j + 1) * bin_w, width)
                if bottom > top and right > left:
                    total += parts[:, i, j, top:bottom, left:right].mean(dim=(1, 2))
        return total / (k * k)
    with pytest.raises(ExerciseFailed):
        ch06.check_psroi_vote(integer_bins)


def test_ohem_keep_rejects_an_unstable_sort_among_many_ties():
    """torch.argsort without stable=True happened to keep the earlier RoI on the few ties of the small cases; on 300
    RoIs with many equal losses it does not."""
    with pytest.raises(ExerciseFailed, match="earlier RoI wins"):
        ch06.check_ohem_keep(lambda losses, b: losses.argsort(descending=True)[:b].sort().values)
