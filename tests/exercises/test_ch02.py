"""Chapter 02's checkers accept the solution and reject the stub and plausible wrong answers."""
import pytest
import torch

from course_lib.exercises import ExerciseFailed, NotAttempted, ch02
from course_lib.exercises import load_solution as solution
from course_lib.segmentation import FCN16s


def test_bilinear_kernel(stub):
    ch02.check_bilinear_kernel(solution("ch02", "bilinear_kernel"))
    with pytest.raises(NotAttempted):
        ch02.check_bilinear_kernel(stub)

    def centre_at_f(size):  # c = f instead of f - 0.5: shifted by half a pixel
        f = (size + 1) // 2
        r = (1 - (torch.arange(size, dtype=torch.float64) - f).abs() / f).clamp(min=0)
        return (r[:, None] * r[None, :]).float()

    def divides_by_size(size):
        f = (size + 1) // 2
        c = f - 1 if size % 2 else f - 0.5
        r = 1 - (torch.arange(size, dtype=torch.float64) - c).abs() / size
        return (r[:, None] * r[None, :]).float()

    with pytest.raises(ExerciseFailed, match="symmetric"):
        ch02.check_bilinear_kernel(centre_at_f)
    with pytest.raises(ExerciseFailed, match="not by the size"):
        ch02.check_bilinear_kernel(divides_by_size)


def test_upsampling_weight(stub):
    ch02.check_upsampling_weight(solution("ch02", "upsampling_weight"))
    with pytest.raises(NotAttempted):
        ch02.check_upsampling_weight(stub)
    kernel = solution("ch02", "bilinear_kernel")
    with pytest.raises(ExerciseFailed, match="only weight\\[c, c\\]"):  # the kernel in every (c, d) pair
        ch02.check_upsampling_weight(lambda c, f: kernel(2 * f).expand(c, c, 2 * f, 2 * f).clone())
    with pytest.raises(ExerciseFailed, match="kernel of side 2f"):  # a kernel of side f
        ch02.check_upsampling_weight(lambda c, f: torch.eye(c)[:, :, None, None] * kernel(f))


def test_fusion_shapes_are_the_networks():
    with torch.device("meta"):
        model = FCN16s(num_classes=3)
    shapes = {}
    for name in ("upscore2", "score_pool4"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[-2:])))
    for hw in [(1, 1), (227, 300), (375, 500), (64, 97)]:
        model(torch.zeros(1, 3, *hw, device="meta"))
        assert ch02.fcn16s_fusion_shapes(*hw) == (shapes["upscore2"], shapes["score_pool4"])


def test_fuse_pool4(stub):
    ch02.check_fuse_pool4(solution("ch02", "fuse_pool4"))
    with pytest.raises(NotAttempted):
        ch02.check_fuse_pool4(stub)

    def offset(k):
        return lambda up, pool4: up + pool4[..., k:k + up.shape[-2], k:k + up.shape[-1]]

    with pytest.raises(ExerciseFailed, match="not by the sizes"):
        ch02.check_fuse_pool4(ch02._centre_crop_sum)
    for k in (4, 6):
        with pytest.raises(ExerciseFailed, match="offset is where pixel 0"):
            ch02.check_fuse_pool4(offset(k))
    with pytest.raises(ExerciseFailed, match="no gradient"):
        ch02.check_fuse_pool4(lambda up, pool4: solution("ch02", "fuse_pool4")(up, pool4).detach())
