"""The public entry points: ``load_onnx`` and ``compile_graph``."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .errors import ModelError, OptionError
from .module import ChrionModule, compile_graph
from .settings import ChrionSettings

__all__ = ["ChrionModule", "compile_graph", "compile_onnx", "example_inputs_for", "load_onnx"]

# The most bytes example_inputs_for allocates for one input. Past it, a declared shape is a
# mistake (2**40 elements is 4 TiB of float32) or a model too large to plan from declared
# shapes alone; either way the caller passes example inputs of the size meant.
EXAMPLE_INPUT_BYTES_LIMIT = 2**32


def example_inputs_for(
    model: Any, shapes: Mapping[str, Sequence[int]] | None = None
) -> tuple[torch.Tensor, ...]:
    """Inputs of the shapes and dtypes an ONNX model declares (seeded random floats, zero
    integers); ``shapes`` gives or overrides the shape of inputs by name.

    Raises:
        OptionError: ``shapes`` names an input the model does not have, or gives a negative
            dimension or one past :data:`EXAMPLE_INPUT_BYTES_LIMIT`.
        ModelError: inputs with symbolic dimensions and no shape given, every one named; a
            declared negative dimension; a declared shape past
            :data:`EXAMPLE_INPUT_BYTES_LIMIT` (checked before anything is allocated).
    """
    import numpy as np
    from onnx.helper import tensor_dtype_to_np_dtype

    shapes = dict(shapes or {})
    initializers = {i.name for i in model.graph.initializer}
    declared = [v for v in model.graph.input if v.name not in initializers]
    unknown = sorted(set(shapes) - {v.name for v in declared})
    if unknown:
        raise OptionError(
            f"shapes given for unknown inputs {unknown}; the model's inputs are "
            f"{[v.name for v in declared]}"
        )
    generator = torch.Generator().manual_seed(0)
    inputs, symbolic = [], []
    for value in declared:
        tensor_type = value.type.tensor_type
        dims = shapes.get(value.name) or [
            d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim
        ]
        if None in dims:
            symbolic.append(f"{value.name} {[d.dim_param or '?' for d in tensor_type.shape.dim]}")
            continue
        dtype = torch.from_numpy(
            np.zeros(1, dtype=tensor_dtype_to_np_dtype(tensor_type.elem_type))
        ).dtype
        _check_example_dims(value.name, list(dims), dtype, given=value.name in shapes)
        if dtype.is_floating_point:
            inputs.append(torch.randn(list(dims), generator=generator).to(dtype))
        else:
            inputs.append(torch.zeros(list(dims), dtype=dtype))
    if symbolic:
        raise ModelError(
            "the model has inputs with symbolic dimensions, so example inputs (or shapes) are "
            f"needed: {'; '.join(symbolic)}"
        )
    return tuple(inputs)


def _check_example_dims(name: str, dims: list[int], dtype: torch.dtype, given: bool) -> None:
    """Refuse a shape no example input should be made of, naming the input and the dim."""
    error = OptionError if given else ModelError
    source = "the shape given for" if given else "the declared shape of"
    for axis, size in enumerate(dims):
        if int(size) < 0:
            raise error(f"{source} input {name!r} {dims} has a negative dimension {axis}")
    nbytes = math.prod(int(d) for d in dims) * dtype.itemsize
    if nbytes > EXAMPLE_INPUT_BYTES_LIMIT:
        largest = max(range(len(dims)), key=lambda axis: int(dims[axis]))
        raise error(
            f"{source} input {name!r} {dims} needs {nbytes / 2**30:.3g} GiB "
            f"(dimension {largest} is {dims[largest]}), more than the "
            f"{EXAMPLE_INPUT_BYTES_LIMIT / 2**30:.3g} GiB an example input is made of here; "
            "pass example_inputs (or shapes) of the size the model is served at"
        )


def load_onnx(
    model: str | os.PathLike | bytes | Any,
    *,
    example_inputs: Sequence[torch.Tensor] | None = None,
    objective: str = "latency",
    slo_ms: float | None = None,
    devices: Sequence[str] | None = None,
    plan: Any | None = None,
    cache_dir: str | None = None,
    recorded_profile: Any | None = None,
    **options: Any,
) -> ChrionModule:
    """Load an ONNX model and place it over the CPU and GPU lanes.

    Args:
        model: a path, the bytes of a model, or an onnx.ModelProto.
        example_inputs: inputs of the shapes to plan for; required when an input has symbolic
            dimensions. Other shapes are planned on first use (see ChrionModule).
        objective: "latency" or "memory" (least GPU memory within ``slo_ms``).
        slo_ms: the latency objective in milliseconds.
        devices: lanes such as ["cpu", "cuda:0"] or ["cpu:0", "cpu:1"]; default cpu (+ cuda:0).
        plan: a Plan, or the path of one saved with ``plan.save``: skips profiling and
            scheduling.
        cache_dir: where profiles are cached.
        recorded_profile: a Profile (or its path) recorded on the target machine, used for
            lanes absent here.
        **options: any other ChrionSettings field (granularity, seq_chunks, cpu_threads, ...).
    """
    settings = ChrionSettings.from_options(
        options,
        objective=objective,
        slo_ms=slo_ms,
        devices=tuple(devices) if devices is not None else None,
        cache_dir=cache_dir,
    )
    return compile_onnx(
        model, example_inputs, settings, plan=plan, recorded_profile=recorded_profile
    )


def compile_onnx(
    model: str | os.PathLike | bytes | Any,
    example_inputs: Sequence[torch.Tensor] | None,
    settings: ChrionSettings,
    *,
    plan: Any | None = None,
    recorded_profile: Any | None = None,
) -> ChrionModule:
    """``load_onnx`` with its options already gathered in ``settings`` (the CLI's entry)."""
    from . import onnx as chrion_onnx
    from .profile import Profile
    from .schedule import Plan

    proto = chrion_onnx.load_model(model)
    if example_inputs is None:
        example_inputs = example_inputs_for(proto)
    # the example shapes give the rank of values shape inference cannot tell from the model
    tensors = all(isinstance(x, torch.Tensor) for x in example_inputs)
    example_shapes = [tuple(x.shape) for x in example_inputs] if tensors else None
    gm = chrion_onnx.to_fx(proto, example_shapes=example_shapes)
    if isinstance(plan, (str, os.PathLike)):
        plan = Plan.load(plan)
    if isinstance(recorded_profile, (str, os.PathLike)):
        recorded_profile = Profile.load(recorded_profile)
    from .session import onnx_node_args

    module = compile_graph(
        gm, tuple(example_inputs), settings, plan=plan, recorded_profile=recorded_profile
    )
    module._node_args = onnx_node_args(proto)  # names and types for inputs by name, run, metadata
    return module
