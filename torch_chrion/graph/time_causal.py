"""Is an aten graph causal in time: does each output at step t depend only on input steps <= t?

A server may then pad shorter sequences at the end, run them in one batch with longer ones and
cut each answer back to its own length: the steps it keeps are exactly those of the unpadded
call. A bidirectional or reversed recurrent layer, a reduction or softmax over time, a
convolution, a slice along time, a final hidden state, or any op this analysis does not know
makes the graph not causal (the answer is "no" unless every step is proved).

The analysis follows where the time axis of each value lies, in the row-major flat index of its
shape: step ``t`` of a value is ``(flat // stride) % length``. Reshapes keep the flat index, so
they keep the time axis wherever the dims it merges or splits go (a [T, N, F] -> [T*N, F] view
before a Linear, say); a permute moves the dim that holds it; an op that works per position
along other dims (pointwise ops, a matmul or ``chrion::dense`` whose rows hold time, a softmax
over features, a row lookup per token, a unidirectional forward recurrent layer along its own
time dim) keeps it. It reads only node
targets, arguments and ``meta["val"]`` shapes (graph/annotate.py).
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx

aten = torch.ops.aten


@dataclasses.dataclass(frozen=True)
class _Time:
    """A value whose step t is ``(flat // stride) % length`` of its row-major flat index and
    depends only on input steps <= t."""

    stride: int
    length: int


class _Mixed:
    """A value some of whose elements depend on later steps (or on steps it cannot follow)."""


MIXED = _Mixed()
# None: a value that does not depend on any time-varying input (weights, constants)
State = _Time | _Mixed | None | tuple


def _shape(node: Any) -> tuple[int, ...] | None:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    if isinstance(value, torch.Tensor) and all(isinstance(d, int) for d in value.shape):
        return tuple(value.shape)
    return None


def _locate(shape: Sequence[int], state: _Time) -> tuple[int, int] | None:
    """(dim, inner): the dim that holds the time axis whole, and how many flat steps of that
    dim one time step spans; None when time is split over several dims."""
    after = 1
    for d in range(len(shape) - 1, -1, -1):
        if state.stride % after == 0 and state.stride >= after:
            inner = state.stride // after
            if shape[d] % (inner * state.length) == 0:
                return d, inner
        after *= shape[d]
    return None


def _at(shape: Sequence[int], dim: int, inner: int, length: int) -> _Time:
    return _Time(inner * math.prod(shape[dim + 1 :]), length)


_VIEWS = {
    aten.view.default,
    aten._unsafe_view.default,
    aten.reshape.default,
    aten.clone.default,
    aten.contiguous.default,
    aten.alias.default,
    aten.detach.default,
    aten._to_copy.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.squeeze.default,
    aten.flatten.using_ints,
}
_SOFTMAX = {aten._log_softmax.default, aten._softmax.default}
_MATMUL = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.matmul.default}
_RECURRENT = {"chrion::lstm", "chrion::gru", "chrion::rnn"}
# row lookups: (table, index) -> one row per index element
_LOOKUPS = {"aten::embedding": ("weight", "indices"), "chrion::gather_rows": ("table", "index")}


def _bound(node: fx.Node) -> dict[str, Any]:
    """The node's arguments by schema name (defaults filled in)."""
    schema = node.target._schema
    bound = {a.name: a.default_value for a in schema.arguments if a.has_default_value()}
    bound.update(zip((a.name for a in schema.arguments), node.args, strict=False))
    bound.update(node.kwargs)
    return bound


def _states_of(value: Any, states: dict[fx.Node, State]) -> list[State]:
    return [states[n] for n in torch.utils._pytree.tree_leaves(value) if isinstance(n, fx.Node)]


def _transfer(node: fx.Node, states: dict[fx.Node, State]) -> State:
    """The time state of one call_function node's output."""
    target = node.target
    if target is operator.getitem:
        source, index = node.args
        state = states[source]
        return state[index] if isinstance(state, tuple) else state if state is None else MIXED
    inputs = _states_of((node.args, node.kwargs), states)
    if all(s is None for s in inputs):
        return None
    if any(s is MIXED or isinstance(s, tuple) for s in inputs):
        return MIXED
    if not isinstance(target, torch._ops.OpOverload):
        return MIXED
    out = _shape(node)
    if target.name() in _RECURRENT:
        return _recurrent(node, states)
    if target.name() in _LOOKUPS:
        return _looked_up(node, states, *_LOOKUPS[target.name()])
    if out is None:
        return MIXED
    args = _bound(node)
    first = node.args[0] if node.args else None
    given = states.get(first) if isinstance(first, fx.Node) else None
    if target in _VIEWS:
        shape = _shape(first)
        if shape is None or math.prod(shape) != math.prod(out) or not isinstance(given, _Time):
            return MIXED
        return given
    if target in (aten.permute.default, aten.transpose.int, aten.t.default):
        return _permuted(node, given, out)
    if target in _SOFTMAX or target.name() == "chrion::softmax":
        return _keeps_unless(given, _shape(first), {args["dim"]}, out)
    if target in (aten.sum.dim_IntList, aten.mean.dim, aten.amax.default, aten.amin.default):
        return _reduced(given, _shape(first), args.get("dim"), bool(args.get("keepdim")), out)
    if target in (aten.slice.Tensor, aten.select.int):
        return _sliced(node, given, _shape(first), args["dim"], out)
    if target == aten.cat.default:
        return _concatenated(node, states, args["dim"], out)
    if target in _MATMUL or target.name() == "chrion::dense":
        return _matmul(node, states, out)
    if torch.Tag.pointwise in target.tags:
        return _pointwise(node, states, out)
    return MIXED


def _permuted(node: fx.Node, given: State, out: tuple[int, ...]) -> State:
    shape = _shape(node.args[0])
    if not isinstance(given, _Time) or shape is None:
        return MIXED
    where = _locate(shape, given)
    if where is None:
        return MIXED
    dim, inner = where
    order = list(range(len(shape)))
    if node.target == aten.permute.default:
        order = [d % len(shape) for d in node.args[1]]
    elif node.target == aten.transpose.int:
        a, b = (d % len(shape) for d in node.args[1:3])
        order[a], order[b] = order[b], order[a]
    else:
        order.reverse()
    return _at(out, order.index(dim), inner, given.length)


def _keeps_unless(
    given: State, shape: tuple[int, ...] | None, over: set[int], out: tuple[int, ...]
) -> State:
    """A same-shape op along dims ``over``: causal unless one of them holds time."""
    if not isinstance(given, _Time) or shape is None or shape != out:
        return MIXED
    where = _locate(shape, given)
    if where is None or where[0] in {d % len(shape) for d in over}:
        return MIXED
    return given


def _reduced(
    given: State, shape: tuple[int, ...] | None, dims: Any, keepdim: bool, out: tuple[int, ...]
) -> State:
    if not isinstance(given, _Time) or shape is None or not dims:  # no dims: all of them
        return MIXED
    where = _locate(shape, given)
    reduced = {d % len(shape) for d in dims}
    if where is None or where[0] in reduced:
        return MIXED
    dim = where[0] if keepdim else where[0] - sum(d < where[0] for d in reduced)
    return _at(out, dim, where[1], given.length)


def _sliced(
    node: fx.Node, given: State, shape: tuple[int, ...] | None, dim: int, out: tuple[int, ...]
) -> State:
    if not isinstance(given, _Time) or shape is None:
        return MIXED
    where = _locate(shape, given)
    dim %= len(shape)
    if where is None or where[0] == dim:  # along time: which steps survive is not followed
        return MIXED
    removed = node.target == aten.select.int and dim < where[0]
    return _at(out, where[0] - removed, where[1], given.length)


def _aligned(parts: Sequence[tuple[State, tuple[int, ...] | None]], out: tuple[int, ...]) -> State:
    """The common time state of inputs broadcast (right-aligned) to ``out``; MIXED unless every
    time-varying input holds time in the same output dim, unbroadcast."""
    found: set[_Time] = set()
    for state, shape in parts:
        if state is None:
            continue
        if not isinstance(state, _Time) or shape is None:
            return MIXED
        where = _locate(shape, state)
        if where is None:
            return MIXED
        dim = where[0] + len(out) - len(shape)
        if shape[where[0]] != out[dim]:
            return MIXED
        found.add(_at(out, dim, where[1], state.length))
    return found.pop() if len(found) == 1 else MIXED


def _pointwise(node: fx.Node, states: dict[fx.Node, State], out: tuple[int, ...]) -> State:
    args = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)]
    return _aligned([(states[a], _shape(a)) for a in args], out)


def _concatenated(
    node: fx.Node, states: dict[fx.Node, State], dim: int, out: tuple[int, ...]
) -> State:
    parts = [(states[a], _shape(a)) for a in node.args[0]]
    state = _aligned(parts, out)
    if isinstance(state, _Time):
        where = _locate(out, state)
        if where is None or where[0] == dim % len(out):
            return MIXED
    return state


def _matmul(node: fx.Node, states: dict[fx.Node, State], out: tuple[int, ...]) -> State:
    """Rows (or batch dims) of the left operand may hold time; the right operand and a bias
    must not depend on time. ``chrion::dense(input, weight, bias)`` is ``input @ weight + bias``."""
    if node.target == aten.addmm.default:
        bias, left, right = node.args[:3]
    else:
        left, right = node.args[:2]
        bias = _bound(node).get("bias")
    if any(s is not None for s in _states_of(bias, states)):
        return MIXED
    state, shape = states[left], _shape(left)
    if states[right] is not None or not isinstance(state, _Time) or shape is None:
        return MIXED
    where = _locate(shape, state)
    if where is None or where[0] == len(shape) - 1:  # time in the contracted dim
        return MIXED
    return _at(out, where[0] + len(out) - len(shape), where[1], state.length)


def _looked_up(node: fx.Node, states: dict[fx.Node, State], table: str, index: str) -> State:
    """A row of a table that does not depend on time per index element: the index's time axis,
    each of its steps now a row of the table long."""
    args = _bound(node)
    state, shape = states[args[index]], _shape(args[table])
    if states[args[table]] is not None or not isinstance(state, _Time) or shape is None:
        return MIXED
    return _Time(state.stride * math.prod(shape[1:]), state.length)


def _recurrent(node: fx.Node, states: dict[fx.Node, State]) -> State:
    """A chrion recurrent layer: causal when it runs forward only, along the time dim of its
    layout, from initial states and weights that do not depend on time."""
    args = _bound(node)
    x = args["input"]
    state, shape = states[x], _shape(x)
    others = [v for k, v in args.items() if k != "input"]
    if any(s is not None for s in _states_of(others, states)):
        return MIXED
    if not isinstance(state, _Time) or shape is None:
        return MIXED
    outputs = len(node.meta["val"])
    if args["bidirectional"] or args["reverse"]:
        return (MIXED,) * outputs
    time_dim = 1 if args["batch_first"] and len(shape) == 3 else 0
    if _locate(shape, state) != (time_dim, 1) or shape[time_dim] != state.length:
        return (MIXED,) * outputs
    y = _shape_of(node.meta["val"][0])
    # the final states depend on the last (padded) step
    return (_at(y, time_dim, 1, state.length), *(MIXED,) * (outputs - 1))


def _shape_of(value: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(d) for d in value.shape)


def causal_time_axes(
    gm: fx.GraphModule, input_axes: Sequence[int | None]
) -> list[int | None] | None:
    """The time axis of each output when every output is causal in time, else None.

    Args:
        gm: an annotated aten graph (``meta["val"]`` on every node).
        input_axes: each placeholder's time axis, None for an input that does not vary in time.

    Returns:
        Per output, the axis that holds its steps (one step per index, as long as the input's),
        or None for an output that depends on no time-varying input; None when any output
        depends on a later step, or on anything the analysis cannot follow.
    """
    states: dict[fx.Node, State] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(input_axes):
        return None
    lengths = set()
    for node, axis in zip(placeholders, input_axes, strict=True):
        shape = _shape(node)
        if axis is None:
            states[node] = None
            continue
        if shape is None or shape[axis] < 2:  # a one-step example proves nothing
            return None
        lengths.add(shape[axis])
        states[node] = _at(shape, axis % len(shape), 1, shape[axis])
    if len(lengths) != 1:  # inputs of different lengths: steps of which one?
        return None
    (length,) = lengths
    result: list[int | None] | None = None
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            states[node] = None
        elif node.op == "call_function":
            states[node] = _transfer(node, states)
        elif node.op == "output":
            result = []
            for leaf in torch.utils._pytree.tree_leaves(node.args[0]):
                state = states.get(leaf) if isinstance(leaf, fx.Node) else None
                if state is None:
                    result.append(None)
                    continue
                shape = _shape(leaf)
                where = _locate(shape, state) if isinstance(state, _Time) and shape else None
                if where is None or where[1] != 1 or shape[where[0]] != length:
                    return None
                result.append(where[0])
        elif node.op != "placeholder":  # call_module / call_method: not followed
            return None
    return result


__all__ = ["causal_time_axes"]
