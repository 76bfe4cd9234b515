"""Splits recurrent operators per layer, per direction and per sequence chunk.

A ``chrion.lstm/gru/rnn`` node with ``num_layers`` L, D directions, cut into K sequence chunks,
becomes L x D x K single-layer, single-direction ``chrion`` calls (each still one fast kernel
call): piece (l, d, k) reads the outputs of layer l-1 at chunk k (both directions concatenated)
and the state of piece (l, d, k-1) for the forward direction, or (l, d, k+1) for the reverse
one, which runs its chunks from last to first. That is the layer x chunk wavefront the scheduler
spreads over devices. The outputs are reassembled with ``aten.cat`` (sequence and directions)
and the final states in the ``(L * D, batch, hidden)`` layout of the whole op.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from ...errors import ModelError, OptionError
from ...settings import GRANULARITIES

aten = torch.ops.aten


def _recurrent_ops() -> dict[object, int]:
    """The chrion recurrent ops and how many state tensors each carries."""
    chrion = torch.ops.chrion
    return {chrion.lstm.default: 2, chrion.gru.default: 1, chrion.rnn.default: 1}


def _bound_arguments(node: fx.Node) -> dict[str, object]:
    schema = node.target._schema
    bound = {arg.name: value for arg, value in zip(schema.arguments, node.args, strict=False)}
    bound.update(node.kwargs)
    return bound


def chunk_bounds(length: int, chunks: int) -> list[tuple[int, int]]:
    """``chunks`` contiguous [start, end) ranges covering ``length`` steps, sizes differing by
    at most one (earlier chunks take the remainder); fewer chunks when the sequence is shorter."""
    chunks = max(1, min(chunks, length))
    base, extra = divmod(length, chunks)
    bounds, start = [], 0
    for i in range(chunks):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


class _Builder:
    """Emits nodes before ``anchor``, named after it so a plan shows where pieces came from."""

    def __init__(self, graph: fx.Graph, anchor: fx.Node) -> None:
        self.graph = graph
        self.anchor = anchor

    def call(self, target: object, *args: object, name: str | None = None) -> fx.Node:
        with self.graph.inserting_before(self.anchor):
            return self.graph.create_node("call_function", target, args, {}, name=name)

    def slice(self, tensor: fx.Node, dim: int, start: int, end: int) -> fx.Node:
        return self.call(aten.slice.Tensor, tensor, dim, start, end)

    def cat(self, tensors: list[fx.Node], dim: int) -> fx.Node:
        return tensors[0] if len(tensors) == 1 else self.call(aten.cat.default, tensors, dim)


# From this batch on, granularity "auto" keeps a recurrent node whole (Note [Auto granularity]
# in settings.py): placed wide, the kernel runs a bidirectional layer's directions on threads
# that balance each other. Below it, split per layer and direction, the two directions run on
# two lanes even where the profile, measured under load, finds no gain in placing a node wide.
WHOLE_FROM_BATCH = 4


def _batch(node: fx.Node) -> int:
    """The batch a recurrent node runs (0 when symbolic: not known to be large)."""
    x = node.args[0].meta["val"]
    if x.dim() == 2:
        return 1
    batch = x.shape[0 if _bound_arguments(node)["batch_first"] else 1]
    return batch if isinstance(batch, int) else 0


def _split_node(graph: fx.Graph, node: fx.Node, n_states: int, seq_chunks: int) -> bool:
    a = _bound_arguments(node)
    x, params = a["input"], list(a["params"])
    layers, bidirectional, batch_first = a["num_layers"], a["bidirectional"], a["batch_first"]
    has_biases, base_reverse = a["has_biases"], a["reverse"]
    states0 = [a["h0"], a["c0"]] if n_states == 2 else [a["h0"]]
    extra = (a["nonlinearity"],) if "nonlinearity" in a else ()
    x_val = x.meta["val"]
    time_dim = 0 if x_val.dim() == 2 else (1 if batch_first else 0)
    bounds = chunk_bounds(x_val.shape[time_dim], seq_chunks)
    directions = 2 if bidirectional else 1
    if layers == 1 and directions == 1 and len(bounds) == 1:
        return False
    per_piece = 4 if has_biases else 2
    if len(params) != layers * directions * per_piece:
        raise ModelError(
            f"{node.format_node()}: {len(params)} weights for {layers} layer(s) x "
            f"{directions} direction(s)"
        )
    for user in node.users:
        if user.target is not operator.getitem:
            raise ModelError(f"{node.format_node()} is read by {user.format_node()}, not getitem")

    b = _Builder(graph, node)
    chunks_in = [x] if len(bounds) == 1 else [b.slice(x, time_dim, s, e) for s, e in bounds]
    finals: list[list[fx.Node]] = []  # per (layer, direction): its final states
    outputs: list[list[fx.Node]] = []
    for layer in range(layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            reverse = direction == 1 or bool(base_reverse)
            weights = params[index * per_piece : (index + 1) * per_piece]
            states = [b.slice(s, 0, index, index + 1) for s in states0]
            pieces: list[fx.Node | None] = [None] * len(bounds)
            order = range(len(bounds) - 1, -1, -1) if reverse else range(len(bounds))
            for k in order:
                piece = b.call(
                    node.target,
                    chunks_in[k],
                    *states,
                    weights,
                    has_biases,
                    1,
                    False,
                    batch_first,
                    reverse,
                    *extra,
                    name=f"{node.name}_l{layer}{'_rev' if direction else ''}_c{k}",
                )
                pieces[k] = b.call(operator.getitem, piece, 0)
                states = [b.call(operator.getitem, piece, 1 + j) for j in range(n_states)]
            outputs.append(pieces)
            finals.append(states)
        if layer + 1 < layers:
            chunks_in = [b.cat([out[k] for out in outputs], -1) for k in range(len(bounds))]

    results = [b.cat([b.cat(out, time_dim) for out in outputs], -1)]
    results += [b.cat([f[j] for f in finals], 0) for j in range(n_states)]
    for user in list(node.users):
        user.replace_all_uses_with(results[user.args[1]])
        graph.erase_node(user)
    graph.erase_node(node)
    return True


def split_recurrent(
    gm: fx.GraphModule, *, granularity: str = "layer", seq_chunks: int = 1
) -> fx.GraphModule:
    """Split the recurrent nodes of an annotated aten graph to ``granularity`` (in place).

    Args:
        gm: an aten graph whose placeholders carry ``meta["val"]`` (as ``capture`` leaves it).
        granularity: "op" leaves recurrent nodes whole; "layer" splits them per layer and
            direction; "auto" (for CPU lanes alone) leaves a node over a batch of
            WHOLE_FROM_BATCH or more whole and splits the others as "layer".
        seq_chunks: with "layer", cut every sequence into this many chunks (at most one step
            each); 1 keeps sequences whole.

    Returns:
        ``gm``, re-annotated (``meta["val"]`` and the byte counts of every node).

    Raises:
        OptionError: an unknown granularity, a bad ``seq_chunks``, or chunks with "op".
    """
    from ..annotate import annotate

    if granularity not in GRANULARITIES:
        raise OptionError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if not isinstance(seq_chunks, int) or isinstance(seq_chunks, bool) or seq_chunks < 1:
        raise OptionError(f"seq_chunks must be an integer >= 1, got {seq_chunks!r}")
    if granularity != "layer" and seq_chunks > 1:
        raise OptionError('seq_chunks > 1 needs granularity="layer" (chunks are per layer)')
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if any("val" not in p.meta for p in placeholders):
        raise ModelError("split_recurrent needs an annotated graph (run capture first)")
    changed = False
    if granularity != "op":
        ops = _recurrent_ops()
        for node in list(gm.graph.nodes):
            if node.op == "call_function" and node.target in ops:
                if "val" not in node.args[0].meta:
                    annotate(gm, [p.meta["val"] for p in placeholders])
                if granularity == "auto" and _batch(node) >= WHOLE_FROM_BATCH:
                    continue
                changed |= _split_node(gm.graph, node, ops[node.target], seq_chunks)
    if changed:
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
    return annotate(gm, [p.meta["val"] for p in placeholders])
