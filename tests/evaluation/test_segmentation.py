"""The FCN paper's segmentation metrics on hand-computed confusion matrices, boundary bands."""
import math

import matplotlib

matplotlib.use("Agg")
import pytest
import torch
import torch.nn.functional as F

from course_lib.evaluation import ConfusionMatrix, boundary_mask, evaluate_segmentation, small_region_mask

# 4 classes; class 3 appears nowhere. 255 = ignore.
TARGET = torch.tensor([[[0, 0, 1, 1], [0, 2, 2, 255]]])
PRED = torch.tensor([[[0, 1, 1, 1], [0, 2, 0, 2]]])
# The 7 labelled pixels as (true, predicted): (0,0) (0,1) (1,1) (1,1) (0,0) (2,2) (2,0)
#            pred 0  1  2  3        t_i  (row sums)
EXPECTED = [[2, 1, 0, 0],  # true 0   3
            [0, 2, 0, 0],  # true 1   2
            [1, 0, 1, 0],  # true 2   2
            [0, 0, 0, 0]]  # true 3   0
# column sums (predicted): 3, 3, 1, 0
# pixel accuracy = (2 + 2 + 1) / 7 = 5/7
# class accuracy = 2/3, 2/2, 1/2, NaN          -> mean accuracy = (2/3 + 1 + 1/2) / 3 = 13/18
# IU = n_ii / (t_i + sum_j n_ji - n_ii) = 2/(3+3-2), 2/(2+3-2), 1/(2+1-1), NaN = 1/2, 2/3, 1/2, NaN
#                                               -> mean IU = (1/2 + 2/3 + 1/2) / 3 = 5/9
# frequency weighted IU = (3 * 1/2 + 2 * 2/3 + 2 * 1/2) / 7 = 23/42


def check_hand_case(r):
    assert r["pixel_accuracy"] == pytest.approx(5 / 7)
    assert r["mean_accuracy"] == pytest.approx(13 / 18)
    assert r["miou"] == pytest.approx(5 / 9)
    assert r["frequency_weighted_iou"] == pytest.approx(23 / 42)
    assert r["iou"][:3] == pytest.approx([1 / 2, 2 / 3, 1 / 2]) and math.isnan(r["iou"][3])
    assert r["accuracy"][:3] == pytest.approx([2 / 3, 1, 1 / 2]) and math.isnan(r["accuracy"][3])


def test_hand_computed_confusion_matrix():
    cm = ConfusionMatrix(4, ignore_index=255)
    cm.update(PRED, TARGET)
    assert cm.mat.tolist() == EXPECTED
    check_hand_case(cm.compute())


def test_logits_and_accumulation_give_the_same():
    cm = ConfusionMatrix(4)
    logits = F.one_hot(PRED, 4).permute(0, 3, 1, 2).float() * 5 + torch.randn(1, 4, 2, 4) * 0.1
    cm.update(logits[..., :2], TARGET[..., :2])  # two halves of the image, one update each
    cm.update(logits[..., 2:], TARGET[..., 2:])
    assert cm.mat.tolist() == EXPECTED
    check_hand_case(cm.compute())
    cm.reset()
    assert cm.mat.sum() == 0


def test_class_predicted_but_absent_counts_as_zero_iou():
    cm = ConfusionMatrix(4)
    pred = PRED.clone()
    pred[0, 1, 2] = 3  # the (2, 0) pixel becomes (2, 3): class 3 predicted, never true
    cm.update(pred, TARGET)
    r = cm.compute()
    # IU: class 0 = 2/(3+2-2) = 2/3, class 1 = 2/3, class 2 = 1/(2+1-1) = 1/2, class 3 = 0/(0+1-0) = 0
    assert r["iou"] == pytest.approx([2 / 3, 2 / 3, 1 / 2, 0.0])
    assert r["miou"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2 + 0) / 4)
    assert math.isnan(r["accuracy"][3]) and r["mean_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)


def test_matrix_equals_one_hot_counting_on_random_labels():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 6, (3, 17, 19), generator=g)
    target[target == 5] = 255
    pred = torch.randint(0, 5, (3, 17, 19), generator=g)
    cm = ConfusionMatrix(5)
    cm.update(pred, target)
    valid = target != 255
    reference = F.one_hot(target[valid], 5).T @ F.one_hot(pred[valid], 5)
    assert torch.equal(cm.mat, reference)


def test_bad_labels_are_named():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="target contains label 7"):
        cm.update(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 7], [1, 255]]))
    with pytest.raises(ValueError, match=r"shape \[1, 2, 2\] does not match target shape \[1, 4, 4\]"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="5 channels"):
        cm.update(torch.zeros(1, 5, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_boundary_mask_on_a_tiny_example():
    target = torch.tensor([[0, 0, 1, 1, 1]] * 4)  # a vertical edge between columns 1 and 2
    assert boundary_mask(target, 1).tolist() == [[False, True, True, False, False]] * 4
    assert boundary_mask(target, 2).tolist() == [[True, True, True, True, False]] * 4
    assert not boundary_mask(target, 0).any()
    single = torch.zeros(1, 5, 5, dtype=torch.long)
    single[0, 2, 2] = 255  # an ignore pixel is a region of its own; the image border is no edge
    band = boundary_mask(single, 1)[0]
    assert band.sum() == 9 and band[1:4, 1:4].all()


def test_small_region_mask_counts_per_image():
    inst = torch.tensor([[[0, 1, 1, 2], [0, 1, 2, 2], [2, 2, 2, 2]],
                         [[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 2, 0]]])
    # image 0: instance 1 has 3 px, instance 2 has 7 px; image 1: instance 1 has 8 px, instance 2 has 1 px
    mask = small_region_mask(inst, max_area=4)
    assert torch.equal(mask, ((inst == 1) & (torch.arange(2) == 0).view(2, 1, 1))
                       | ((inst == 2) & (torch.arange(2) == 1).view(2, 1, 1)))


class LabelsInImage(torch.utils.data.Dataset):
    """Images whose red channel holds the label: a 'model' can read the answer off."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.masks = torch.randint(0, 3, (4, 12, 12), generator=g).repeat_interleave(2, 1).repeat_interleave(2, 2)
        self.instances = torch.arange(1, 4 * 12 * 12 + 1).view(4, 12, 12).repeat_interleave(2, 1).repeat_interleave(2, 2)
        self.instances[:, :12] = 1000  # top half: one big region; bottom half: 2x2 blobs

    def __len__(self):
        return len(self.masks)

    def __getitem__(self, i):
        image = torch.zeros(3, 24, 24, dtype=torch.uint8)
        image[0] = self.masks[i]
        return image, self.masks[i], self.instances[i]


class ReadLabel(torch.nn.Module):
    def forward(self, x):
        assert not self.training and x.dtype == torch.float32 and x.max() <= 1
        return {"out": F.one_hot((x[:, 0] * 255).round().long(), 3).permute(0, 3, 1, 2).float()}


class AlwaysZero(torch.nn.Module):
    def forward(self, x):
        logits = torch.zeros(x.shape[0], 3, *x.shape[-2:])
        logits[:, 0] = 1.0
        return logits


def test_evaluate_segmentation_perfect_and_constant_models():
    ds = LabelsInImage()
    model = ReadLabel().train()
    r = evaluate_segmentation(model, ds, 3, device="cpu", batch_size=2, boundary_width=1, small_region_area=5,
                              progress=False)
    assert model.training
    assert r["miou"] == r["pixel_accuracy"] == r["boundary_accuracy"] == r["small_region_accuracy"] == 1.0
    # A model that always says class 0: accuracy = share of class-0 pixels, IU_0 = that share too.
    share = (ds.masks == 0).float().mean().item()
    r = evaluate_segmentation(AlwaysZero(), ds, 3, device="cpu", boundary_width=1, small_region_area=5,
                              progress=False)
    assert r["pixel_accuracy"] == pytest.approx(share)
    assert r["iou"][0] == pytest.approx(share) and r["iou"][1:] == [0.0, 0.0]
    band = boundary_mask(ds.masks, 1)
    assert r["boundary_accuracy"] == pytest.approx(((ds.masks == 0) & band).sum().item() / band.sum().item())
    small = ds.masks[:, 12:]
    assert r["small_region_accuracy"] == pytest.approx((small == 0).float().mean().item())
    assert isinstance(r["confusion_matrix"].plot(["a", "b", "c"]), matplotlib.figure.Figure)


def _two_touching_cells():
    """Two 6 x 5 cells (class 1) side by side, a 1-px background gap between them, in a 12 x 16 image."""
    labels = torch.zeros(12, 16, dtype=torch.long)
    instances = torch.zeros(12, 16, dtype=torch.long)
    labels[3:9, 2:7] = 1; instances[3:9, 2:7] = 1
    labels[3:9, 8:13] = 1; instances[3:9, 8:13] = 2
    return labels, instances


def test_separation_counts_sees_one_bridge_pixel():
    from course_lib.evaluation import separation_counts

    labels, instances = _two_touching_cells()
    membrane_total = separation_counts(labels, labels, instances, cell_class=1)[1]
    assert membrane_total >= 6  # at least the gap column between the cells
    assert separation_counts(labels, labels, instances, cell_class=1) == (membrane_total, membrane_total, 2, 2)
    bridged = labels.clone()
    bridged[5, 7] = 1  # one gap pixel predicted as cell joins the two components
    assert separation_counts(bridged, labels, instances, cell_class=1) == (membrane_total - 1, membrane_total, 0, 2)
    half = labels.clone()
    half[3:9, 2:4] = 0  # cell 1 partly missed: still its own component, still separated
    assert separation_counts(half, labels, instances, cell_class=1)[2:] == (2, 2)
    missed = labels.clone()
    missed[3:9, 2:7] = 0  # cell 1 not predicted at all: not separated
    assert separation_counts(missed, labels, instances, cell_class=1)[2:] == (1, 2)
    unlabelled = labels.clone()
    unlabelled[0] = 255  # unlabelled pixels are no membrane
    assert separation_counts(labels, unlabelled, instances, cell_class=1)[1] <= membrane_total
    alone = instances.clone()
    alone[alone == 2] = 0  # one cell, no gap: no membrane; the cell is separated
    assert separation_counts(labels * (alone > 0), labels * (alone > 0), alone, cell_class=1) == (0, 0, 1, 1)
    with pytest.raises(ValueError, match="separation_counts"):
        separation_counts(labels[None], labels, instances, cell_class=1)
