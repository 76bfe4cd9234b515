"""Aten graphs for the executor tests (make_fx over small functions, torch_chrion.graph.capture
over the shared models), random placements and random topological orders."""

from __future__ import annotations

import random

import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from torch_chrion.graph import capture
from torch_chrion.graph.nodes import is_schedulable
from torch_chrion.ops import ensure_loaded


def aten_graph(fn, *inputs, granularity: str = "layer") -> torch.fx.GraphModule:
    """The aten graph of ``fn``: modules through torch_chrion.graph.capture (recurrent layers as
    chrion:: nodes, split per layer and direction by default), plain functions through make_fx
    with real tensors."""
    ensure_loaded()
    if isinstance(fn, nn.Module):
        return capture(fn.eval(), inputs, granularity=granularity)
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
