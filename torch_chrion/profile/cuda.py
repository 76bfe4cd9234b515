"""Node costs on a CUDA device, each node called alone on its recorded inputs and timed by CUDA
events (timing.time_cuda)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import fx

from ..graph.nodes import node_callable
from .budget import Budget, warmup_seconds
from .progress import progress
from .timing import time_cuda


class _KeepValues(fx.Interpreter):
    """Runs the graph and keeps every node's value (no freeing after last use)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=False)


def node_values(gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> dict[fx.Node, object]:
    """Every node's value in one run of ``gm`` on ``inputs``: what each node is then called on."""
    interpreter = _KeepValues(gm)
    with torch.no_grad():
        interpreter.run(*inputs)
    return interpreter.env


def _to_device(value: object, device: torch.device) -> object:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def _clone_tensors(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_clone_tensors(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone_tensors(v) for k, v in value.items()}
    return value


def _node_call(
    gm: fx.GraphModule, node: fx.Node, values: dict[fx.Node, object]
) -> Callable[[], object]:
    """A no-argument call of ``node`` on its recorded inputs."""
    args, kwargs = fx.node.map_arg((node.args, node.kwargs), values.__getitem__)
    schema = getattr(node.target, "_schema", None)
    if schema is not None and schema.is_mutable:
        # an in-place op must not touch the shared values
        args, kwargs = _clone_tensors((args, kwargs))
    target = node_callable(gm, node)

    def call() -> object:
        return target(*args, **kwargs)

    return call


def _warm_up(calls: list[Callable[[], object]], device: torch.device, seconds: float) -> None:
    """Run the graph's nodes in order for ``seconds`` (at least once) before timing any.

    Measured on a 16-core VM: without it, the first node timings of a fresh process came out up
    to 2x slow (thread pool start, page faults of first allocations, clocks ramping up).
    """
    deadline = time.monotonic() + seconds
    while True:
        for call in calls:
            try:
                call()
            except (RuntimeError, NotImplementedError):
                pass  # reported when the node itself is measured
        torch.cuda.synchronize(device)
        if time.monotonic() >= deadline:
            return


def measure_on_cuda(
    gm: fx.GraphModule,
    values: dict[fx.Node, object],
    nodes: list[fx.Node],
    device: torch.device,
    budget: Budget,
    desc: str,
) -> tuple[dict[str, float], list[str]]:
    """Median ms of each node on a CUDA ``device`` by CUDA events; a node that fails there
    costs ``inf``.

    Per node, as TVM's time_evaluator does: one untimed call (lazy initialisation, and the check
    that the node runs there at all), one timed call that sizes the node's share of the budget
    and its calls per repeat, the remaining warm-ups, then the repeats back to back.
    """
    values = {node: _to_device(value, device) for node, value in values.items()}
    costs: dict[str, float] = {}
    notes: list[str] = []
    calls = {node: _node_call(gm, node, values) for node in nodes}
    with progress(len(nodes), desc, " node") as bar, torch.no_grad():
        _warm_up(list(calls.values()), device, warmup_seconds(budget.seconds))
        for node, call in calls.items():
            try:
                time_cuda(call, 1, 0, device)
                (first,) = time_cuda(call, 0, 1, device)
                warmup, repeats, number = budget.plan(first)
                times = time_cuda(call, max(warmup - 2, 0), repeats, device, number)
                costs[node.name] = statistics.median(times)
            except (RuntimeError, NotImplementedError) as exc:
                costs[node.name] = math.inf
                notes.append(f"{node.name} cannot run on {device}: {str(exc).splitlines()[0]}")
            bar.update()
    return costs, notes
