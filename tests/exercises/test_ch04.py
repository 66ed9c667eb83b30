"""Chapter 4's checkers reject plausible wrong answers (solutions and stubs: test_solutions_and_stubs.py)."""
import pytest
import torch

from course_lib.exercises import ExerciseFailed, ch04, load_solution

sol = lambda name: load_solution("ch04", name)  # noqa: E731


def _pool_loop(features, rois, k, scale, *, plus_one=True, rounding=lambda v: float(torch.floor(v + 0.5))):
    """A plain (slow) RoI max pool with switches for the usual mistakes; fine for the checker's small cases."""
    _, c, h, w = features.shape
    out = features.new_zeros(len(rois), c, k, k)
    for r, (b, *xyxy) in enumerate(rois.tolist()):
        x1, y1, x2, y2 = (rounding(torch.tensor(v * scale)) for v in xyxy)
        rw, rh = max(x2 - x1 + (1 if plus_one else 0), 1), max(y2 - y1 + (1 if plus_one else 0), 1)
        for i in range(k):
            for j in range(k):
                ys = (min(max(int(y1 + (i * rh) // k), 0), h), min(max(int(y1 - (-(i + 1) * rh // k)), 0), h))
                xs = (min(max(int(x1 + (j * rw) // k), 0), w), min(max(int(x1 - (-(j + 1) * rw // k)), 0), w))
                if ys[1] > ys[0] and xs[1] > xs[0]:
                    out[r, :, i, j] = features[int(b), :, ys[0]:ys[1], xs[0]:xs[1]].amax(dim=(1, 2))
    return out


def test_roi_max_pool_rejects_missing_plus_one_and_half_to_even_rounding():
    with pytest.raises(ExerciseFailed, match="x2 - x1 \\+ 1"):
        ch04.check_roi_max_pool(lambda f, r, k, s: _pool_loop(f, r, k, s, plus_one=False))
    with pytest.raises(ExerciseFailed, match="half away from zero"):
        ch04.check_roi_max_pool(lambda f, r, k, s: _pool_loop(f, r, k, s, rounding=lambda v: float(torch.round(v))))


def test_sample_rois_rejects_wrong_background_range_and_missing_ground_truth():
    def no_lower_bound(p, gt, lab, num_samples=64, positive_fraction=0.25, fg_iou_thresh=0.5, bg_iou_thresh=(0.1, 0.5)):
        return sol("sample_rois")(p, gt, lab, num_samples, positive_fraction, fg_iou_thresh, (0.0, bg_iou_thresh[1]))
    with pytest.raises(ExerciseFailed, match="background"):
        ch04.check_sample_rois(no_lower_bound)

    def without_gt(p, gt, lab, *args, **kwargs):
        rois, labels = sol("sample_rois")(p, gt[:0], lab[:0], *args, **kwargs)
        return rois, labels
    with pytest.raises(ExerciseFailed):
        ch04.check_sample_rois(without_gt)


@pytest.mark.parametrize("mistake,message", [({"per_fg": True}, "not over the foreground"),
                                             ({"column": 0}, "true\\* class"), ({"l2": True}, "not L2")])
def test_multitask_loss_rejects_usual_mistakes(mistake, message):
    with pytest.raises(ExerciseFailed, match=message):
        ch04.check_multitask_loss(lambda *a, **k: ch04._loss_variant(*a, **k, **mistake))
