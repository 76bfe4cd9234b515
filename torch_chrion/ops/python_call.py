"""``chrion::python_call``: one aten-graph node that runs a Python callable under the GIL.

Schema: ``chrion::python_call(int handle, Tensor[] inputs) -> Tensor[]``.

Some nodes are not one ATen operator: ONNX If / Loop / Scan run converted subgraphs with
data-dependent control flow (``bool(cond)``, a trip count read as a number). Tracing through them
would bake in the branch or trip count of the example inputs, so capture keeps each as one call
of this operator instead (DESIGN.md, runtime: such nodes run on their lane as Python callables,
counted and shown in the plan). The executor calls it through the dispatcher like any operator;
its Python kernel takes the GIL.

The callable is a :class:`PythonCall` found by ``handle`` in a process-level registry that holds
it weakly: whoever holds the graph owns it (the captured GraphModule keeps it in its
``_chrion_python_calls`` attribute, a lowered program keeps it too), so compiling many graphs
leaves nothing behind once they are freed.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor, fx

from ..errors import ChrionError, ExecutionError, ModelError, UnsupportedOperatorError

# the attribute of a captured GraphModule that owns its PythonCalls ({handle: PythonCall})
OWNER_ATTRIBUTE = "_chrion_python_calls"

_REGISTRY: weakref.WeakValueDictionary[int, PythonCall] = weakref.WeakValueDictionary()
_HANDLES = itertools.count(1)
_REGISTRY_LOCK = threading.Lock()


def _structure_digest(fn: Callable[..., Any]) -> str:
    """What ``fn`` computes, stable across processes: its class, the code of the fx graphs in it
    and the shapes of its tensors (not their values, as graph_hash: costs follow shapes)."""
    digest = hashlib.sha256(f"{type(fn).__module__}.{type(fn).__qualname__}".encode())
    if isinstance(fn, torch.nn.Module):
        for name, module in fn.named_modules():
            if isinstance(module, fx.GraphModule):
                digest.update(f"{name}:{module.code}".encode())
        for name, tensor in fn.state_dict(keep_vars=True).items():
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
    return digest.hexdigest()[:16]


def _home_device(fn: Callable[..., Any]) -> torch.device | None:
    """The device of the tensors a module holds (None: it holds none)."""
    if isinstance(fn, torch.nn.Module):
        for tensor in itertools.chain(fn.parameters(), fn.buffers()):
            return tensor.device
    return None


def shares_memory(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` are views of one storage."""
    if a.device != b.device:
        return False
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


class PythonCall:
    """A Python callable and how to call it from a flat list of tensors.

    The non-tensor parts of its arguments (None for a left-out ONNX input, numbers) are fixed
    when the call is captured; only the tensors travel through the graph. The output structure
    and each output's shape, dtype and device are recorded by the first call (the one made
    while tracing): the fake kernel answers with them.

    Args:
        fn: the callable (an ``nn.Module`` such as an ONNX If / Loop / Scan).
        name: a readable name (the module's name in the model), used for the graph node.
        args: the positional arguments of the captured call.
        kwargs: its keyword arguments.
    """

    def __init__(self, fn: Callable[..., Any], name: str, args: tuple, kwargs: dict) -> None:
        leaves, self.in_spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
        self.fn = fn
        self.name = name
        self.key = f"{name}:{_structure_digest(fn)}"
        self.tensor_positions = [i for i, leaf in enumerate(leaves) if isinstance(leaf, Tensor)]
        self.template = [None if isinstance(leaf, Tensor) else leaf for leaf in leaves]
        self.out_spec: pytree.TreeSpec | None = None
        self.out_meta: list[tuple[tuple[int, ...], torch.dtype, torch.device]] | None = None
        self._home = _home_device(fn)
        self._on_device: dict[torch.device, Callable[..., Any]] = {}
        self._lock = threading.Lock()
        self.handle = -1

    # copies are shared: a deep-copied graph calls the same registered callable
    def __deepcopy__(self, memo: dict) -> PythonCall:
        return self

    def tensors_of(self, args: tuple, kwargs: dict) -> list[Tensor]:
        """The tensors of a call's arguments, in the order the operator takes them."""
        leaves, spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
        if spec != self.in_spec:
            raise ModelError(f"python node {self.name!r} called with another argument structure")
        return [leaves[i] for i in self.tensor_positions]

    def _callable_on(self, device: torch.device | None) -> Callable[..., Any]:
        """``fn``, or a copy of it moved to ``device`` when its tensors live elsewhere (a CUDA
        lane): the model's own module is never moved."""
        if device is None or self._home is None or device == self._home:
            return self.fn
        with self._lock:
            moved = self._on_device.get(device)
            if moved is None:
                moved = copy.deepcopy(self.fn).to(device)
                self._on_device[device] = moved
            return moved

    def __call__(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        if len(inputs) != len(self.tensor_positions):
            raise ExecutionError(
                f"python node {self.name!r} takes {len(self.tensor_positions)} tensors, "
                f"got {len(inputs)}"
            )
        leaves = list(self.template)
        for position, tensor in zip(self.tensor_positions, inputs, strict=True):
            leaves[position] = tensor
        args, kwargs = pytree.tree_unflatten(leaves, self.in_spec)
        fn = self._callable_on(inputs[0].device if inputs else None)
        try:
            result = fn(*args, **kwargs)
        except (RuntimeError, ChrionError):
            raise
        except Exception as exc:  # a profiler or executor counts RuntimeErrors as failures
            raise ExecutionError(
                f"python node {self.name!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
        outputs, spec = pytree.tree_flatten(result)
        kinds = sorted({type(o).__name__ for o in outputs if not isinstance(o, Tensor)})
        if kinds:
            raise UnsupportedOperatorError(
                f"python node {self.name!r} returns {', '.join(kinds)} values; a graph node "
                "can only return tensors (ONNX sequences and optionals are not supported here)",
                ops=[self.name],
            )
        if self.out_spec is None:
            self.out_spec = spec
            self.out_meta = [(tuple(o.shape), o.dtype, o.device) for o in outputs]
        elif len(outputs) != len(self.out_meta or ()):
            raise ExecutionError(
                f"python node {self.name!r} returned {len(outputs)} tensors, "
                f"{len(self.out_meta or ())} when it was captured"
            )
        return _unaliased(outputs, inputs)

    def unflatten(self, outputs: Sequence[Tensor]) -> Any:
        """The callable's return value rebuilt from the operator's flat outputs."""
        if self.out_spec is None:
            raise ExecutionError(f"python node {self.name!r} has not run yet")
        return pytree.tree_unflatten(list(outputs), self.out_spec)


def _unaliased(outputs: list[Tensor], inputs: Sequence[Tensor]) -> list[Tensor]:
    """Outputs that alias an input or an earlier output are cloned: an operator's outputs are
    fresh tensors (an If branch may return an outer value as it is)."""
    fresh: list[Tensor] = []
    for out in outputs:
        if any(shares_memory(out, t) for t in (*inputs, *fresh)):
            out = out.clone()
        fresh.append(out)
    return fresh


def register(call: PythonCall) -> int:
    """Give ``call`` a handle in the process registry (held weakly: keep ``call`` alive)."""
    with _REGISTRY_LOCK:
        handle = next(_HANDLES)
        _REGISTRY[handle] = call
    call.handle = handle
    return handle


def lookup(handle: int) -> PythonCall:
    """The PythonCall registered under ``handle``.

    Raises:
        ExecutionError: no live callable has that handle (the graph that owned it was freed).
    """
    call = _REGISTRY.get(int(handle))
    if call is None:
        raise ExecutionError(
            f"chrion::python_call handle {handle} names no live callable: the graph that "
            "owned it was freed"
        )
    return call


def registered_count() -> int:
    """How many PythonCalls are alive in the registry (for leak checks)."""
    return len(_REGISTRY)


def _python_call(handle: int, inputs: list[Tensor]) -> list[Tensor]:
    return lookup(handle)(inputs)


def _python_call_fake(handle: int, inputs: list[Tensor]) -> list[Tensor]:
    call = lookup(handle)
    if call.out_meta is None:
        raise ExecutionError(f"python node {call.name!r}: output shapes unknown before a run")
    device = inputs[0].device if inputs else None
    return [
        torch.empty(shape, dtype=dtype, device=device or recorded)
        for shape, dtype, recorded in call.out_meta
    ]


@functools.cache
def register_operator() -> Any:
    """Define ``chrion::python_call`` and its fake kernel (once per process)."""
    op = torch.library.custom_op(
        "chrion::python_call",
        _python_call,
        mutates_args=(),
        schema="(int handle, Tensor[] inputs) -> Tensor[]",
    )
    op.register_fake(_python_call_fake)
    return torch.ops.chrion.python_call.default


def python_call_op() -> Any:
    """The ``OpOverload`` ``torch.ops.chrion.python_call.default`` (defined on first use)."""
    return register_operator()


def is_python_call(node: fx.Node) -> bool:
    """Whether ``node`` calls ``chrion::python_call``."""
    return node.op == "call_function" and node.target is python_call_op()
