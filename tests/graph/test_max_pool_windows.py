"""max_pool_windows: a max pool whose windows tile its input becomes one chrion::max_pool_tiles
node, equal to eager max_pool2d (NaN included) in either layout, on one thread or several; any
other pool, or one whose indices are read, stays."""

import pytest
import torch
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

from torch_chrion.graph.passes import max_pool_windows

aten = torch.ops.aten


def traced(fn, x):
    return make_fx(fn)(x)


def pools(gm) -> int:
    return sum(n.target is aten.max_pool2d_with_indices.default for n in gm.graph.nodes)


@pytest.mark.parametrize(
    "shape, kernel",
    [
        ((4, 8, 10, 40), (1, 2)),
        ((2, 3, 7, 9), (2, 2)),  # partial windows at both edges are dropped, as in floor mode
        ((2, 3, 6, 9), (1, 3)),
        ((2, 3, 9, 6), (3, 1)),
        ((5, 6, 8), (2, 2)),  # unbatched (C, H, W)
        ((2, 3, 4, 6), 2),  # an int kernel
    ],
)
def test_a_tiling_pool_becomes_maxima_equal_to_eager(shape, kernel):
    x = torch.randn(*shape)
    x.view(-1)[::7] = float("nan")
    x.view(-1)[3::11] = float("inf")
    fn = lambda t: F.max_pool2d(t, kernel) * 2  # noqa: E731
    gm = traced(fn, x)
    assert pools(gm) == 1
    max_pool_windows(gm)
    assert pools(gm) == 0
    assert sum(n.target is torch.ops.chrion.max_pool_tiles.default for n in gm.graph.nodes) == 1
    for _ in range(2):
        y = torch.randn(*shape)
        y.view(-1)[5::13] = float("nan")
        torch.testing.assert_close(gm(y), fn(y), equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize(
    "fn",
    [
        lambda t: F.max_pool2d(t, 2, stride=1),  # overlapping
        lambda t: F.max_pool2d(t, 2, padding=1),
        lambda t: F.max_pool2d(t, 2, dilation=2),
        lambda t: F.max_pool2d(t, 2, ceil_mode=True),
        lambda t: F.max_pool2d(t, 3),  # a window of nine elements
        lambda t: F.max_pool2d(t, 2, return_indices=True)[1].float(),  # indices read
    ],
)
def test_other_pools_stay_as_they_are(fn):
    x = torch.randn(2, 3, 8, 8)
    gm = traced(fn, x)
    max_pool_windows(gm)
    assert pools(gm) == 1
    torch.testing.assert_close(gm(x), fn(x))
