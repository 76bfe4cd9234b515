"""What a compiled model accepts, checked at every call before anything is captured or run.

A ChrionModule checks each call's inputs against its ``InputSignature``: how many there are, and
for each its kind (a tensor, or a Python number where Dynamo passes one), dtype, rank and the
sizes that are fixed. A wrong input is a ``ModelError`` naming the input, what was expected and
what was given (onnxruntime's checks are the model), raised before a new shape is captured and
profiled, so one bad call costs nothing and leaves the module as it was.

Where the expectations come from:
- an ONNX model's declared inputs (``declared_onnx_inputs``; ``load_onnx`` stores them in the
  GraphModule's ``meta``): dtype, rank and every static dimension;
- the example inputs, for what nothing declares: dtype and rank;
- the example's captured graph (``with_recurrent_sizes``): the feature size of each input that
  a recurrent layer reads (directly, or through pointwise ops, transposes and slices of other
  dimensions), and the layer and hidden sizes of initial states. The layer's weights fix those
  sizes; fed another size, the recurrent kernels would read past the weights (all-NaN or
  finite garbage) instead of failing.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import fx

from .errors import ModelError

# The key of GraphModule.meta under which load_onnx stores the model's declared inputs.
DECLARED_INPUTS = "chrion_declared_inputs"

_RECURRENT_OPS = ("lstm", "gru", "rnn")
_STATE_ARGUMENTS = (("h0", "h0's hidden size"), ("c0", "c0's hidden size"))
# ops that keep every element where it was: a size fixed on their output is fixed on their input
_SAME_LAYOUT_OPS = ("_to_copy", "clone", "alias", "detach", "lift_fresh_copy")


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What one input must be.

    Attributes:
        name: the input's name (the ONNX input name, or the forward argument's).
        kind: ``torch.Tensor``, or the Python number type Dynamo passes (int, float, bool).
        dtype: the tensor's dtype; None accepts any.
        dims: one entry per dimension: its name or None where any size is accepted, an int
            where only that size is; None when any rank is accepted.
        reasons: why a fixed size is fixed, by dimension (for the message).
    """

    name: str
    kind: type = torch.Tensor
    dtype: torch.dtype | None = None
    dims: tuple[int | str | None, ...] | None = None
    reasons: Mapping[int, str] = dataclasses.field(default_factory=dict)
    # (dimension, size) of every fixed dimension, derived from dims (read on every call)
    fixed: tuple[tuple[int, int], ...] = dataclasses.field(init=False, default=())

    def __post_init__(self) -> None:
        fixed = tuple((i, d) for i, d in enumerate(self.dims or ()) if isinstance(d, int))
        object.__setattr__(self, "fixed", fixed)

    def shape_text(self) -> str:
        if self.dims is None:
            return "any shape"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.dims) + "]"

    def describe(self) -> str:
        if self.kind is not torch.Tensor:
            return f"a Python {self.kind.__name__}"
        dtype = str(self.dtype).removeprefix("torch.") if self.dtype is not None else "any dtype"
        return f"{dtype} {self.shape_text()}"


def _fits(spec: InputSpec, value: Any) -> bool:
    """Whether ``value`` is a plain tensor that fits ``spec`` (the fast path of every call)."""
    if type(value) is not torch.Tensor or spec.kind is not torch.Tensor or value.is_meta:
        return False
    if spec.dtype is not None and value.dtype != spec.dtype:
        return False
    if spec.dims is None:
        return True
    shape = value.shape
    if len(shape) != len(spec.dims):
        return False
    for dim, size in spec.fixed:
        if shape[dim] != size:
            return False
    return True


def _problems(spec: InputSpec, value: Any) -> list[str]:
    """Everything wrong with ``value`` as ``spec``'s input (empty when it fits)."""
    name = f"input '{spec.name}'"
    if spec.kind is not torch.Tensor:
        if isinstance(value, spec.kind) and not isinstance(value, torch.Tensor):
            return []
        return [f"{name} must be a Python {spec.kind.__name__}, got {type(value).__name__}"]
    if not isinstance(value, torch.Tensor):
        kind = f"{type(value).__module__}.{type(value).__name__}".removeprefix("builtins.")
        hint = {
            "numpy.ndarray": "torch.from_numpy(array)",
            "list": "torch.tensor(values)",
            "tuple": "torch.tensor(values)",
        }.get(kind, "torch.as_tensor(value)")
        return [f"{name} is a {kind}, not a torch.Tensor: pass a tensor ({hint})"]
    if value.is_meta:
        return [
            f"{name} is a meta tensor (a shape without data): pass a tensor with data, on the "
            "CPU or a GPU"
        ]
    problems = []
    if spec.dtype is not None and value.dtype != spec.dtype:
        problems.append(f"{name} has dtype {value.dtype}, expected {spec.dtype}")
    if spec.dims is None:
        return problems
    given = tuple(value.shape)
    if len(given) != len(spec.dims):
        return problems + [
            f"{name} has rank {len(given)} (shape {given}), expected rank {len(spec.dims)} "
            f"(shape {spec.shape_text()})"
        ]
    for dim, size in spec.fixed:
        if given[dim] != size:
            reason = spec.reasons.get(dim, "declared by the model")
            problems.append(
                f"{name} has size {given[dim]} in dimension {dim} (shape {given}), expected "
                f"{size} ({reason})"
            )
    return problems


@dataclasses.dataclass(frozen=True)
class InputSignature:
    """The inputs a compiled model takes, in order; ``check`` refuses any other call."""

    specs: tuple[InputSpec, ...]

    def check(self, inputs: Sequence[Any]) -> None:
        """Raise ModelError unless ``inputs`` fit; cheap when they do (every call runs it)."""
        if len(inputs) == len(self.specs) and all(map(_fits, self.specs, inputs)):
            return
        self._refuse(inputs)

    def _refuse(self, inputs: Sequence[Any]) -> None:
        expected = ", ".join(f"{s.name}: {s.describe()}" for s in self.specs)
        if len(inputs) != len(self.specs):
            raise ModelError(
                f"the model takes {len(self.specs)} input(s) ({expected}), got {len(inputs)}"
            )
        problems = [
            p for spec, v in zip(self.specs, inputs, strict=True) for p in _problems(spec, v)
        ]
        if problems:
            raise ModelError("; ".join(problems) + f". The model takes {expected}.")

    @classmethod
    def of(cls, model: torch.nn.Module, example_inputs: Sequence[Any]) -> InputSignature:
        """The model's declared inputs (ONNX) completed by what the example inputs show, after
        checking the example inputs against them.

        Raises:
            ModelError: an example input that is not a fit (named, as ``check`` does).
        """
        declared = _declared(model)
        names = [s.name for s in declared] if declared else _input_names(model, example_inputs)
        if declared is None:  # a Dynamo graph's size inputs are numbers: the example says which
            declared = [
                _from_example(InputSpec(name), x) if _is_number(x) else InputSpec(name)
                for name, x in zip(names, example_inputs, strict=True)
            ]
        elif len(declared) != len(example_inputs):
            InputSignature(tuple(declared))._refuse(example_inputs)
        # the example is checked against what is declared before it completes the signature
        InputSignature(tuple(declared)).check(example_inputs)
        return cls(
            tuple(_from_example(s, x) for s, x in zip(declared, example_inputs, strict=True))
        )

    def with_recurrent_sizes(self, gm: fx.GraphModule) -> InputSignature:
        """This signature with the sizes the recurrent layers of ``gm`` (the example's captured
        graph, annotated) fix on the inputs."""
        specs = list(self.specs)
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        for node, dim, size, reason in _recurrent_sizes(gm):
            index = placeholders.index(node)
            spec = specs[index]
            if spec.dims is None or spec.kind is not torch.Tensor:
                continue
            if dim in dict(spec.fixed):
                continue  # declared static already: its reason is the model's declaration
            dims = list(spec.dims)
            dims[dim] = size
            reasons = {**spec.reasons, dim: reason}
            specs[index] = dataclasses.replace(spec, dims=tuple(dims), reasons=reasons)
        return InputSignature(tuple(specs))


def _declared(model: torch.nn.Module) -> list[InputSpec] | None:
    meta = getattr(model, "meta", None)
    declared = meta.get(DECLARED_INPUTS) if isinstance(meta, dict) else None
    return list(declared.specs) if declared is not None else None


def _input_names(model: torch.nn.Module, example_inputs: Sequence[Any]) -> list[str]:
    if isinstance(model, fx.GraphModule):
        names = [n.name for n in model.graph.nodes if n.op == "placeholder"]
    else:
        try:
            parameters = inspect.signature(model.forward).parameters.values()
        except (TypeError, ValueError):
            parameters = []
        names = [
            p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    if len(names) != len(example_inputs):
        names = [f"input {i}" for i in range(len(example_inputs))]
    return names


def _is_number(value: Any) -> bool:
    return isinstance(value, (bool, int, float, torch.SymInt, torch.SymFloat, torch.SymBool))


def _from_example(spec: InputSpec, example: Any) -> InputSpec:
    if _is_number(example):
        kind = {torch.SymInt: int, torch.SymFloat: float, torch.SymBool: bool}.get(
            type(example), type(example)
        )
        return dataclasses.replace(spec, kind=kind, dtype=None, dims=None)
    dtype = spec.dtype if spec.dtype is not None else example.dtype
    dims = spec.dims if spec.dims is not None else (None,) * example.dim()
    return dataclasses.replace(spec, dtype=dtype, dims=dims)


def declared_onnx_inputs(proto: Any) -> InputSignature:
    """The inputs an ONNX ModelProto declares (graph inputs that are not initializers): dtype
    where declared, rank where a shape is declared, and each dimension's ``dim_value`` (fixed)
    or ``dim_param`` (free)."""
    from .onnx.converters._dtypes import torch_dtype

    initializers = {i.name for i in proto.graph.initializer}
    specs = []
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dtype = torch_dtype(tensor_type.elem_type) if tensor_type.elem_type else None
        dims = None
        if tensor_type.HasField("shape"):
            dims = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in tensor_type.shape.dim
            )
        specs.append(InputSpec(value.name, dtype=dtype, dims=dims))
    return InputSignature(tuple(specs))


def _recurrent_sizes(gm: fx.GraphModule) -> list[tuple[fx.Node, int, int, str]]:
    """(placeholder, dimension, size, reason) for every input size a recurrent node fixes."""
    found = []
    for node in gm.graph.nodes:
        target = node.target
        if not (
            isinstance(target, torch._ops.OpOverload)
            and target.namespace == "chrion"
            and target._schema.name.split("::")[-1] in _RECURRENT_OPS
        ):
            continue
        bound = dict(zip((a.name for a in target._schema.arguments), node.args, strict=False))
        starts = []
        for argument, what in (("input", "the input size"), *_STATE_ARGUMENTS):
            value = bound.get(argument)
            if isinstance(value, fx.Node) and "val" in value.meta:  # a graph not annotated: none
                last = value.meta["val"].dim() - 1
                starts += [(value, last, what)]
                if argument != "input":
                    starts += [(value, 0, f"{argument}'s layer count")]
        for start, dim, what in starts:
            origin = _origin(start, dim)
            if origin is not None:
                size = start.meta["val"].shape[dim]
                reason = f"{what} that the weights of recurrent node {node.name} fix"
                found.append((*origin, size, reason))
    return found


def _origin(node: fx.Node, dim: int) -> tuple[fx.Node, int] | None:
    """The placeholder and dimension whose size is ``node``'s size in ``dim``, when ops that
    move or keep elements (never resize that dimension) are all that lie between them."""
    aten = torch.ops.aten
    while node.op != "placeholder":
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            return None
        data = [n for n in node.all_input_nodes if n.op != "get_attr"]
        if len(data) != 1 or "val" not in data[0].meta:
            return None  # no input, or several: which one fixes the size is not ours to say
        source = data[0]
        rank = source.meta["val"].dim()
        if node.target is aten.permute.default:
            dim = node.args[1][dim] % rank
        elif node.target is aten.transpose.int:
            a, b = node.args[1] % rank, node.args[2] % rank
            dim = b if dim == a else a if dim == b else dim
        elif node.target is aten.slice.Tensor:
            if (node.args[1] if len(node.args) > 1 else 0) % rank == dim:
                return None
        elif _keeps_layout(node):
            if tuple(source.meta["val"].shape) != tuple(node.meta["val"].shape):
                return None  # broadcast
        else:
            return None
        node = source
    return node, dim


def _keeps_layout(node: fx.Node) -> bool:
    target = node.target
    return (
        torch.Tag.pointwise in target.tags
        or target._schema.name.split("::")[-1] in _SAME_LAYOUT_OPS
    )
