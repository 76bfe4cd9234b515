"""chrion::max_pool_tiles (csrc/kernels/pooling.cpp): equal to max_pool2d with stride = window
(NaN and infinities included, partial windows dropped) on the CPU's one-pass channels-last path
at any thread count and on the maxima of strided views every other input takes; the same
output strides as max_pool2d, also from the fake kernel; bad arguments are errors naming them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from torch_chrion.ops import ensure_loaded

CL = torch.channels_last


def pool(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    ensure_loaded()
    return torch.ops.chrion.max_pool_tiles(x, list(window))


def with_specials(x: torch.Tensor, seed: int) -> torch.Tensor:
    """``x`` with NaNs and infinities scattered over its memory (any layout)."""
    flat = x.as_strided((x.numel(),), (1,))
    flat[seed::7] = float("nan")
    flat[seed + 3 :: 11] = float("inf")
    flat[seed + 5 :: 13] = -float("inf")
    return x


WINDOWS = [(2, 2), (1, 2), (2, 1), (1, 3), (3, 1), (2, 3), (3, 3)]  # 6 and 9: any window's path


@pytest.mark.parametrize("window", WINDOWS, ids=str)
@pytest.mark.parametrize("layout", [CL, torch.contiguous_format], ids=["nhwc", "nchw"])
def test_equals_max_pool2d(window, layout):
    torch.manual_seed(0)
    # 7 x 11: partial windows at both edges; 19 channels: a vector and a tail
    x = with_specials(torch.randn(3, 19, 7, 11).contiguous(memory_format=layout), 1)
    y, expected = pool(x, window), F.max_pool2d(x, window)
    torch.testing.assert_close(y, expected, equal_nan=True, rtol=0, atol=0)
    assert y.stride() == expected.stride()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_threads_split_output_rows_alike(threads):
    torch.manual_seed(1)
    # 4 MiB of input: enough bytes for three threads; 5 images of 31 output rows each
    x = with_specials(torch.randn(5, 64, 62, 53).contiguous(memory_format=CL), 2)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = pool(x, (2, 2))
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(y, F.max_pool2d(x, 2), equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize(
    "x",
    [
        torch.randn(6, 9, 8),  # unbatched [C, H, W]
        torch.randn(2, 5, 8, 6, dtype=torch.float64).contiguous(memory_format=CL),
        torch.randn(2, 8, 6, 5).permute(0, 3, 1, 2),  # neither layout
        torch.randn(0, 4, 6, 6).contiguous(memory_format=CL),
    ],
    ids=["chw", "float64", "strided", "empty"],
)
def test_other_inputs_take_the_maxima_of_views(x):
    expected = F.max_pool2d(x, (2, 2))
    y = pool(x, (2, 2))
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    assert y.shape == expected.shape


@pytest.mark.parametrize("layout", [CL, torch.contiguous_format], ids=["nhwc", "nchw"])
def test_the_fake_kernel_gives_the_real_shape_and_strides(layout):
    x = torch.randn(2, 6, 9, 10).contiguous(memory_format=layout)
    real = pool(x, (2, 1))
    with FakeTensorMode() as mode:
        fake = pool(mode.from_tensor(x), (2, 1))
    assert fake.shape == real.shape and fake.stride() == real.stride()


@pytest.mark.parametrize(
    "shape, window, message",
    [
        ((2, 3, 4, 4), (2,), "window must be two positive sizes"),
        ((2, 3, 4, 4), (0, 2), "window must be two positive sizes"),
        ((3, 4, 4, 4, 4), (2, 2), r"input must be \[C, H, W\] or \[N, C, H, W\]"),
        ((2, 3, 1, 4), (2, 2), "is smaller than the window"),
    ],
)
def test_bad_arguments_are_errors_naming_them(shape, window, message):
    with pytest.raises(ValueError, match=message):
        pool(torch.randn(shape), window)
