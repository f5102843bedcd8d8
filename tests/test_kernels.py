"""The fast path's building blocks against plain float64 torch (the oracle)."""

from __future__ import annotations

import pytest
import torch

from batchnorm._kernels import channel_sum, channel_sum_of_squares


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
