"""The public entry points: ``load_onnx`` and ``compile_graph``."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .errors import ModelError, OptionError
from .inputs import DECLARED_INPUTS, declared_onnx_inputs
from .module import ChrionModule, compile_graph
from .settings import ChrionSettings

__all__ = ["ChrionModule", "compile_graph", "compile_onnx", "example_inputs_for", "load_onnx"]

# The most bytes example_inputs_for allocates for one input. Past it, a declared shape is a
# mistake (2**40 elements is 4 TiB of float32) or a model too large to plan from declared
# shapes alone; either way the caller passes example inputs of the size meant.
EXAMPLE_INPUT_BYTES_LIMIT = 2**32


def check_shape(name: str, dims: Sequence[int | str | None] | None, shape: Sequence[int]) -> None:
    """OptionError unless ``shape`` fits input ``name`` declared with ``dims``: the same rank,
    positive sizes, the declared size wherever one is fixed (any rank when ``dims`` is None)."""
    if dims is None:
        dims = [None] * len(shape)
    fits = len(shape) == len(dims) and all(
        isinstance(s, int) and s > 0 and (not isinstance(d, int) or d == s)
        for s, d in zip(shape, dims, strict=False)
    )
    if not fits:
        raise OptionError(
            f"input {name!r} is declared with shape {_dims_text(dims)}, got {list(shape)}: give "
            "positive sizes, one per declared dimension, equal to the fixed ones"
        )


def _dims_text(dims: Sequence[int | str | None]) -> list[int | str]:
    """Declared dimensions as shown in messages: a size, a symbolic name, or "?" (unnamed)."""
    return ["?" if d is None else d for d in dims]


def example_inputs_for(
    model: Any, shapes: Mapping[str, Sequence[int]] | None = None
) -> tuple[torch.Tensor, ...]:
    """Inputs of the shapes and dtypes an ONNX model declares (seeded random floats, zero
    integers); ``shapes`` gives or overrides the shape of inputs by name.

    Raises:
        OptionError: ``shapes`` names an input the model does not have, or gives a shape that
            does not fit its declaration (rank, positive sizes, fixed sizes) or one past
            :data:`EXAMPLE_INPUT_BYTES_LIMIT`.
        ModelError: inputs with symbolic dimensions and no shape given, every one named; a
            declared negative dimension; a declared shape past
            :data:`EXAMPLE_INPUT_BYTES_LIMIT` (checked before anything is allocated).
    """
    shapes = dict(shapes or {})
    declared = declared_onnx_inputs(model).specs
    unknown = sorted(set(shapes) - {spec.name for spec in declared})
    if unknown:
        raise OptionError(
            f"shapes given for unknown inputs {unknown}; the model's inputs are "
            f"{[spec.name for spec in declared]}"
        )
    generator = torch.Generator().manual_seed(0)
    inputs, symbolic = [], []
    for spec in declared:
        name, dtype, dims = spec.name, spec.dtype, spec.dims
        if dtype is None:
            raise ModelError(f"input {name!r} declares no element type")
        if name in shapes:
            check_shape(name, dims, shapes[name])
            dims = tuple(shapes[name])
        if dims is None or not all(isinstance(d, int) for d in dims):
            shown = _dims_text(dims) if dims is not None else "(rank not declared)"
            symbolic.append(f"{name} {shown}")
            continue
        _check_example_dims(name, list(dims), dtype, given=name in shapes)
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
    declared = declared_onnx_inputs(proto)  # what every call is checked against
    if example_inputs is None:
        example_inputs = example_inputs_for(proto)
    declared.check(tuple(example_inputs))  # before conversion reads their shapes
    # the example shapes give the rank of values shape inference cannot tell from the model
    tensors = all(isinstance(x, torch.Tensor) for x in example_inputs)
    example_shapes = [tuple(x.shape) for x in example_inputs] if tensors else None
    gm = chrion_onnx.to_fx(proto, example_shapes=example_shapes)
    gm.meta[DECLARED_INPUTS] = declared
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
