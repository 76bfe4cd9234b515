"""softmax_rows: a float32 softmax or log_softmax along the last dimension becomes one
chrion::softmax node, equal to a float64 softmax to float32 rounding (row tails, rows past the
L2, unaligned rows, masked scores, one thread or several), NaN where ATen's is NaN; other
dimensions and dtypes stay, and the op itself runs ATen's for them."""

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from torch_chrion.graph.passes import softmax_rows
from torch_chrion.ops import ensure_loaded

aten = torch.ops.aten
SOFTMAXES = {True: aten._log_softmax.default, False: aten._softmax.default}


def chrion_nodes(gm) -> int:
    ensure_loaded()
    return sum(n.target is torch.ops.chrion.softmax.default for n in gm.graph.nodes)


def reference(x: torch.Tensor, dim: int, log: bool) -> torch.Tensor:
    return (torch.log_softmax if log else torch.softmax)(x.double(), dim)


@pytest.mark.parametrize("log", [True, False], ids=["log_softmax", "softmax"])
@pytest.mark.parametrize(
    "shape, scale",
    [
        ((3, 17), 5.0),
        ((5, 1), 5.0),
        ((2, 16), 1.0),
        ((4, 2, 33), 60.0),  # exps far below float32's smallest normal
        ((140, 10000), 3.0),  # a vocabulary: rows past the L2, log_softmax written past caches
        ((30, 10001), 3.0),  # the same, rows not 64-byte aligned
        ((0, 8), 1.0),
        ((4, 0), 1.0),
    ],
)
def test_along_the_last_dim_one_node_equal_to_float64(shape, scale, log):
    torch.manual_seed(0)
    gm = make_fx(lambda x: SOFTMAXES[log](x, -1, False) + 1)(torch.randn(shape))
    softmax_rows(gm)
    assert chrion_nodes(gm) == 1
    x = torch.randn(shape) * scale
    got = gm(x) - 1
    torch.testing.assert_close(got.double(), reference(x, -1, log), rtol=1e-5, atol=1e-6)


def special_rows() -> torch.Tensor:
    inf, nan = float("inf"), float("nan")
    x = torch.randn(6, 40)
    x[0, 3] = nan
    x[1, 7] = inf
    x[2] = -inf
    x[3, ::3] = -inf  # masked scores
    x[4, 5] = -inf
    x[4, 6] = 1e30
    x[5] = -3e38
    return x


@pytest.mark.parametrize("log", [True, False], ids=["log_softmax", "softmax"])
def test_special_values_as_aten(log):
    ensure_loaded()
    x = special_rows()
    got = torch.ops.chrion.softmax(x, 1, log)
    expected = SOFTMAXES[log](x, 1, False)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert got[:3].isnan().all()  # a NaN, +inf or all -inf row is NaN throughout
    masked = got[3, ::3]
    assert torch.equal(masked, torch.full_like(masked, float("-inf") if log else 0.0))


@pytest.mark.parametrize("log", [True, False], ids=["log_softmax", "softmax"])
def test_a_large_softmax_does_not_depend_on_the_thread_count(log):
    ensure_loaded()
    torch.manual_seed(1)
    x = torch.randn(50, 10000)  # 2 MB: written past the caches on one thread, not on three
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(torch.ops.chrion.softmax(x, -1, log))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(r, results[0]) for r in results[1:])


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: aten._softmax.default(x, 0, False),
        lambda x: aten._log_softmax.default(x.double(), -1, False),
    ],
    ids=["first-dim", "float64"],
)
def test_other_softmaxes_stay(fn):
    gm = make_fx(fn)(torch.randn(4, 6))
    softmax_rows(gm)
    assert chrion_nodes(gm) == 0


@pytest.mark.parametrize("log", [True, False], ids=["log_softmax", "softmax"])
@pytest.mark.parametrize(
    "x, dim",
    [
        (torch.randn(4, 6), 0),
        (torch.randn(6, 4).t(), 1),
        (torch.randn(4, 6, dtype=torch.float64), 1),
        (torch.randn(()), 0),
    ],
    ids=["first-dim", "strided", "float64", "scalar"],
)
def test_the_op_runs_atens_where_its_kernel_does_not_apply(x, dim, log):
    ensure_loaded()
    assert torch.equal(torch.ops.chrion.softmax(x, dim, log), SOFTMAXES[log](x, dim, False))
