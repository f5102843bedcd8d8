"""The fast path's building blocks against plain float64 torch (the oracle)."""

from __future__ import annotations

import pytest
import torch
from conftest import APPLY_ROUTES, STATS_ROUTES

import batchnorm as bn
from batchnorm import _aten, _moments, _thresholds
from batchnorm._aten import native_inference
from batchnorm._axes import broadcasts_to
from batchnorm._kernels import NormalizeApply
from batchnorm._moments import compute_moments, one_read_moments
from batchnorm._plan import plan_for
from batchnorm._reductions import channel_sum, channel_sum_of_squares
from batchnorm._statistics import stats_pass


def _normalize_apply(x, weights, mean, invstd, scale, shift, axes):
    """The fast apply with the plan the functional would choose for these shapes."""
    per_channel = broadcasts_to(mean.shape, scale.shape, shift.shape)
    plan = plan_for(x, axes, weights, per_channel=per_channel)
    return NormalizeApply.apply(x, weights, mean, invstd, scale, shift, tuple(axes), 1e-3, plan)


@pytest.mark.parametrize(
    ("shape", "axes", "memory_format"),
    [
        ((4, 3, 300, 300), (1,), torch.channels_last),  # > 2^20 elements: blocked squares
        ((4, 3, 300, 300), (1,), torch.contiguous_format),
        ((1200, 1000), (1,), torch.contiguous_format),  # dense, channels innermost, blocked
        ((5, 4, 3), (0, 2), torch.contiguous_format),  # kept axes apart: generic reduction
    ],
)
def test_channel_sums_match_float64(shape, axes, memory_format, dtype, device):
    """--dtype picks the input dtype (float32 by default), --device where it lives."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
    x = x.contiguous(memory_format=memory_format)
    reduce_dims = [d for d in range(x.dim()) if d not in axes]
    want_sum = x.double().sum(dim=reduce_dims, keepdim=True)
    want_squares = (x.double() ** 2).sum(dim=reduce_dims, keepdim=True)
    rtol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 1e-2)
    torch.testing.assert_close(channel_sum(x, axes).double(), want_sum, rtol=rtol, atol=1e-2)
    torch.testing.assert_close(
        channel_sum_of_squares(x, axes).double(), want_squares, rtol=rtol, atol=1e-3
    )


def _weighted_oracle(x, weights, axes, scale, shift):
    """Weighted batch norm written out in float64 autograd: the oracle for the fast kernels."""
    reduce_dims = [d for d in range(x.dim()) if d not in axes]
    x64 = x.detach().double().requires_grad_()
    w64 = weights.double().expand_as(x64)
    total = w64.sum(dim=reduce_dims, keepdim=True)
    mean = (w64 * x64).sum(dim=reduce_dims, keepdim=True) / total
    var = (w64 * (x64 - mean) ** 2).sum(dim=reduce_dims, keepdim=True) / total
    y = (x64 - mean) * torch.rsqrt(var + 1e-3) * scale.double() + shift.double()
    return x64, mean, var, y


@pytest.mark.parametrize(
    ("shape", "memory_format", "weight_shape"),
    [
        ((6, 3, 5, 7), torch.contiguous_format, (6, 1, 1, 1)),  # per example: row sums first
        ((6, 3, 5, 7), torch.channels_last, (6, 1, 1, 1)),  # per example, channels innermost
        ((6, 3, 5, 7), torch.contiguous_format, (6, 1, 5, 7)),  # a mask: blocked products
        ((40, 3), torch.contiguous_format, (40, 1)),  # dense
    ],
)
@pytest.mark.parametrize("offset", [5.0, 1000.0])  # the apply folds the mean in, or not
def test_weighted_moments_and_backward_match_float64(shape, memory_format, weight_shape, offset):
    """Weighted stats pass and weighted backward (ATen's reduce + apply) against float64."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=generator) * 3 + offset
    x = x.contiguous(memory_format=memory_format)
    weights = torch.rand(weight_shape, generator=generator)
    weights[0] = 0.0  # a zero-weight example or position
    axes = (1,)
    scale = torch.rand((1, shape[1]) + (1,) * (len(shape) - 2), generator=generator) + 0.5
    shift = torch.randn(scale.shape, generator=generator)
    x64, mean64, var64, y64 = _weighted_oracle(x, weights, axes, scale, shift)
    dy = torch.randn(shape, generator=generator)
    y64.backward(dy.double())

    xg = x.clone().requires_grad_()
    s, b = scale.clone().requires_grad_(), shift.clone().requires_grad_()
    moments = stats_pass(xg, axes, weights)
    torch.testing.assert_close(moments.mean.double(), mean64.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(moments.var.double(), var64.detach(), rtol=1e-5, atol=1e-5)
    invstd = torch.rsqrt(moments.var + 1e-3)
    y = _normalize_apply(xg, weights, moments.mean, invstd, s, b, axes)
    y.backward(dy)
    # float32 rounding of the mean itself grows with the offset (~u |mean| / std in x_hat).
    atol = 1e-5 * max(1.0, offset / 50)
    torch.testing.assert_close(y.double(), y64.detach(), rtol=1e-5, atol=atol)
    torch.testing.assert_close(xg.grad.double(), x64.grad, rtol=1e-4, atol=atol)
    # The oracle's parameter gradients, written out: sum(dy * x_hat) and sum(dy).
    x_hat = (x64 - mean64) * torch.rsqrt(var64 + 1e-3)
    reduce_dims = [d for d in range(x.dim()) if d not in axes]
    want_ds = (dy.double() * x_hat).sum(dim=reduce_dims, keepdim=True).detach()
    torch.testing.assert_close(s.grad.double(), want_ds, rtol=1e-4, atol=1e-4)
    want_db = dy.double().sum(reduce_dims, keepdim=True)
    torch.testing.assert_close(b.grad.double(), want_db, rtol=1e-5, atol=1e-5)


def test_zero_weight_garbage_never_reaches_weighted_moments():
    """NaN and inf where the weight is 0: the row route and the blocked route both ignore them."""
    for memory_format in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(4, 2, 3, 3).contiguous(memory_format=memory_format)
        x[0, 0, 0, 0], x[0, 1, 2, 2] = float("nan"), float("inf")
        weights = torch.tensor([0.0, 1.0, 2.0, 1.0]).view(4, 1, 1, 1)
        moments = stats_pass(x, (1,), weights)
        want = _weighted_oracle(x[1:], weights[1:], (1,), torch.ones(1, 2, 1, 1), torch.zeros(1))
        torch.testing.assert_close(moments.mean.double(), want[1].detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(moments.var.double(), want[2].detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        # Ghost view of a channels_last batch: kept (group, channel) apart in memory.
        lambda x: x.contiguous(memory_format=torch.channels_last).reshape(2, 3, 4, 5, 5),
        # Kept axes whose memory order is the reverse of their logical order.
        lambda x: x.reshape(25, 4, 6).permute(0, 2, 1),
        # Not dense: the plain multi-dimension sum.
        lambda x: x[:, :, ::2],
    ],
)
def test_channel_sums_over_any_layout_match_float64(make):
    generator = torch.Generator().manual_seed(2)
    t = make(torch.randn(6, 4, 5, 5, generator=generator))
    axes = (1, 2)
    reduce_dims = [d for d in range(t.dim()) if d not in axes]
    want = t.double().sum(dim=reduce_dims, keepdim=True)
    torch.testing.assert_close(channel_sum(t, axes).double(), want, rtol=1e-6, atol=1e-5)
    want_squares = (t.double() ** 2).sum(dim=reduce_dims, keepdim=True)
    got_squares = channel_sum_of_squares(t, axes).double()
    torch.testing.assert_close(got_squares, want_squares, rtol=1e-6, atol=1e-5)


def test_blocked_squares_stack_blocks_along_a_kept_outer_dimension(monkeypatch):
    """Per-example rows of a channels_last batch: blocks along the batch are stacked, not added."""
    monkeypatch.setattr(_thresholds, "BLOCK_ELEMENTS", 1000)  # 4 blocks along the kept batch
    generator = torch.Generator().manual_seed(3)
    t = torch.randn(8, 4, 10, 10, generator=generator).contiguous(memory_format=torch.channels_last)
    want = (t.double() ** 2).sum(dim=(2, 3), keepdim=True)
    got = channel_sum_of_squares(t, (0, 1)).double()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-4)


def test_blocked_centring_slices_the_mean_along_a_kept_outer_dimension(monkeypatch):
    """Kept axes (0, 2) of a contiguous (8, 5, 3): the mean is sliced with each block of x."""
    monkeypatch.setattr(_thresholds, "BLOCK_ELEMENTS", 16)  # one example per block
    monkeypatch.setattr(_thresholds, "SMALL_INPUT_ELEMENTS", STATS_ROUTES["two-pass sums"])
    x = torch.randn(8, 5, 3, generator=torch.Generator().manual_seed(4)) * 2 + 3
    moments = stats_pass(x, (0, 2))
    x64 = x.double()
    mean = x64.mean(dim=1, keepdim=True)
    torch.testing.assert_close(moments.mean.double(), mean, rtol=1e-6, atol=1e-6)
    want_var = x64.var(dim=1, unbiased=False, keepdim=True)
    torch.testing.assert_close(moments.var.double(), want_var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("offset", [0.0, 1e2, 1e3, 1e4, 1e5])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("blocked", [False, True], ids=["one_block", "blocks"])
def test_two_pass_variance_stays_exact_at_large_offsets(
    offset, memory_format, blocked, monkeypatch
):
    """Channels offset by up to 1e5 standard deviations: the variance within a few units of
    roundoff of float64's on the same float32 data (a plain two-pass sum was 3e-4 off)."""
    if blocked:
        monkeypatch.setattr(_thresholds, "BLOCK_ELEMENTS", 1 << 12)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(16, 4, 24, 24, generator=generator, dtype=torch.float64)
    x = (x * 0.5 + offset * torch.tensor([1.0, -2.0, 0.5, 3.0]).view(1, 4, 1, 1)).float()
    x = x.contiguous(memory_format=memory_format)
    assert plan_for(x, (1,)).stats == "two_pass"
    moments = stats_pass(x, (1,))
    x64 = x.double()
    want_var = x64.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    want_mean = x64.mean(dim=(0, 2, 3), keepdim=True)
    torch.testing.assert_close(moments.var.double(), want_var, rtol=1e-6, atol=0.0)
    # The mean as close as float32 can hold it: within a unit of roundoff of its magnitude.
    torch.testing.assert_close(moments.mean.double(), want_mean, rtol=2**-23, atol=1e-6)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize(
    ("spread", "offset"), [(1e18, 0.0), (1e19, -1e19), (1.0, 3e38), (1e36, 1e37)]
)
def test_moments_of_finite_inputs_are_finite_where_float32_holds_them(
    spread, offset, memory_format
):
    """Squares and sums beyond float32's range are rescaled by a power of two: the moments
    are float64's on the same data wherever float32 can hold them, and inf only beyond."""
    generator = torch.Generator().manual_seed(9)
    x = torch.randn(16, 4, 24, 24, generator=generator, dtype=torch.float64) * spread + offset
    x = x.float().contiguous(memory_format=memory_format)
    assert torch.isfinite(x).all()
    moments = stats_pass(x, (1,))
    x64 = x.double()
    for got, want in (
        (moments.mean, x64.mean(dim=(0, 2, 3), keepdim=True)),
        (moments.var, x64.var(dim=(0, 2, 3), unbiased=False, keepdim=True)),
    ):
        held = want.abs() <= torch.finfo(torch.float32).max
        assert torch.isinf(got[~held]).all()
        # (The mean within a few units of roundoff of the data's magnitude.)
        atol = 0.0 if got is moments.var else 1e-6 * max(spread, abs(offset))
        torch.testing.assert_close(got.double()[held], want[held], rtol=1e-6, atol=atol)
    layer = bn.BatchNormalization(axis=1)
    y = layer(x.requires_grad_(True), training=True)
    variance = x64.var(dim=(0, 2, 3))
    if (variance > 0).all() and (variance <= torch.finfo(torch.float32).max).all():
        # A variance float32 holds (and the data resolve): a finite, normalised output.
        assert torch.isfinite(y).all() and y.std().item() == pytest.approx(1.0, rel=1e-3)
        y.sum().backward()
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("offset", [0.0, 1e4, 1e5])
@pytest.mark.parametrize(
    ("route", "weight_shape"),
    [
        ("weighted_rows", (16, 1, 1, 1)),
        ("weighted_blocks", (16, 1, 24, 24)),
        ("reference", (16, 1, 24, 24)),
        ("reference", None),
        ("one_read", (16, 1, 1, 1)),
        ("one_read", None),
        ("one_read_compiled", (16, 1, 24, 24)),
        ("one_read_compiled", None),
    ],
)
def test_weighted_and_reference_variances_stay_exact_at_large_offsets(route, weight_shape, offset):
    """The weighted routes, the reference path's moments (compute_moments) and the compiled
    route's (one_read_moments, eager and compiled) against float64 on the same float32 data,
    channels offset by up to 1e5 standard deviations."""
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(16, 4, 24, 24, generator=generator, dtype=torch.float64) * 0.5
    x = (x + offset * torch.tensor([1.0, -2.0, 0.5, 3.0]).view(1, 4, 1, 1)).float()
    weights = None
    if weight_shape is not None:
        weights = torch.rand(weight_shape, generator=generator, dtype=torch.float64).float()
        weights.view(-1)[0] = 0.0
    if route == "reference":
        moments = compute_moments(x, (0, 2, 3), weights)
    elif route.startswith("one_read"):
        compiled = route.endswith("compiled")
        moments = (torch.compile(one_read_moments) if compiled else one_read_moments)(
            x, (0, 2, 3), weights
        )
    else:
        assert plan_for(x, (1,), weights).stats == route
        moments = stats_pass(x, (1,), weights)
    x64 = x.double()
    w64 = torch.ones_like(x64) if weights is None else weights.double().expand(x.shape)
    total = w64.sum(dim=(0, 2, 3), keepdim=True)
    mean = (w64 * x64).sum(dim=(0, 2, 3), keepdim=True) / total
    var = (w64 * (x64 - mean) ** 2).sum(dim=(0, 2, 3), keepdim=True) / total
    # Inductor sums each vector lane in order, not pairwise: 4.7e-6 at offset 1e4, where
    # torch.var_mean compiled (compiled native's statistics) was 4.5e-4 off, and 5e-2 at 1e5.
    rtol = 1e-5 if route == "one_read_compiled" else 2e-6
    torch.testing.assert_close(moments.var.double(), var, rtol=rtol, atol=0.0)
    torch.testing.assert_close(moments.mean.double(), mean, rtol=2**-23, atol=1e-6)


@pytest.mark.parametrize("offset", [0.0, 10.0, 100.0])
@pytest.mark.parametrize("shape", [(8, 16, 32, 32), (8192, 16)], ids=["channels_last", "matrix"])
def test_sixteen_bit_statistics_of_channels_innermost_round_as_well_as_natives_nchw(shape, offset):
    """bfloat16 with the channels innermost (channels_last, a matrix) against float64 on the
    same data: the variance within 2x the error of ATen's NCHW kernel, the one the precision
    target names (the unfolded channels-innermost kernel was 3-5x it here)."""
    generator = torch.Generator().manual_seed(7)
    x = (torch.randn(shape, generator=generator, dtype=torch.float64) + offset).bfloat16()
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    assert plan_for(x, (1,)).stats == "aten_folded_rows"
    dims = [d for d in range(x.dim()) if d != 1]
    exact = x.double().var(dim=dims, correction=0)

    def error(variance: torch.Tensor) -> float:
        return ((variance.flatten().double() - exact) / exact).abs().max().item()

    channels = shape[1]
    unused = torch.zeros(channels), torch.ones(channels)
    _, _, invstd = torch.native_batch_norm(x.contiguous(), None, None, *unused, True, 1.0, 0.0)
    native_nchw = error(invstd.double() ** -2)
    assert error(stats_pass(x, (1,)).var) <= 2 * native_nchw


@pytest.mark.parametrize("offset", [10.0, 100.0, 1000.0])
@pytest.mark.parametrize("layout", ["NCHW", "channels_last", "dense"])
def test_the_stats_pass_mean_is_within_a_unit_in_the_last_place(layout, offset):
    """The float32 mean against float64's on the same data, offset by up to 1000 spreads:
    within 1.25 units in the last place of the float32 result (its float64 total rounded
    once; summed in float32 throughout it was 2.3 units off here, and the output of a
    training call at offset 100 twice native's error)."""
    generator = torch.Generator().manual_seed(10)
    shape = (4096, 64) if layout == "dense" else (16, 32, 24, 24)
    x = (torch.randn(shape, generator=generator, dtype=torch.float64) + offset).float()
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    assert plan_for(x, (1,)).stats == "two_pass"
    dims = [d for d in range(x.dim()) if d != 1]
    exact = x.double().mean(dim=dims)
    rounded = exact.float()
    ulp = (torch.nextafter(rounded, torch.full_like(rounded, float("inf"))) - rounded).double()
    error = (stats_pass(x, (1,)).mean.flatten().double() - exact).abs() / ulp
    assert error.max().item() <= 1.25


@pytest.mark.parametrize("channels_last", [False, True], ids=["NCHW", "channels_last"])
def test_upcast_blocks_keep_a_nan_under_a_zero_weight_out_of_the_moments(
    channels_last, monkeypatch
):
    """bfloat16 with a mask, NaN and Inf where the mask is 0, in several blocks: the moments are
    those of float64 over the kept positions (the blocks take plain products and the whole is
    taken again zeroed once it comes out non-finite)."""
    monkeypatch.setattr(_thresholds, "BLOCK_ELEMENTS", 1 << 12)
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(8, 4, 16, 16, generator=generator).bfloat16()
    mask = torch.rand(8, 1, 16, 16, generator=generator) > 0.3
    mask[0, 0, 0, 0] = mask[5, 0, 3, 7] = False
    poisoned = x.clone()
    poisoned[0, :, 0, 0] = torch.nan  # (positions the mask drops)
    poisoned[5, :, 3, 7] = torch.inf
    if channels_last:
        poisoned = poisoned.contiguous(memory_format=torch.channels_last)
    weights = mask.float()
    assert plan_for(poisoned, (1,), weights).stats == "upcast_blocks"
    moments = stats_pass(poisoned, (1,), weights)
    expected = compute_moments(x.double(), (0, 2, 3), weights.double())
    torch.testing.assert_close(moments.mean.double(), expected.mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(moments.var.double(), expected.var, rtol=1e-6, atol=1e-7)


def _route_without_block_view(
    monkeypatch, route: str, x: torch.Tensor, axes, *, ghost_channels_last: bool
) -> None:
    """Force how a layout without a block view (ghost batches of channels_last) is cut.

    ``"ATen slices"``: the input's own slices (one example each); ``"regrouped slices"``:
    examples too small, so for ghost batches of channels_last a copy regrouped into slices of
    one ghost group each (checked), and blocks for other layouts; ``"upcast blocks"``: no
    slices at all.
    """
    example = x[(0,) * (x.dim() - 3)].numel()  # the trailing (C, H, W) of one example
    limits = {"ATen slices": 1, "regrouped slices": example + 1, "upcast blocks": 1 << 40}
    monkeypatch.setattr(_thresholds, "SLICE_ELEMENTS", limits[route])
    sliced = _aten.aten_slices(x, axes, regroup=True)
    regrouped = sliced is not None and sliced.regrouped
    assert regrouped == (route == "regrouped slices" and ghost_channels_last)


ROUTES_WITHOUT_BLOCK_VIEW = ["ATen slices", "regrouped slices", "upcast blocks"]


# Layouts of a 16-bit batch: with a block view, ATen's statistics kernel and inference kernel;
# without one (ghost batches of channels_last), blocks upcast one at a time and float32 ops.
SIXTEEN_BIT_LAYOUTS = {
    "NCHW": (lambda x: x, (1,)),
    "channels_last": (lambda x: x.contiguous(memory_format=torch.channels_last), (1,)),
    "dense": (lambda x: x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]), (1,)),
    "ghost NCHW": (lambda x: x.reshape(2, 3, *x.shape[1:]), (1, 2)),
    "ghost channels_last": (
        lambda x: x.contiguous(memory_format=torch.channels_last).reshape(2, 3, *x.shape[1:]),
        (1, 2),
    ),
    "kept apart, outermost kept": (lambda x: x, (0, 2)),  # upcast blocks hold other channels
}


@pytest.mark.parametrize("layout", sorted(SIXTEEN_BIT_LAYOUTS))
@pytest.mark.parametrize("dtype16", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("without_block_view", ROUTES_WITHOUT_BLOCK_VIEW)
def test_sixteen_bit_moments_output_and_gradients_match_float64(
    layout, dtype16, without_block_view, monkeypatch
):
    """16-bit inputs: float32 moments, a 16-bit output, gradients; against float64 autograd.

    Layouts without a block view (ghost channels_last) go through ATen's kernels slice by
    slice (an example each; where examples are too small, the moments and backward sums a
    regrouped copy's ghost groups, the apply upcast blocks), or (slices too small, or none)
    blocks upcast one at a time; each is forced here.
    """
    monkeypatch.setattr(_thresholds, "BLOCK_ELEMENTS", 256)  # several blocks where upcast
    make, axes = SIXTEEN_BIT_LAYOUTS[layout]
    generator = torch.Generator().manual_seed(5)
    x = make((torch.randn(6, 4, 5, 7, generator=generator) * 1.5 + 10).to(dtype16))
    ghost_channels_last = layout == "ghost channels_last"
    _route_without_block_view(
        monkeypatch, without_block_view, x, axes, ghost_channels_last=ghost_channels_last
    )
    keep = tuple(x.shape[d] if d in axes else 1 for d in range(x.dim()))
    scale = torch.rand(keep, generator=generator) + 0.5
    shift = torch.randn(keep, generator=generator)
    x64, mean64, var64, y64 = _weighted_oracle(x, torch.ones(()), axes, scale, shift)
    dy = torch.randn(x.shape, generator=generator).to(dtype16)
    y64.backward(dy.double())

    xg = x.detach().requires_grad_()
    s, b = scale.clone().requires_grad_(), shift.clone().requires_grad_()
    moments = stats_pass(xg, axes)
    assert moments.mean.dtype == torch.float32
    torch.testing.assert_close(moments.mean.double(), mean64.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(moments.var.double(), var64.detach(), rtol=2e-4, atol=1e-5)
    invstd = torch.rsqrt(moments.var + 1e-3)
    y = _normalize_apply(xg, None, moments.mean, invstd, s, b, axes)
    assert y.dtype == dtype16 and y.stride() == x.stride()
    y.backward(dy)
    tolerance = {torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype16]
    torch.testing.assert_close(y.double(), y64.detach(), rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(xg.grad.double(), x64.grad, rtol=tolerance, atol=tolerance)
    want_ds = (dy.double() * (x64 - mean64) * torch.rsqrt(var64 + 1e-3)).detach()
    reduce_dims = [d for d in range(x.dim()) if d not in axes]
    want_ds = want_ds.sum(dim=reduce_dims, keepdim=True)
    torch.testing.assert_close(s.grad.double(), want_ds, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    ("memory_format", "weight_shape"),
    [
        (torch.contiguous_format, (6, 1, 1, 1)),  # per example: ATen statistics of the rows
        # channels_last per example: ATen statistics of each example, or upcast blocks
        (torch.channels_last, (6, 1, 1, 1)),
        (torch.contiguous_format, (6, 1, 5, 7)),  # a mask: blocked products of upcast blocks
        (torch.channels_last, (6, 1, 5, 7)),
    ],
)
@pytest.mark.parametrize("dtype16", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("slices", ["ATen slices", "upcast blocks"])
def test_sixteen_bit_weighted_moments_and_backward_match_float64(
    memory_format, weight_shape, dtype16, slices, monkeypatch
):
    """16-bit weighted: float32 sums of upcast blocks, 16-bit output and gradient; vs float64.

    The NaN at a zero weight checks that no route lets it reach the moments.
    """
    monkeypatch.setattr(_thresholds, "BLOCK_ELEMENTS", 200)  # several blocks of x
    monkeypatch.setattr(_thresholds, "SLICE_ELEMENTS", 1 if slices == "ATen slices" else 1 << 40)
    generator = torch.Generator().manual_seed(7)
    x = (torch.randn(6, 3, 5, 7, generator=generator) * 3 + 5).to(dtype16)
    x = x.contiguous(memory_format=memory_format)
    x[0, 1, 2, 3] = float("nan")  # garbage where the weight is 0
    weights = torch.rand(weight_shape, generator=generator)
    weights[0] = 0.0
    axes = (1,)
    scale = torch.rand(1, 3, 1, 1, generator=generator) + 0.5
    shift = torch.randn(scale.shape, generator=generator)
    clean = x.clone()
    clean[0] = 0  # the oracle never sees the garbage: its weight is 0 anyway
    x64, mean64, var64, y64 = _weighted_oracle(clean, weights, axes, scale, shift)
    dy = torch.randn(x.shape, generator=generator).to(dtype16)
    y64.backward(dy.double())

    moments = stats_pass(x, axes, weights)
    assert moments.mean.dtype == torch.float32
    torch.testing.assert_close(moments.mean.double(), mean64.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(moments.var.double(), var64.detach(), rtol=1e-4, atol=1e-5)
    # Output and gradients of the clean input (the NaN would reach its whole channel's
    # gradient through sum(dy * x_hat), on every route), with the same moments.
    xg = clean.requires_grad_()
    s, b = scale.clone().requires_grad_(), shift.clone().requires_grad_()
    invstd = torch.rsqrt(moments.var + 1e-3)
    y = _normalize_apply(xg, weights, moments.mean, invstd, s, b, axes)
    y.backward(dy)
    assert y.dtype == dtype16 and xg.grad.dtype == dtype16
    tolerance = {torch.bfloat16: 2e-2, torch.float16: 3e-3}[dtype16]
    torch.testing.assert_close(y.double(), y64.detach(), rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(xg.grad.double(), x64.grad, rtol=tolerance, atol=tolerance)


def test_sixteen_bit_output_with_a_per_element_shift_matches_float64():
    """A shift that varies beyond the channels (an adjustment) takes the float32 ops."""
    generator = torch.Generator().manual_seed(6)
    x = (torch.randn(6, 4, 5, 7, generator=generator) + 3).to(torch.bfloat16)
    shift = torch.randn(6, 4, 5, 7, generator=generator)
    scale = torch.rand(1, 4, 1, 1, generator=generator) + 0.5
    moments = stats_pass(x, (1,))
    invstd = torch.rsqrt(moments.var + 1e-3)
    y = _normalize_apply(x, None, moments.mean, invstd, scale, shift, (1,))
    x64 = x.double()
    mean = x64.mean(dim=(0, 2, 3), keepdim=True)
    var = x64.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    want = (x64 - mean) * torch.rsqrt(var + 1e-3) * scale.double() + shift.double()
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), want, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("layout", sorted(SIXTEEN_BIT_LAYOUTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_is_one_fold_with_or_without_autograd(layout, dtype):
    """The same numbers whether autograd records or not, and float64's to the output's rounding.

    Without a graph the fold goes through ``folded_apply`` (``addcmul`` where channels are
    innermost, ATen's kernel on NCHW rows and 16-bit inputs); with one, through ATen's kernel
    or the same ``addcmul`` in autograd. A path that folded differently (``1 / sqrt`` against
    ``rsqrt``, or ``gamma`` applied after the shift) breaks the exact equality.
    """
    generator = torch.Generator().manual_seed(11)
    make, axes = SIXTEEN_BIT_LAYOUTS[layout]
    x = make(torch.randn(6, 4, 5, 3, generator=generator) * 3 + 2).to(dtype)
    shape = [x.shape[d] if d in axes else 1 for d in range(x.dim())]
    mean, var, gamma, beta = (torch.randn(shape, generator=generator) for _ in range(4))
    var = var.abs() + 0.5
    stats = [t.flatten() if len(axes) == 1 else t for t in (mean, var, gamma, beta)]
    call = {"training": False, "axis": list(axes), "epsilon": 1e-3}
    with torch.no_grad():
        plain = bn.functional.batch_norm(x, *stats, **call).output
    gamma_grad = stats[2].clone().requires_grad_()
    recorded = bn.functional.batch_norm(x, *stats[:2], gamma_grad, stats[3], **call).output
    assert recorded.requires_grad
    torch.testing.assert_close(plain, recorded.detach(), rtol=0, atol=0)
    assert plain.dtype == dtype and plain.stride() == x.stride()
    want = (x.double() - mean.double()) * torch.rsqrt(var.double() + 1e-3) * gamma.double()
    want = want + beta.double()
    rtol = 2**-7 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(plain.double(), want, rtol=rtol, atol=rtol * 10)


def test_inference_gradient_for_strides_that_only_look_channels_last():
    """(1, 2, 2, 1) with strides (4, 1, 2, 1): ATen's own 4-D kernel permutes this gradient."""
    x = torch.randn(1, 2, 2, 1, dtype=torch.float64).permute(0, 2, 1, 3).contiguous()
    x = x.permute(0, 2, 1, 3).requires_grad_()
    zeros, ones = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    y = native_inference(x, [1], zeros, ones, None, None, 0.0)  # the identity map
    dy = torch.arange(4, dtype=torch.float64).reshape(1, 2, 2, 1)
    y.backward(dy)
    torch.testing.assert_close(x.grad, dy)


@pytest.mark.parametrize(
    ("layout", "apply_route"),  # the routes differ on NCHW rows only
    [
        ("NCHW", "ATen kernel"),
        ("NCHW", "torch ops"),
        ("channels_last", "torch ops"),
        ("dense", "torch ops"),
    ],
)
@pytest.mark.parametrize("offset", [0.0, 12.0, 100.0, 1e4])
def test_apply_error_stays_within_the_rounding_of_the_mean(
    layout, apply_route, offset, monkeypatch
):
    """float32 output against float64 statistics of the same input, in units of roundoff.

    Offsets 0 and 12 (6 standard deviations) take the folded apply, ``x * a + (B - mean * a)``;
    100 and 1e4 lie beyond ``FOLD_LIMIT`` and take the centred form. Either way the error grows
    with the offset no faster than the rounding of a float32 mean does (~2 u per standard
    deviation, measured; the bound allows 8). A one-pass variance or a 16-bit intermediate
    break it by orders of magnitude.
    """
    monkeypatch.setattr(_thresholds, "ATEN_APPLY_ELEMENTS", APPLY_ROUTES[apply_route])
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(16, 8, 12, 12, generator=generator) * 2 + offset
    axis = 1
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "dense":
        x, axis = x.permute(0, 2, 3, 1).reshape(-1, 8), -1
    y = bn.functional.batch_norm(
        x, torch.zeros(8), torch.ones(8), training=True, axis=axis, epsilon=0.0
    ).output
    dims = [d for d in range(x.dim()) if d != axis % x.dim()]
    x64 = x.double()
    mean, std = x64.mean(dims, keepdim=True), x64.std(dims, correction=0, keepdim=True)
    error_in_roundoff = ((y.double() - (x64 - mean) / std).abs().max() / 2**-24).item()
    assert error_in_roundoff <= 8 * (1 + (mean.abs() / std).max().item())
    assert y.stride() == x.stride()


@pytest.mark.parametrize("layout", ["NCHW", "channels_last", "dense"])
def test_constant_channels_give_exactly_beta(layout):
    """var = 0: the centred form gives ``(x - mean) * a = 0`` exactly, so ``y == beta``.

    Folding here (``|mean| * invstd`` = 5 / sqrt(1e-3), far beyond ``FOLD_LIMIT``) would give
    ``x * a + (beta - mean * a)``, off by ``|mean| a u`` ~ 1e-5.
    """
    x = torch.full((4, 3, 5, 5), 5.0) + torch.tensor([0.0, 1.0, -7.0]).view(1, 3, 1, 1)
    axis = 1
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "dense":
        x, axis = x.permute(0, 2, 3, 1).reshape(-1, 3), -1
    beta = torch.tensor([0.25, -1.5, 3.0])
    y = bn.functional.batch_norm(
        x,
        torch.zeros(3),
        torch.ones(3),
        torch.tensor([2.0, 3.0, 0.5]),
        beta,
        training=True,
        axis=axis,
    ).output
    assert torch.equal(
        y, beta.view([3 if d == axis % x.dim() else 1 for d in range(x.dim())]).expand_as(x)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("weight_kind", ["none", "per example", "mask"])
@pytest.mark.parametrize("need_x", [True, False])
@pytest.mark.parametrize("sums", ROUTES_WITHOUT_BLOCK_VIEW)
def test_backward_for_ghost_batches_of_channels_last_matches_float64(
    dtype, weight_kind, need_x, sums, monkeypatch
):
    """Kept (group, channel) axes apart in memory: ATen's sums slice by slice (one example
    each, or for 16-bit inputs a regrouped copy's ghost groups) or blocked sums (6 blocks of
    one example), then the blocked backward apply."""
    monkeypatch.setattr(_thresholds, "BLOCK_ELEMENTS", 200)
    generator = torch.Generator().manual_seed(6)
    x = (torch.randn(6, 4, 5, 5, generator=generator) * 3 + 5).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last).reshape(2, 3, 4, 5, 5)
    axes = (1, 2)
    _route_without_block_view(monkeypatch, sums, x, axes, ghost_channels_last=True)
    weight_shape = {"none": (1,) * 5, "per example": (2, 3, 1, 1, 1), "mask": (2, 3, 1, 5, 5)}
    weights = torch.rand(weight_shape[weight_kind], generator=generator)
    scale = torch.rand(1, 1, 4, 1, 1, generator=generator) + 0.5  # shared across groups
    shift = torch.randn(scale.shape, generator=generator)
    x64, mean64, var64, y64 = _weighted_oracle(x, weights, axes, scale, shift)
    dy = torch.randn(x.shape, generator=generator).to(dtype)
    y64.backward(dy.double())

    xg = x.clone().requires_grad_(need_x)
    s, b = scale.clone().requires_grad_(), shift.clone().requires_grad_()
    given_weights = None if weight_kind == "none" else weights
    moments = stats_pass(xg, axes, given_weights)
    invstd = torch.rsqrt(moments.var + 1e-3)
    y = _normalize_apply(xg, given_weights, moments.mean, invstd, s, b, axes)
    y.backward(dy)
    tolerance = (
        {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 0.02, "atol": 0.03}
    )
    if need_x:
        assert xg.grad.dtype == dtype and xg.grad.stride() == x.stride()
        torch.testing.assert_close(xg.grad.double(), x64.grad, **tolerance)
    else:
        assert xg.grad is None
    # The oracle's parameter gradients, summed over the groups that share them.
    x_hat = ((x64 - mean64) * torch.rsqrt(var64 + 1e-3)).detach()
    reduce_dims = (0, 1, 3, 4)
    want_ds = (dy.double() * x_hat).sum(reduce_dims, keepdim=True)
    torch.testing.assert_close(s.grad.double(), want_ds, **tolerance)
    want_db = dy.double().sum(reduce_dims, keepdim=True)
    torch.testing.assert_close(b.grad.double(), want_db, **tolerance)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(2, 0),
        lambda: torch.randn(2, 0, 3, 3),
        lambda: torch.randn(2, 0, 3, 3).contiguous(memory_format=torch.channels_last),
        lambda: torch.randn(0, 3, 4, 4),
    ],
    ids=["dense", "NCHW", "channels_last", "empty batch"],
)
def test_empty_inputs_give_empty_outputs_and_gradients(make, training):
    """Zero channels or an empty batch: an empty output and gradients, on the fast path."""
    x = make().requires_grad_()
    channels = x.shape[1]
    gamma = torch.ones(channels, requires_grad=True)
    y = bn.functional.batch_norm(
        x, torch.zeros(channels), torch.ones(channels), gamma, None, training=training, axis=1
    ).output
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape and gamma.grad.shape == gamma.shape


def _per_example(shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """An adjustment that varies per example: the composite backward's case."""
    generator = torch.Generator().manual_seed(8)
    per_example = (shape[0], shape[1], 1, 1)
    return torch.rand(per_example, generator=generator) + 0.5, torch.randn(per_example)


SIXTEEN_BIT_OPTIONS = {
    "plain": ({}, {}),
    "renorm": ({"renorm": True}, {}),
    "ghost batches": ({"virtual_batch_size": 2}, {}),
    "batch weights": ({}, {"batch_weights": torch.rand(4)}),
    "mask": ({}, {"mask": torch.rand(4, 1, 64, 80) > 0.3}),
    "adjustment per example": ({"adjustment": _per_example}, {}),
    "zero-debias": ({"zero_debias_moving_mean": True}, {}),
    "deferred updates": ({"deferred_updates": True}, {}),
}


@pytest.mark.parametrize("channels_last", [False, True], ids=["NCHW", "channels_last"])
@pytest.mark.parametrize("option", list(SIXTEEN_BIT_OPTIONS))
def test_a_sixteen_bit_training_step_never_copies_the_input_to_float32(
    option, channels_last, monkeypatch
):
    """Every allocation of a bfloat16 training step (forward and backward, fast path) is
    smaller than a float32 copy of the input: 16-bit data is upcast a block at a time.
    Blocks of 2^15 elements, so that the input is ten blocks and a copy would stand out."""
    monkeypatch.setattr(_thresholds, "BLOCK_ELEMENTS", 1 << 15)
    construction, call = SIXTEEN_BIT_OPTIONS[option]
    x = torch.randn(4, 16, 64, 80, generator=torch.Generator().manual_seed(9)).bfloat16()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    layer = bn.BatchNormalization(axis=1, **construction)

    def step() -> None:
        inputs = x.detach().requires_grad_(True)
        output = layer(inputs, training=True, **call)
        output.backward(torch.ones_like(output))

    step()  # builds the layer and its reused scratch
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as profile:
        step()
    largest = max(event.self_cpu_memory_usage for event in profile.events())
    assert 0 < largest < x.numel() * torch.finfo(torch.float32).bits // 8


@pytest.mark.parametrize(
    ("shape", "dims", "asked"),
    [
        ((512, 8), (0,), [(512, 8)]),  # a matrix: 8 runs of 64 rows
        ((8, 5, 6, 3), (0, 1, 2), []),  # channels_last in memory order: the batch last
        ((7, 3), (0,), [(7, 1)]),  # too few rows to split
        ((4, 3, 5), (0, 2), []),  # dimensions that do not lead: one sum
    ],
)
def test_sum_over_sums_in_parts_where_the_reduced_dimensions_lead(shape, dims, asked, monkeypatch):
    """``_moments.sum_over`` equals one keepdim sum (float64), and splits a leading reduced
    dimension of known size into the runs of rows ``column_parts`` gives (rows, parts)."""
    calls = []
    column_parts = _moments.column_parts

    def spy(rows: int) -> int:
        calls.append((rows, column_parts(rows)))
        return calls[-1][1]

    monkeypatch.setattr(_moments, "column_parts", spy)
    t = torch.randn(shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    torch.testing.assert_close(_moments.sum_over(t, dims), t.sum(dim=dims, keepdim=True))
    assert calls == asked
