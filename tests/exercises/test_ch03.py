"""Chapter 03's checkers accept the solution and reject the stub and plausible wrong answers."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from course_lib.exercises import ExerciseFailed, NotAttempted, ch03
from course_lib.exercises import load_solution as solution


def _weight_map(instances, labels, class_weights, w0=10.0, sigma=5.0, *, everywhere=False, nearest_twice=False):
    instances, labels = np.asarray(instances), np.asarray(labels)
    valid = labels != 255
    w = np.asarray(class_weights, dtype=np.float64)[np.where(valid, labels, 0)]
    ids = [i for i in np.unique(instances) if i > 0]
    if len(ids) >= 2:
        d = np.stack([ndimage.distance_transform_edt(instances != i) for i in ids])
        d1, d2 = np.partition(d, 1, axis=0)[:2]
        if nearest_twice:  # d2 taken as the distance to any foreground (= d1 on background)
            d2 = ndimage.distance_transform_edt(instances == 0)
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
        w = w + (border if everywhere else np.where(instances == 0, border, 0.0))
    return torch.from_numpy(np.where(valid, w, 0.0)).float()


def test_weight_map(stub):
    ch03.check_weight_map(solution("ch03", "weight_map"))
    ch03.check_weight_map(_weight_map)
    with pytest.raises(NotAttempted):
        ch03.check_weight_map(stub)
    with pytest.raises(ExerciseFailed, match="background pixels only"):
        ch03.check_weight_map(lambda *a, **k: _weight_map(*a, **k, everywhere=True))
    with pytest.raises(ExerciseFailed, match="second-nearest"):
        ch03.check_weight_map(lambda *a, **k: _weight_map(*a, **k, nearest_twice=True))


def test_crop_and_concat(stub):
    ch03.check_crop_and_concat(solution("ch03", "crop_and_concat"))
    with pytest.raises(NotAttempted):
        ch03.check_crop_and_concat(stub)

    def top_left(skip, up):
        return torch.cat([skip[..., : up.shape[-2], : up.shape[-1]], up], 1)

    def swapped(skip, up):
        return torch.cat([up, solution("ch03", "crop_and_concat")(skip, up)[:, : skip.shape[1]]], 1)

    def ceil_centre(skip, up):
        h, w = up.shape[-2:]
        top, left = -(-(skip.shape[-2] - h) // 2), -(-(skip.shape[-1] - w) // 2)
        return torch.cat([skip[..., top:top + h, left:left + w], up], 1)

    with pytest.raises(ExerciseFailed, match="centre"):
        ch03.check_crop_and_concat(top_left)
    with pytest.raises(ExerciseFailed, match="first"):
        ch03.check_crop_and_concat(swapped)
    with pytest.raises(ExerciseFailed, match="odd extra row"):
        ch03.check_crop_and_concat(ceil_centre)
