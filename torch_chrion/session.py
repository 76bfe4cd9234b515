"""The onnxruntime habits on a ChrionModule: numpy in and out, inputs by name, ``run`` and
input/output metadata, the way ``onnxruntime.InferenceSession`` offers them.

    y = model(features=x)                         # numpy in, numpy out; or torch in, torch out
    (y,) = model.run(None, {"features": x})       # onnxruntime's run(output_names, input_feed)
    [(a.name, a.shape, a.type) for a in model.get_inputs()]   # like onnxruntime's NodeArg

The names and declared types come from the ONNX graph (``load_onnx``); a module compiled from
an nn.Module takes its input names from ``forward``'s parameters and has no metadata.

A ChrionModule owns running lane threads and cannot be pickled; ``torch_chrion.package`` and
``torch_chrion.load_package`` are the way to persist it (see :data:`PERSIST_HINT`).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .errors import ModelError, NotPicklableError

PERSIST_HINT = (
    "save it with torch_chrion.package(model_or_onnx_path, example_inputs, 'dir') and start "
    "it again with torch_chrion.load_package('dir'), or keep its plan (model.plan.save("
    "'model.plan.json')) and pass plan='model.plan.json' to load_onnx"
)


@dataclasses.dataclass(frozen=True)
class NodeArg:
    """An input or output as onnxruntime's ``NodeArg`` describes it.

    Attributes:
        name: the ONNX value name.
        shape: one entry per dimension: an int, the symbolic name (``dim_param``) as a str, or
            None where the model says nothing.
        type: onnxruntime's type string, e.g. ``"tensor(float)"``.
        dtype: the numpy dtype of ``type``.
    """

    name: str
    shape: list[int | str | None]
    type: str
    dtype: np.dtype


def onnx_node_args(proto: Any) -> tuple[list[NodeArg], list[NodeArg]]:
    """The inputs (initializers excluded) and outputs of an ONNX model, as NodeArgs."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    def node_arg(value: Any) -> NodeArg:
        tensor = value.type.tensor_type
        shape: list[int | str | None] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in tensor.shape.dim
        ]
        type_name = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
        return NodeArg(
            value.name, shape, f"tensor({type_name})", tensor_dtype_to_np_dtype(tensor.elem_type)
        )

    initializers = {i.name for i in proto.graph.initializer}
    inputs = [node_arg(v) for v in proto.graph.input if v.name not in initializers]
    return inputs, [node_arg(v) for v in proto.graph.output]


class SessionMixin:
    """onnxruntime's calling habits for ChrionModule (see the module docstring)."""

    model: torch.nn.Module
    _node_args: tuple[list[NodeArg], list[NodeArg]] | None = None

    def get_inputs(self) -> list[NodeArg]:
        """The model's inputs in call order (ONNX models only)."""
        return list(self._metadata()[0])

    def get_outputs(self) -> list[NodeArg]:
        """The model's outputs in return order (ONNX models only)."""
        return list(self._metadata()[1])

    def run(
        self,
        output_names: Sequence[str] | None,
        input_feed: Mapping[str, Any],
        run_options: None = None,
    ) -> list[np.ndarray]:
        """onnxruntime's ``InferenceSession.run``: the outputs named (all if None), as numpy
        arrays, for inputs fed by name.

        Raises:
            ModelError: an unknown, missing or mistyped input, or an unknown output name.
        """
        if run_options is not None:
            raise ModelError("run_options is not supported: torch_chrion has no run options")
        outputs = self.get_outputs()
        names = [o.name for o in outputs]
        wanted = list(output_names) if output_names is not None else names
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise ModelError(f"unknown output name(s) {unknown}; the model's outputs are {names}")
        result = self(**{k: np.asarray(v) for k, v in input_feed.items()})
        values = list(result) if isinstance(result, (tuple, list)) else [result]
        return [values[names.index(n)] for n in wanted]

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise NotPicklableError(
            f"a {type(self).__name__} owns running lane threads and cannot be pickled or "
            f"deep-copied; to persist it, {PERSIST_HINT}"
        )

    # -- used by ChrionModule.forward --------------------------------------------------------
    def _session_inputs(self, inputs: tuple, named: Mapping[str, Any]) -> tuple[tuple, bool]:
        """(torch inputs in call order, whether to answer in numpy): named inputs are put in
        order, numpy arrays become tensors (shared memory), checked against the declared types
        where the model declares them."""
        if named:
            inputs = self._ordered(inputs, named)
        as_numpy = any(isinstance(x, np.ndarray) for x in inputs)
        if as_numpy:
            declared = self._node_args[0] if self._node_args else None
            inputs = tuple(
                _to_tensor(x, declared[k] if declared else None) for k, x in enumerate(inputs)
            )
        return inputs, as_numpy

    def _ordered(self, inputs: tuple, named: Mapping[str, Any]) -> tuple:
        names = self._input_names()
        unknown = sorted(set(named) - set(names))
        twice = sorted(set(named) & set(names[: len(inputs)]))
        missing = [n for n in names[len(inputs) :] if n not in named]
        if unknown or twice or missing:
            raise ModelError(
                f"the model takes inputs {names}; "
                + "; ".join(
                    f"{what} {which}"
                    for what, which in (
                        ("unknown", unknown),
                        ("given twice", twice),
                        ("missing", missing),
                    )
                    if which
                )
            )
        return tuple(inputs) + tuple(named[n] for n in names[len(inputs) :])

    def _input_names(self) -> list[str]:
        if self._node_args is not None:
            return [a.name for a in self._node_args[0]]
        parameters = inspect.signature(self.model.forward).parameters.values()
        return [
            p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]

    def _metadata(self) -> tuple[list[NodeArg], list[NodeArg]]:
        if self._node_args is None:
            raise ModelError(
                "input/output metadata is known for ONNX models only (torch_chrion.load_onnx); "
                "this module was compiled from an nn.Module"
            )
        return self._node_args


def _to_tensor(value: Any, declared: NodeArg | None) -> Any:
    if not isinstance(value, np.ndarray):
        return value
    if declared is not None:
        if value.dtype != declared.dtype:
            raise ModelError(
                f"input {declared.name!r} must be {declared.type} ({declared.dtype}), got "
                f"{value.dtype}"
            )
        fixed = [d if isinstance(d, int) else None for d in declared.shape]
        if value.ndim != len(fixed) or any(
            want is not None and got != want for got, want in zip(value.shape, fixed, strict=True)
        ):
            raise ModelError(
                f"input {declared.name!r} must have shape {declared.shape}, got {list(value.shape)}"
            )
    if not value.flags.writeable:  # torch.from_numpy warns on read-only memory
        value = value.copy()
    return torch.from_numpy(np.ascontiguousarray(value))


def to_numpy(result: Any) -> Any:
    """Tensors of a result (a tensor, or a tuple/list of them) as numpy arrays."""
    if isinstance(result, torch.Tensor):
        return result.detach().cpu().numpy()
    if isinstance(result, (tuple, list)):
        return type(result)(to_numpy(r) for r in result)
    return result
