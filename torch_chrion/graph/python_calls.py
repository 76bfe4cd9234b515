"""Keeps data-dependent control flow (ONNX If / Loop / Scan) as one opaque node while tracing.

make_fx traces through every Python call; inside an ONNX If it meets ``bool(cond)`` and fails
(or, were the value read, bakes in the branch of the example inputs). Instead, the model's
GraphModule is run by an ``fx.Interpreter`` whose ``call_module`` turns each control-flow
module call into one call of ``chrion::python_call``: make_fx records that as one node, and the
operator's real kernel runs the module on the example values meanwhile (outputs and shapes
recorded for the fake kernel). The node is then named after the module, and the captured
GraphModule owns the callables (ops/python_call.py holds them weakly).
"""

from __future__ import annotations

import re
import sys
from typing import Any

import torch
from torch import fx, nn

from ..ops.python_call import OWNER_ATTRIBUTE, PythonCall, lookup, python_call_op, register

_CONTROL_FLOW_MODULE = "torch_chrion.onnx.converters.control_flow"


def is_control_flow(module: nn.Module) -> bool:
    """Whether ``module`` is an ONNX If / Loop / Scan (a ControlFlowModule)."""
    converters = sys.modules.get(_CONTROL_FLOW_MODULE)  # none exist before it is imported
    return converters is not None and isinstance(module, converters.ControlFlowModule)


def has_control_flow(module: nn.Module) -> bool:
    """Whether a control-flow module is reachable through fx graphs from ``module``."""
    return isinstance(module, fx.GraphModule) and any(is_control_flow(m) for m in module.modules())


class ControlFlowAsPythonCalls(fx.Interpreter):
    """Runs a GraphModule with each control-flow submodule called through chrion::python_call.

    Args:
        gm: the model's GraphModule (onnx2torch's).
        calls: collects the PythonCalls made (the caller keeps them alive).
        prefix: qualified name of ``gm`` in the model (for nested GraphModules).
    """

    def __init__(self, gm: fx.GraphModule, calls: list[PythonCall], prefix: str = "") -> None:
        super().__init__(gm)
        self.calls = calls
        self.prefix = prefix

    def call_module(self, target: Any, args: tuple, kwargs: dict) -> Any:
        submodule = self.fetch_attr(target)
        name = f"{self.prefix}{target}"
        if is_control_flow(submodule):
            call = PythonCall(submodule, name, args, kwargs)
            register(call)
            self.calls.append(call)
            outputs = python_call_op()(call.handle, call.tensors_of(args, kwargs))
            return call.unflatten(outputs)
        if has_control_flow(submodule) and not kwargs:
            return ControlFlowAsPythonCalls(submodule, self.calls, f"{name}.").run(*args)
        return super().call_module(target, args, kwargs)


def _node_name(name: str) -> str:
    name = re.sub(r"[^0-9A-Za-z_]", "_", name)
    return name if name.isidentifier() else f"python_{name}"


def adopt_python_calls(gm: fx.GraphModule, calls: list[PythonCall]) -> fx.GraphModule:
    """Make ``gm`` (traced with ControlFlowAsPythonCalls) own ``calls`` and name each
    chrion::python_call node after its module (stable names for plans)."""
    setattr(gm, OWNER_ATTRIBUTE, {call.handle: call for call in calls})
    op = python_call_op()
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is op:
            node._rename(_node_name(lookup(node.args[0]).name))
    gm.recompile()
    return gm


def owned_python_calls(gm: torch.nn.Module) -> dict[int, PythonCall]:
    """The PythonCalls ``gm`` owns, by handle."""
    return dict(getattr(gm, OWNER_ATTRIBUTE, {}))
