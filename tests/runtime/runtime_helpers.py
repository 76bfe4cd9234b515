"""Aten graphs for the executor tests: make_fx over small functions and over the shared models
with nn.LSTM / nn.GRU swapped for torch.ops.chrion.lstm / gru (one node per recurrent layer, as
the graph capture stage produces), plus random placements and random topological orders."""

from __future__ import annotations

import copy
import random

import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from torch_chrion.ops import ensure_loaded
from torch_chrion.runtime.lowering import is_schedulable


class ChrionRecurrent(nn.Module):
    """nn.LSTM / nn.GRU called through torch.ops.chrion.lstm / gru with the same weights."""

    def __init__(self, rnn: nn.LSTM | nn.GRU) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x, hx=None):
        r = self.rnn
        if hx is None:
            batch = x.shape[0 if r.batch_first else 1]
            layers = r.num_layers * (2 if r.bidirectional else 1)
            zeros = x.new_zeros(layers, batch, r.hidden_size)
            hx = (zeros, zeros) if isinstance(r, nn.LSTM) else zeros
        flags = (r.bias, r.num_layers, r.bidirectional, r.batch_first, False)
        if isinstance(r, nn.LSTM):
            out, h, c = torch.ops.chrion.lstm(x, hx[0], hx[1], r._flat_weights, *flags)
            return out, (h, c)
        out, h = torch.ops.chrion.gru(x, hx, r._flat_weights, *flags)
        return out, h


def chrionize(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose LSTM/GRU layers call the chrion:: operators."""
    model = copy.deepcopy(model)
    for name, child in list(model.named_children()):
        if isinstance(child, (nn.LSTM, nn.GRU)):
            setattr(model, name, ChrionRecurrent(child))
        else:
            setattr(model, name, chrionize(child))
    return model


def aten_graph(fn, *inputs) -> torch.fx.GraphModule:
    """make_fx (real tensors) of ``fn``; modules get their recurrent layers swapped first."""
    ensure_loaded()
    if isinstance(fn, nn.Module):
        fn = chrionize(fn).eval()
    with torch.no_grad():
        return make_fx(fn, tracing_mode="real")(*inputs)


def schedulable(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes if is_schedulable(n)]


def random_placement(gm: torch.fx.GraphModule, lanes: list[str], seed: int) -> dict[str, str]:
    rng = random.Random(seed)
    return {n.name: rng.choice(lanes) for n in schedulable(gm)}


def random_order(gm: torch.fx.GraphModule, seed: int) -> list[str]:
    """A random topological order of the schedulable nodes (Kahn's algorithm, random pick)."""
    rng = random.Random(seed)
    nodes = schedulable(gm)
    wanted = set(nodes)

    def producers(n):
        # getitem nodes stand for their producer
        out = set()
        for p in n.all_input_nodes:
            while p not in wanted and p.op == "call_function":
                p = p.args[0]
            if p in wanted:
                out.add(p)
        return out

    waiting = {n: producers(n) for n in nodes}
    order: list[str] = []
    while waiting:
        ready = [n for n, deps in waiting.items() if not deps]
        pick = rng.choice(ready)
        order.append(pick.name)
        del waiting[pick]
        for deps in waiting.values():
            deps.discard(pick)
    return order
