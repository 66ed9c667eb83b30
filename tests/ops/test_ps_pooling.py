"""course_lib.ops.ps_roi_pool / ps_roi_align == torchvision.ops (R-FCN position-sensitive pooling)."""
import pytest
import torch
import torchvision.ops as tv

from course_lib import ops
from course_lib.ops.pooling import use_torchvision_kernels

SCALES = [1.0, 1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32]
TOL = {torch.float32: dict(rtol=0, atol=1e-5, equal_nan=True), torch.float64: dict(rtol=0, atol=1e-12, equal_nan=True)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one thread avoids OpenMP overhead (large on a busy shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_case(seed, dtype, bins, classes=2):
    """Score maps with ``bins * classes`` channels and RoIs inside, across and outside the map,
    including zero-area, tiny and inverted RoIs and RoIs on a half-pixel grid."""
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 4, (), generator=g))
    h, w = (int(v) for v in torch.randint(1, 30, (2,), generator=g))
    scale = SCALES[seed % len(SCALES)]
    x = torch.randn(n, bins * classes, h, w, generator=g, dtype=torch.float64).to(dtype)
    k = 20
    img = torch.tensor([w, h], dtype=torch.float64) / scale
    xy = (torch.rand(k, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3) * img
    boxes = torch.cat([xy, xy + torch.rand(k, 2, generator=g, dtype=torch.float64) ** 3 * img], dim=1)
    kind = torch.randint(0, 8, (k,), generator=g)
    boxes[kind == 0, 2:] = boxes[kind == 0, :2]
    boxes[kind == 1, 2:] = boxes[kind == 1, :2] + 0.3
    boxes[kind == 2] = boxes[kind == 2][:, [2, 3, 0, 1]]
    boxes[kind == 3] = torch.round(boxes[kind == 3] * scale * 2) / (scale * 2)
    batch = torch.randint(0, n, (k, 1), generator=g).double()
    return x, torch.cat([batch, boxes], dim=1).to(dtype), scale


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equal_torchvision(seed, dtype):
    for output_size in (3, (2, 5), 7):
        ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
        x, rois, scale = random_case(seed, dtype, ph * pw, classes=1 + seed % 3)
        ours = ops.ps_roi_pool(x, rois, output_size, scale)
        assert ours.dtype == dtype and ours.shape == (len(rois), 1 + seed % 3, ph, pw)
        torch.testing.assert_close(ours, tv.ps_roi_pool(x, rois, output_size, scale), **TOL[dtype])
        for sampling_ratio in (-1, 0, 1, 2, 4):
            ours = ops.ps_roi_align(x, rois, output_size, scale, sampling_ratio)
            torch.testing.assert_close(ours, tv.ps_roi_align(x, rois, output_size, scale, sampling_ratio), **TOL[dtype])


def test_bin_i_j_reads_channel_group_i_j():
    """R-FCN eq. 1 with torchvision's layout: output (c, i, j) pools input channel (c*k_h + i)*k_w + j."""
    ph, pw, classes = 3, 4, 2
    x = torch.arange(classes * ph * pw, dtype=torch.float64).view(1, -1, 1, 1).expand(1, -1, 16, 16).contiguous()
    rois = torch.tensor([[0, 1.0, 1.0, 13.0, 14.0]], dtype=torch.float64)
    expected = torch.arange(classes * ph * pw, dtype=torch.float64).view(1, classes, ph, pw)
    torch.testing.assert_close(ops.ps_roi_pool(x, rois, (ph, pw)), expected, rtol=0, atol=0)
    torch.testing.assert_close(ops.ps_roi_align(x, rois, (ph, pw), 1.0, 2), expected, rtol=0, atol=1e-12)


def test_empty_adaptive_roi_is_nan_like_torchvision():
    """torchvision divides by the number of sampling points: 0/0 for a zero-height RoI."""
    x = torch.randn(1, 9, 8, 8, dtype=torch.float64)
    rois = torch.tensor([[0, 2.0, 3.0, 6.0, 3.0]], dtype=torch.float64)
    ours, theirs = ops.ps_roi_align(x, rois, 3, 1.0, -1), tv.ps_roi_align(x, rois, 3, 1.0, -1)
    assert ours.isnan().all() and theirs.isnan().all()


def grad_of(fn, x, rois, *args):
    x = x.clone().requires_grad_(True)
    out = fn(x, rois, *args)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    (out * weights).nan_to_num().sum().backward()
    return x.grad


@pytest.mark.parametrize("seed", range(6))
def test_ps_roi_align_gradient_equals_torchvision(seed):
    x, rois, scale = random_case(seed, torch.float64, 9)
    for sampling_ratio in (-1, 2):
        args = (3, scale, sampling_ratio)
        torch.testing.assert_close(grad_of(ops.ps_roi_align, x, rois, *args), grad_of(tv.ps_roi_align, x, rois, *args),
                                   rtol=0, atol=1e-12)


def test_ps_roi_pool_gradient():
    """Inside the map ours equals torchvision's backward. At the border torchvision's backward
    clips windows to H (its forward to H - 1) and is not the gradient of its own forward; ours is
    exact there too (gradcheck: ps_roi_pool is linear in the input)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 18, 12, 14, generator=g, dtype=torch.float64)
    inside = torch.tensor([[0, 1.0, 1.0, 9.0, 8.0], [1, 2.0, 0.0, 12.0, 10.0], [0, 3.0, 2.0, 5.0, 4.0]],
                          dtype=torch.float64)
    torch.testing.assert_close(grad_of(ops.ps_roi_pool, x, inside, 3), grad_of(tv.ps_roi_pool, x, inside, 3),
                               rtol=0, atol=1e-12)

    small = torch.randn(1, 4, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    border = torch.tensor([[0, 0.0, 0.0, 4.0, 3.0], [0, 1.0, 1.0, 9.0, 9.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: ops.ps_roi_pool(t, border, 2), (small,))
    assert torch.autograd.gradcheck(lambda t: ops.ps_roi_align(t, border, 2, 1.0, 2), (small,))


def test_torchvision_switch_and_list_form():
    x, rois, scale = random_case(3, torch.float32, 9)
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(x.shape[0])]
    order = torch.argsort(rois[:, 0], stable=True)
    with use_torchvision_kernels():
        fast_pool, fast_align = ops.ps_roi_pool(x, rois, 3, scale), ops.ps_roi_align(x, rois, 3, scale, 2)
    torch.testing.assert_close(fast_pool, tv.ps_roi_pool(x, rois, 3, scale), rtol=0, atol=0)
    torch.testing.assert_close(fast_pool, ops.ps_roi_pool(x, rois, 3, scale), **TOL[torch.float32])
    torch.testing.assert_close(fast_align, ops.ps_roi_align(x, rois, 3, scale, 2), **TOL[torch.float32])
    for fn in (ops.ps_roi_pool, ops.ps_roi_align):
        torch.testing.assert_close(fn(x, per_image, 3, scale), fn(x, rois, 3, scale)[order], **TOL[torch.float32])


@pytest.mark.parametrize("fn", [ops.ps_roi_pool, ops.ps_roi_align])
def test_bad_input_gives_clear_errors(fn):
    x = torch.randn(1, 10, 8, 8)
    rois = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]])
    with pytest.raises(ValueError, match=r"10 channels, which is not a multiple of output_size 3x3 = 9"):
        fn(x, rois, 3)
    with pytest.raises(ValueError, match=r"Tensor\[K, 5\]"):
        fn(x, rois[:, 1:], 2)
    with pytest.raises(ValueError, match=r"batch index 1, outside \[0, 0\]"):
        fn(x, torch.tensor([[1, 1.0, 1.0, 5.0, 5.0]]), (2, 5))
    with pytest.raises(ValueError, match="output_size must be a positive int"):
        fn(x, rois, (0, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu():
    x, rois, scale = random_case(4, torch.float32, 9)
    for fn, args in [(ops.ps_roi_pool, (3, scale)), (ops.ps_roi_align, (3, scale, -1))]:
        torch.testing.assert_close(fn(x.cuda(), rois.cuda(), *args).cpu(), fn(x, rois, *args), **TOL[torch.float32])
