"""Asserts that an aten graph can run on every device: no backend-only kernel, no pinned device.

A graph traced on CPU can hold CPU-only kernels (``aten.mkldnn_rnn_layer`` is what make_fx
records for ``aten.lstm`` there) and factory calls with ``device=cpu``. Either would break the
graph on a CUDA lane, so capture refuses them here, naming the nodes, instead of failing later.
"""

from __future__ import annotations

import torch
from torch import fx

from ...errors import UnsupportedOperatorError

# aten kernels that exist for one backend only
_BACKEND_PREFIXES = ("mkldnn", "_mkldnn", "mkl_", "_mkl", "cudnn", "_cudnn", "miopen", "_miopen")
_BACKEND_NAMESPACES = ("mkldnn", "quantized", "onednn", "mkl")


def backend_specific(target: object) -> bool:
    """Whether ``target`` is an operator that only one backend implements."""
    if not isinstance(target, torch._ops.OpOverload):
        return False
    namespace = target.namespace
    name = target._schema.name.split("::")[-1]
    return namespace in _BACKEND_NAMESPACES or name.startswith(_BACKEND_PREFIXES)


def _pinned_device(node: fx.Node) -> object | None:
    for value in (*node.args, *node.kwargs.values()):
        if isinstance(value, torch.device):
            return value
    return None


def check_portable(gm: fx.GraphModule) -> fx.GraphModule:
    """Raise if a node of ``gm`` would only run on one device.

    Args:
        gm: an aten graph.

    Returns:
        ``gm``, unchanged.

    Raises:
        UnsupportedOperatorError: naming every offending node and operator.
    """
    bad: list[str] = []
    ops: list[str] = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if backend_specific(node.target):
            bad.append(f"{node.name} ({node.target}: backend-specific kernel)")
            ops.append(str(node.target))
        elif (device := _pinned_device(node)) is not None:
            bad.append(f"{node.name} ({node.target}: pinned to device {device})")
            ops.append(str(node.target))
    if bad:
        raise UnsupportedOperatorError(
            "the captured graph is not device-portable: " + "; ".join(bad), ops=sorted(set(ops))
        )
    return gm
