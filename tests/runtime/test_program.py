"""The executor on small hand-made aten graphs, against eager PyTorch (cf. TVM's
test_runtime_graph.py: plans written by hand, two CPU lanes)."""

import operator

import pytest
import torch
from runtime_helpers import aten_graph, schedulable

from torch_chrion.errors import OptionError, PlanError
from torch_chrion.runtime import PlacedGraph


def branches(x, w):
    a = torch.relu(x @ w)
    b, c = torch.split(a, 2, dim=1)  # a Tensor[] output read through getitem
    return torch.cat([b * 2, c + 1], 1).sum(0), a


def two_lanes(gm):
    return {n.name: ("cpu:0" if i % 2 else "cpu:1") for i, n in enumerate(schedulable(gm))}


def test_alternating_lanes_match_eager():
    x, w = torch.randn(4, 4), torch.randn(4, 4)
    gm = aten_graph(branches, x, w)
    module = PlacedGraph(gm, two_lanes(gm))
    assert module.lanes == ["cpu:0", "cpu:1"]
    assert module.python_nodes == []
    for _ in range(3):
        x, w = torch.randn(4, 4), torch.randn(4, 4)
        torch.testing.assert_close(module(x, w), branches(x, w))


def test_multi_output_operator_and_defaults():
    def f(x):
        values, indices = torch.max(x, dim=1)  # two returns, each read through getitem
        return values + indices.float(), torch.softmax(x, -1).mean()

    x = torch.randn(5, 3)
    gm = aten_graph(f, x)
    module = PlacedGraph(gm, two_lanes(gm))
    x = torch.randn(5, 3)
    torch.testing.assert_close(module(x), f(x))


def test_factory_ops_and_device_constants():
    def f(x):
        h = x.new_zeros(x.shape[0], 3)  # records device=cpu, dtype, ...
        return torch.cat([x, h], 1) + torch.arange(5, dtype=torch.float32)

    x = torch.randn(2, 2)
    gm = aten_graph(f, x)
    module = PlacedGraph(gm, {n.name: "cpu" for n in schedulable(gm)})
    torch.testing.assert_close(module(x), f(x))


def test_output_may_be_an_input_or_a_single_tensor():
    def single(x):
        return torch.tanh(x)

    def passthrough(x, y):
        return y, torch.tanh(x)

    x, y = torch.randn(3), torch.randn(3)
    gm = aten_graph(single, x)
    torch.testing.assert_close(PlacedGraph(gm, two_lanes(gm))(x), torch.tanh(x))
    gm = aten_graph(passthrough, x, y)
    out = PlacedGraph(gm, two_lanes(gm))(x, y)
    assert out[0] is y
    torch.testing.assert_close(out[1], torch.tanh(x))


def _same_structure(out, ref):
    assert type(out) is type(ref)
    if isinstance(ref, dict):
        assert list(out) == list(ref)
        for key in ref:
            _same_structure(out[key], ref[key])
    elif isinstance(ref, (tuple, list)):
        assert len(out) == len(ref)
        for a, b in zip(out, ref, strict=True):
            _same_structure(a, b)
    elif isinstance(ref, torch.Tensor):
        torch.testing.assert_close(out, ref)
    else:
        assert out == ref


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: [torch.tanh(x), x * 2],  # a list, not a tuple
        lambda x: {"b": torch.tanh(x), "a": (x * 2, x - 1)},  # a dict, nested, in key order
        lambda x: (lambda a: (a, torch.tanh(x), a))(x * 2),  # one value twice
        lambda x: ((torch.tanh(x),), x + 1),  # nested tuples
        lambda x: (torch.tanh(x), None, 3),  # constants among the outputs
    ],
    ids=["list", "dict", "repeated", "nested", "constants"],
)
def test_output_structures_are_the_graphs(fn):
    x = torch.randn(3)
    gm = aten_graph(fn, x)
    module = PlacedGraph(gm, two_lanes(gm))
    x = torch.randn(3)
    _same_structure(module(x), gm(x))
    _same_structure(module(x), fn(x))


def test_python_callable_nodes_are_counted_and_run():
    gm = torch.fx.symbolic_trace(lambda x: torch.nn.functional.gelu(x) + 1)
    gm.graph.lint()
    placement = {n.name: "cpu:1" for n in gm.graph.nodes if n.op == "call_function"}
    module = PlacedGraph(gm, placement)
    assert sorted(module.python_nodes) == sorted(placement)  # neither is an OpOverload
    x = torch.randn(6)
    torch.testing.assert_close(module(x), torch.nn.functional.gelu(x) + 1)


def test_order_is_respected_on_one_lane():
    def f(x):
        return torch.sin(x), torch.cos(x), torch.exp(x)

    x = torch.randn(3)
    gm = aten_graph(f, x)
    names = [n.name for n in schedulable(gm)]
    module = PlacedGraph(gm, dict.fromkeys(names, "cpu"), order=names[::-1])
    module.enable_trace()
    for _ in range(300):  # all three are ready at once: only the plan decides
        module(x)
        assert [e.node for e in module.last_trace()] == names[::-1]


def test_bad_placements_are_refused():
    x = torch.randn(3)
    gm = aten_graph(lambda x: torch.sin(x).cos(), x)
    names = [n.name for n in schedulable(gm)]
    good = dict.fromkeys(names, "cpu")
    with pytest.raises(PlanError, match="no lane"):
        PlacedGraph(gm, {names[0]: "cpu"})
    with pytest.raises(PlanError, match="not in the graph"):
        PlacedGraph(gm, {**good, "nope": "cpu"})
    with pytest.raises(PlanError, match="placeholder"):
        PlacedGraph(gm, {**good, "x_1": "cpu"})
    with pytest.raises(OptionError, match="unknown lane"):
        PlacedGraph(gm, {**good, names[0]: "gpu0"})
    with pytest.raises(PlanError, match="twice"):
        PlacedGraph(gm, good, order=[names[0], names[0]])
    with pytest.raises(PlanError, match="misses"):
        PlacedGraph(gm, good, order=names[:1])
    if not torch.cuda.is_available():
        with pytest.raises(OptionError, match="CUDA"):
            PlacedGraph(gm, {**good, names[0]: "cuda:0"})


def test_getitem_never_becomes_a_step():
    x, w = torch.randn(4, 4), torch.randn(4, 4)
    gm = aten_graph(branches, x, w)
    getitems = [n for n in gm.graph.nodes if n.target is operator.getitem]
    assert getitems
    module = PlacedGraph(gm, two_lanes(gm))
    module.enable_trace()
    module(x, w)
    traced = {e.node for e in module.last_trace()}
    assert traced == {n.name for n in schedulable(gm)}
