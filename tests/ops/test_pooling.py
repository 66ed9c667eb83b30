"""course_lib.ops.roi_align / roi_pool == torchvision.ops, forward and backward, on random inputs."""
import runpy
from pathlib import Path

import pytest
import torch
import torchvision.ops as tv

from course_lib import ops
from course_lib.ops import pooling
from course_lib.ops.pooling import _round_half_away_from_zero, use_torchvision_kernels

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one thread avoids OpenMP overhead (large on a busy shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SCALES = [1.0, 1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32]
TOL = {torch.float32: dict(rtol=0, atol=1e-5), torch.float64: dict(rtol=0, atol=1e-12)}


def random_rois(g, k, batch_size, height, width, scale, dtype=torch.float64):
    """``Tensor[k, 5]`` RoIs in image coordinates for a ``height x width`` map at ``scale``.

    Mixed in on purpose: RoIs partly or wholly outside the map, zero-area and sub-pixel RoIs,
    inverted RoIs (x2 < x1), and RoIs on a half-pixel grid (exact .5 ties when rounding)."""
    img = torch.tensor([width, height], dtype=torch.float64) / scale
    xy = (torch.rand(k, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3) * img
    wh = torch.rand(k, 2, generator=g, dtype=torch.float64) ** 3 * img
    boxes = torch.cat([xy, xy + wh], dim=1)
    kind = torch.randint(0, 8, (k,), generator=g)
    boxes[kind == 0, 2:] = boxes[kind == 0, :2]  # zero area
    boxes[kind == 1, 2:] = boxes[kind == 1, :2] + 0.3  # tiny
    boxes[kind == 2] = boxes[kind == 2][:, [2, 3, 0, 1]]  # inverted
    boxes[kind == 3] = torch.round(boxes[kind == 3] * scale * 2) / (scale * 2)  # half-pixel grid
    batch = torch.randint(0, batch_size, (k, 1), generator=g).double()
    return torch.cat([batch, boxes], dim=1).to(dtype)


def random_case(seed, dtype, channels=3):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 4, (), generator=g))
    h, w = (int(v) for v in torch.randint(1, 40, (2,), generator=g))  # non-square, down to 1 pixel
    scale = SCALES[seed % len(SCALES)]
    x = torch.randn(n, channels, h, w, generator=g, dtype=torch.float64).to(dtype)
    return x, random_rois(g, 24, n, h, w, scale, dtype), scale


@pytest.mark.parametrize("seed", range(24))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roi_align_equals_torchvision(seed, dtype):
    x, rois, scale = random_case(seed, dtype)
    for output_size in (7, (3, 5)):
        for sampling_ratio in (-1, 0, 1, 2, 4):
            for aligned in (False, True):
                ours = ops.roi_align(x, rois, output_size, scale, sampling_ratio, aligned)
                theirs = tv.roi_align(x, rois, output_size, scale, sampling_ratio, aligned)
                assert ours.dtype == dtype
                # bit for bit: the same operations in the same order as torchvision's kernel
                torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_roi_align_non_finite_features_like_torchvision():
    """A sampling point outside the map is torchvision's all-zero entry, 0 * (the image's pixel (0, 0)):
    an inf or NaN there makes the bin NaN in torchvision, and in ours (padding points add nothing)."""
    x = torch.randn(2, 3, 6, 7, generator=torch.Generator().manual_seed(0))
    x[1, 1, 0, 0], x[0, 2, 0, 0], x[1, 0, 5, 6] = float("inf"), float("nan"), float("inf")
    rois = torch.tensor([[1, -8.0, -8.0, 3.0, 4.0], [0, -5.0, 2.0, 2.0, 20.0], [1, 2.0, 3.0, 9.0, 12.0], [0, 1, 1, 2, 2]])
    for sampling_ratio in (-1, 2):
        for aligned in (False, True):
            ours = ops.roi_align(x, rois, 3, 1.0, sampling_ratio, aligned)
            theirs = tv.roi_align(x, rois, 3, 1.0, sampling_ratio, aligned)
            assert theirs.isnan().any()
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("seed", range(24))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roi_pool_equals_torchvision(seed, dtype):
    x, rois, scale = random_case(seed, dtype)
    for output_size in (7, (3, 5), 1):
        ours = ops.roi_pool(x, rois, output_size, scale)
        assert ours.dtype == dtype
        torch.testing.assert_close(ours, tv.roi_pool(x, rois, output_size, scale), rtol=0, atol=0)


def test_roi_pool_non_finite_features_like_torchvision():
    """torchvision keeps ``v > maxval`` from -FLT_MAX: NaN never wins, -inf (or less than -FLT_MAX) gives -FLT_MAX."""
    x = torch.randn(1, 3, 6, 7, generator=torch.Generator().manual_seed(0))
    x[0, 0, 1, 1], x[0, 1, 2:4, 2:4], x[0, 2, 2:4, 2:4] = float("nan"), float("nan"), -float("inf")
    x[0, 2, 0, 0] = float("inf")
    rois = torch.tensor([[0, 0.0, 0.0, 5.0, 5.0], [0, 2.0, 2.0, 3.0, 3.0], [0, -9.0, -9.0, -8.0, -8.0]])
    for dtype in (torch.float32, torch.float64):
        ours, theirs = ops.roi_pool(x.to(dtype), rois.to(dtype), 2, 1.0), tv.roi_pool(x.to(dtype), rois.to(dtype), 2, 1.0)
        assert not theirs.isnan().any() and (theirs == -3.4028234663852886e38).any()
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_roi_pool_rounds_half_away_from_zero_like_c():
    assert _round_half_away_from_zero(torch.tensor([-2.5, -0.5, 0.5, 1.5, 2.5, 0.49999997, -1.2])).tolist() == [
        -3.0, -1.0, 1.0, 2.0, 3.0, 0.0, -1.0,
    ]
    # x1 * scale = 2.5 and 4.5: torch.round would start the RoI at 2 and 4, C's round at 3 and 5
    x = torch.arange(2 * 10 * 10, dtype=torch.float32).view(2, 1, 10, 10)
    rois = torch.tensor([[0, 5.0, 9.0, 12.0, 16.0], [1, 9.0, 5.0, 16.0, 18.0]])
    torch.testing.assert_close(ops.roi_pool(x, rois, 2, 0.5), tv.roi_pool(x, rois, 2, 0.5), rtol=0, atol=0)


def test_list_of_boxes_equals_batch_index_form():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 20, 30, generator=g)
    per_image = [random_rois(g, n, 1, 20, 30, 0.5, torch.float32)[:, 1:] for n in (5, 0, 7)]
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], dim=1) for i, b in enumerate(per_image)])
    for fn in (ops.roi_align, ops.roi_pool):
        torch.testing.assert_close(fn(x, per_image, 4, 0.5), fn(x, rois, 4, 0.5), rtol=0, atol=0)
    torch.testing.assert_close(ops.roi_align(x, per_image, 4, 0.5), tv.roi_align(x, per_image, 4, 0.5), rtol=0, atol=1e-5)


def test_no_rois_and_output_shape():
    x = torch.randn(2, 5, 8, 9, dtype=torch.float64)
    for fn in (ops.roi_align, ops.roi_pool):
        out = fn(x, torch.zeros(0, 5, dtype=torch.float64), (3, 4))
        assert out.shape == (0, 5, 3, 4) and out.dtype == torch.float64
        assert fn(x, [torch.zeros(0, 4), torch.zeros(0, 4)], 2).shape == (0, 5, 2, 2)


def grad_of(fn, x, rois, *args):
    x = x.clone().requires_grad_(True)
    out = fn(x, rois, *args)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    (out * weights).sum().backward()
    return x.grad


@pytest.mark.parametrize("seed", range(8))
def test_gradients_equal_torchvision(seed):
    x, rois, scale = random_case(seed, torch.float64)
    for sampling_ratio, aligned in [(-1, False), (2, True), (0, True), (1, False)]:
        args = (5, scale, sampling_ratio, aligned)
        torch.testing.assert_close(grad_of(ops.roi_align, x, rois, *args), grad_of(tv.roi_align, x, rois, *args),
                                   rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_of(ops.roi_pool, x, rois, 5, scale), grad_of(tv.roi_pool, x, rois, 5, scale),
                               rtol=0, atol=0)


def test_roi_pool_gradient_goes_to_the_first_max_on_ties():
    x = torch.ones(1, 2, 8, 8, dtype=torch.float64)  # every pixel ties
    rois = torch.tensor([[0, 0.0, 0.0, 7.0, 7.0], [0, 1.0, 2.0, 5.0, 6.0]], dtype=torch.float64)
    ours, theirs = grad_of(ops.roi_pool, x, rois, 3), grad_of(tv.roi_pool, x, rois, 3)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert (ours != 0).sum() < x.numel() / 2  # not spread evenly over the ties


def test_roi_align_passes_gradcheck():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    rois = random_rois(g, 6, 2, 4, 5, 0.5)
    assert torch.autograd.gradcheck(lambda t: ops.roi_align(t, rois, 3, 0.5, -1, True), (x,))


def test_chunked_path_equals_torchvision(monkeypatch):
    """Small chunks force several groups of RoIs (by size) and several chunks per group."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 40, 50, generator=g)
    rois = random_rois(g, 60, 2, 40, 50, 0.25, torch.float32)
    monkeypatch.setattr(pooling, "CHUNK_ENTRIES", 3000)
    monkeypatch.setattr(pooling, "POINT_CHUNK", 3000)
    extent = torch.ceil((rois[:, 3:] - rois[:, 1:3]).flip(1) * 0.25 / 7).long()
    assert len(pooling._roi_chunks(extent, 4 * 49, pooling.CHUNK_ENTRIES)) > 5
    torch.testing.assert_close(ops.roi_align(x, rois, 7, 0.25, -1), tv.roi_align(x, rois, 7, 0.25, -1), rtol=0, atol=0)
    x.requires_grad_()  # the gradient's chunks too
    (grad,) = torch.autograd.grad(ops.roi_align(x, rois, 7, 0.25, -1).sum(), x)
    (grad_tv,) = torch.autograd.grad(tv.roi_align(x, rois, 7, 0.25, -1).sum(), x)
    torch.testing.assert_close(grad, grad_tv, **TOL[torch.float32])
    torch.testing.assert_close(ops.roi_pool(x, rois, 7, 0.25), tv.roi_pool(x, rois, 7, 0.25), rtol=0, atol=0)


def test_full_size_map():
    """The size of a Faster R-CNN feature map: 256 channels at stride 4 of an 800 x 1088 image."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 256, 200, 272, generator=g)
    rois = random_rois(g, 128, 1, 200, 272, 0.25, torch.float32)
    torch.testing.assert_close(ops.roi_align(x, rois, 7, 0.25, 2), tv.roi_align(x, rois, 7, 0.25, 2), **TOL[torch.float32])
    torch.testing.assert_close(ops.roi_pool(x, rois, 7, 0.25), tv.roi_pool(x, rois, 7, 0.25), rtol=0, atol=0)


def test_torchvision_switch():
    x, rois, scale = random_case(2, torch.float32)
    assert not pooling.torchvision_kernels_enabled()
    with use_torchvision_kernels():
        assert pooling.torchvision_kernels_enabled()
        fast_align = ops.roi_align(x, rois, 7, scale, 2)
        fast_pool = ops.roi_pool(x, rois, 7, scale)
        with use_torchvision_kernels(False):
            assert not pooling.torchvision_kernels_enabled()
        assert pooling.torchvision_kernels_enabled()
    assert not pooling.torchvision_kernels_enabled()
    torch.testing.assert_close(fast_align, tv.roi_align(x, rois, 7, scale, 2), rtol=0, atol=0)
    torch.testing.assert_close(fast_align, ops.roi_align(x, rois, 7, scale, 2), **TOL[torch.float32])
    torch.testing.assert_close(fast_pool, ops.roi_pool(x, rois, 7, scale), rtol=0, atol=0)
    use_torchvision_kernels(True)  # a plain call sets it until switched back
    try:
        assert pooling.torchvision_kernels_enabled()
    finally:
        use_torchvision_kernels(False)
    assert not pooling.torchvision_kernels_enabled()


@pytest.mark.parametrize("fn", [ops.roi_align, ops.roi_pool])
def test_bad_input_gives_clear_errors(fn):
    x = torch.randn(2, 3, 10, 10)
    good = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]])
    with pytest.raises(ValueError, match=r"Tensor\[K, 5\].*list with one Tensor\[L, 4\] per image"):
        fn(x, torch.tensor([[1.0, 1.0, 5.0, 5.0]]), 7)
    with pytest.raises(ValueError, match=r"boxes\[1\] must be a Tensor\[L, 4\]"):
        fn(x, [torch.zeros(1, 4), torch.zeros(1, 5)], 7)
    for index in (-1.0, 2.0):
        with pytest.raises(ValueError, match=rf"RoI 0 has batch index {index:g}, outside \[0, 1\]"):
            fn(x, torch.tensor([[index, 1.0, 1.0, 5.0, 5.0]]), 7)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        fn(x, [torch.zeros(0, 4), torch.zeros(0, 4), torch.ones(1, 4)], 7)  # 3 images' boxes for N = 2
    with pytest.raises(ValueError, match=r"NaN or infinite coordinates \(RoI 1"):
        fn(x, torch.tensor([[0, 1.0, 1.0, 5.0, 5.0], [1, 1.0, float("nan"), 5.0, 5.0]]), 7)
    with pytest.raises(ValueError, match=r"input must be a 4-D Tensor\[N, C, H, W\], got \(3, 10, 10\)"):
        fn(x[0], good, 7)
    for size in (0, -2, (7,), (7, 0), 2.5):
        with pytest.raises(ValueError, match="output_size must be a positive int"):
            fn(x, good, size)
    with pytest.raises(ValueError, match="spatial_scale must be a positive number"):
        fn(x, good, 7, 0.0)
    with pytest.raises(ValueError, match="floating-point"):
        fn(x.long(), good, 7)


def test_roi_align_rejects_non_integer_sampling_ratio():
    with pytest.raises(ValueError, match="sampling_ratio must be an int"):
        ops.roi_align(torch.randn(1, 1, 5, 5), torch.tensor([[0, 0.0, 0.0, 4.0, 4.0]]), 2, 1.0, 2.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu():
    x, rois, scale = random_case(4, torch.float32)
    for fn, args in [(ops.roi_align, (7, scale, -1, True)), (ops.roi_align, (7, scale, 2, False)), (ops.roi_pool, (7, scale))]:
        torch.testing.assert_close(fn(x.cuda(), rois.cuda(), *args).cpu(), fn(x, rois, *args), **TOL[torch.float32])


def test_benchmark_script_runs(capsys):
    """tests/benchmarks/bench_ops.py at tiny sizes: it runs and prints one row per op."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ops.py"
    threads = torch.get_num_threads()
    try:
        rows = runpy.run_path(str(script))["main"](["--smoke", "--repeats", "1", "--warmup", "0", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert {r["op"].split()[0] for r in rows} >= {"nms", "batched_nms", "roi_align", "roi_pool", "ps_roi_pool"}
    assert all(r["ours_ms"] > 0 and r["torchvision_ms"] > 0 for r in rows)
    assert "ratio" in capsys.readouterr().out


def test_benchmark_rows_pool_the_rois_their_labels_say():
    """Each RoI row of bench_ops times the RoIs its label names ("roi_align 64 RoIs ..."): its lambdas read
    the inputs when they run, so a later case that rebinds a shared name would time other RoIs."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ops.py"
    for name, ours, reference in runpy.run_path(str(script))["cases"](True):
        if name.startswith(("roi_align ", "roi_pool ", "ps_roi")) and "fwd+bwd" not in name:
            rois = int(name.split()[1])
            assert ours().shape[0] == reference().shape[0] == rois, name
