"""A structural hash of an aten graph: the key of its cached profiles and plans.

Two graphs have the same hash when they run the same operators, wired the same way, on values of
the same shapes and dtypes. Weight *values* are left out on purpose: what a node costs depends on
its shapes, not on the numbers in its weights, so a retrained model (or one with fresh random
weights) reuses the profile and plan of the same architecture. The hash is stable across
processes (no ``id()``, no memory addresses, node names included as they are deterministic); a
``chrion::python_call`` node is described by what its callable computes, not by its handle.
"""

from __future__ import annotations

import hashlib

import torch
from torch import fx

from ..ops.python_call import is_python_call, lookup


def _describe(value: object, index: dict[fx.Node, int]) -> object:
    if isinstance(value, fx.Node):
        return f"%{index[value]}"
    if isinstance(value, (list, tuple)):
        return [_describe(v, index) for v in value]
    if isinstance(value, dict):
        return {str(k): _describe(v, index) for k, v in sorted(value.items())}
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}:{value.dtype}"
    if isinstance(value, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
        return str(value)
    return repr(value)


def _value_signature(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return [list(value.shape), str(value.dtype)]
    if isinstance(value, (list, tuple)):
        return [_value_signature(v) for v in value]
    return None


def _target_name(target: object) -> str:
    if isinstance(target, (str, torch._ops.OpOverload)):
        return str(target)
    module = getattr(target, "__module__", "") or ""
    return f"{module}.{getattr(target, '__qualname__', repr(target))}"


def graph_hash(gm: fx.GraphModule) -> str:
    """Hex digest (16 characters) of ``gm``'s operators, wiring, shapes and dtypes.

    Args:
        gm: an aten graph annotated by ``capture`` (shapes come from ``meta["val"]``).

    Returns:
        A string equal for structurally identical graphs, in any process.
    """
    index = {node: i for i, node in enumerate(gm.graph.nodes)}
    digest = hashlib.sha256()
    for node in gm.graph.nodes:
        args = node.args
        if is_python_call(node):  # the handle differs per capture; what it runs does not
            args = (lookup(args[0]).key, *args[1:])
        entry = [
            node.op,
            node.name,
            _target_name(node.target) if node.op == "call_function" else str(node.target),
            _describe(args, index),
            _describe(node.kwargs, index),
            _value_signature(node.meta.get("val")),
        ]
        digest.update(repr(entry).encode())
    return digest.hexdigest()[:16]
