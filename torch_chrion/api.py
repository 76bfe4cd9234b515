"""The public entry points: ``load_onnx`` and ``compile_graph``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .errors import ModelError, OptionError
from .module import ChrionModule, compile_graph
from .settings import ChrionSettings

__all__ = ["ChrionModule", "compile_graph", "compile_onnx", "example_inputs_for", "load_onnx"]


def example_inputs_for(
    model: Any, shapes: Mapping[str, Sequence[int]] | None = None
) -> tuple[torch.Tensor, ...]:
    """Inputs of the shapes and dtypes an ONNX model declares (seeded random floats, zero
    integers); ``shapes`` gives or overrides the shape of inputs by name.

    Raises:
        OptionError: ``shapes`` names an input the model does not have.
        ModelError: inputs with symbolic dimensions and no shape given, every one named.
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
    gm = chrion_onnx.to_fx(proto)
    if example_inputs is None:
        example_inputs = example_inputs_for(proto)
    if isinstance(plan, (str, os.PathLike)):
        plan = Plan.load(plan)
    if isinstance(recorded_profile, (str, os.PathLike)):
        recorded_profile = Profile.load(recorded_profile)
    return compile_graph(
        gm, tuple(example_inputs), settings, plan=plan, recorded_profile=recorded_profile
    )
