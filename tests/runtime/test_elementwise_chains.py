"""Chains of small elementwise CPU nodes run as one step (Note [Chrion elementwise chains] in
csrc/executor/elementwise.h): the same numbers as eager PyTorch's calls, bit for bit, whether a
chain takes the fast path or falls back to ATen's own calls; fused only where that is safe."""

from __future__ import annotations

import itertools

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from runtime_helpers import aten_graph, schedulable

from torch_chrion.runtime import PlacedGraph

SPECIALS = [float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1e-45, 3.4e38, -1.0]


def same_numbers(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal dtype and shape, NaN where eager has NaN, every other element bit for bit (the sign
    of a zero included; a NaN's payload is not a number)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(got[~nan], want[~nan])
    assert torch.equal(torch.signbit(got[~nan]), torch.signbit(want[~nan]))


def one_lane(fn, *inputs, **kwargs) -> PlacedGraph:
    gm = aten_graph(fn, *inputs)
    return PlacedGraph(gm, {n.name: "cpu" for n in schedulable(gm)}, cpu_threads=1, **kwargs)


OPS = ["add", "sub", "rsub_tensor", "mul", "neg", "relu"]


def chain_fn(ops: list[tuple[str, bool, float]]):
    """x, y -> the ops applied in turn to x; each binary op takes y or a number."""

    def f(x, y):
        v = x
        for kind, tensor, number in ops:
            other = y if tensor else number
            if kind == "add":
                v = v + other
            elif kind == "sub":
                v = v - other
            elif kind == "rsub_tensor":  # the running value as the second operand
                v = y - v
            elif kind == "mul":
                v = v * other
            elif kind == "neg":
                v = -v
            else:
                v = torch.relu(v)
        return v

    return f


floats32 = st.one_of(st.sampled_from(SPECIALS), st.floats(-1e4, 1e4, width=32))
numbers = st.one_of(st.integers(-3, 3), st.floats(-100, 100), st.sampled_from([0.1, 1 / 3]))


@settings(max_examples=25, deadline=None)
@given(
    ops=st.lists(st.tuples(st.sampled_from(OPS), st.booleans(), numbers), min_size=2, max_size=6),
    size=st.integers(1, 40),
    data=st.data(),
)
def test_fused_chains_equal_eager_bit_for_bit(ops, size, data):
    x = torch.tensor(data.draw(st.lists(floats32, min_size=size, max_size=size)))
    y = torch.tensor(data.draw(st.lists(floats32, min_size=size, max_size=size)))
    f = chain_fn(ops)
    module = one_lane(f, x, y)
    assert module.fused_chains()  # every op above fuses with the next (one lane, one reader)
    same_numbers(module(x, y), f(x, y))
    # a larger tensor (whole vectors), and operands outside the fast path (ATen's calls)
    big, other = torch.randn(3, 50), torch.randn(3, 50)
    same_numbers(module(big, other), f(big, other))
    same_numbers(module(x.double(), y.double()), f(x.double(), y.double()))


def aten_calls(module: PlacedGraph, *inputs) -> list[str]:
    """The aten operators the module's lanes call (torch.profiler sees the lanes' work)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        module(*inputs)
    return [e.name for e in prof.events() if e.name in ("aten::add", "aten::mul", "aten::relu")]


def test_the_fast_path_calls_no_operator_and_falls_back_outside_it():
    def f(x, y):
        return torch.relu(x * y + 1)

    x, y = torch.randn(5), torch.randn(5)
    module = one_lane(f, x, y)
    assert module.fused_chains() == [["mul", "add", "relu"]]
    assert aten_calls(module, x, y) == []
    outside = {
        "integers": (torch.arange(5), torch.arange(5)),
        "float64": (x.double(), y.double()),
        "a strided view": (torch.randn(10)[::2], y),
        "broadcasting": (torch.randn(3, 1), torch.randn(1, 4)),
        "more than one grain": (torch.randn(40000), torch.randn(40000)),
    }
    for name, inputs in outside.items():
        assert aten_calls(module, *inputs) == ["aten::mul", "aten::add", "aten::relu"], name
        same_numbers(module(*inputs), f(*inputs))


def test_zero_dim_float64_against_zero_dim_float32_promotes_as_eager_does():
    c = torch.tensor(0.1, dtype=torch.float64)

    def f(x):
        return (x + 1) * c  # a 0-dim float64 constant: float64 when x is 0-dim too

    for x in (torch.tensor(2.0), torch.randn(4)):
        module = one_lane(f, x)
        same_numbers(module(x), f(x))


def test_what_must_stay_apart_is_not_fused():
    def f(x, y):
        a = x + 1
        b = a * 2  # `a` is read twice: `a` ends no chain
        c = b - a
        d = torch.sin(c)  # not elementwise arithmetic
        e = d * y
        g = e.add(y, alpha=2)  # alpha 2: ATen computes e + 2*y in one rounding
        return g, e  # e is an output: a chain may end there, not pass through

    x, y = torch.randn(6), torch.randn(6)
    module = one_lane(f, x, y)
    assert module.fused_chains() == [["mul", "sub"]]
    for got, want in zip(module(x, y), f(x, y), strict=True):
        same_numbers(got, want)
    gm = aten_graph(f, x, y)
    names = [n.name for n in schedulable(gm)]
    alternating = PlacedGraph(gm, {n: f"cpu:{i % 2}" for i, n in enumerate(names)})
    assert alternating.fused_chains() == []  # consecutive on one lane only


def test_fusion_off_runs_every_node_alone_with_the_same_numbers():
    f = chain_fn([("add", False, 1), ("mul", True, 0), ("relu", False, 0)])
    x, y = torch.randn(8), torch.randn(8)
    fused, unfused = one_lane(f, x, y), one_lane(f, x, y, fuse_elementwise=False)
    assert fused.fused_chains() and not unfused.fused_chains()
    same_numbers(fused(x, y), unfused(x, y))


def test_a_traced_chain_shows_each_member_once_in_plan_order():
    f = chain_fn([("add", False, 1), ("mul", True, 0), ("neg", False, 0), ("relu", False, 0)])
    x, y = torch.randn(8), torch.randn(8)
    module = one_lane(f, x, y)
    module.enable_trace()
    for inputs in ((x, y), (x.long(), y.long())):  # the fast path, then ATen's calls
        module(*inputs)
        events = module.last_trace()
        assert [e.node for e in events] == module.fused_chains()[0]
        assert all(a.end_us <= b.start_us for a, b in itertools.pairwise(events))
