"""ServedModel: what a server runs. It checks request tensors against the model's inputs,
groups requests into batches and splits the answers back, whatever the server around it.

Batching concatenates requests along the batch axis, and pads the batch with zero rows up to a
power of two (rows of a batch are independent, so this is exact), which bounds the number of
shapes the model is built for. Requests of different lengths share a batch only when the graph
proves the model causal in time (graph/time_causal.py: every output step depends on input steps
up to it, as through unidirectional recurrent layers and per-frame layers): then requests whose
lengths fall in one power-of-two bucket are padded at the end to the longest of them, and each
answer is cut back to its own length, which leaves it what the unpadded call gives. Any other
model (a bidirectional layer, pooling over time, ...) computes something else on a padded
sequence, so there only requests of equal shapes share a batch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .protocol import DATATYPES, RequestError, datatype_of

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, dtype and shape (None where any size is taken)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "datatype": datatype_of(self.dtype),
            "shape": [-1 if d is None else d for d in self.shape],
        }


Result = list[np.ndarray] | BaseException


@dataclasses.dataclass(frozen=True)
class TimeAxes:
    """Where a model causal in time takes and gives its steps: per input and per output the
    axis of its steps, None for one without (graph/time_causal.py proved it)."""

    inputs: tuple[int | None, ...]
    outputs: tuple[int | None, ...]


def _length_bucket(length: int) -> int:
    """Requests whose lengths share a bucket may be padded to a common length."""
    return 1 << (length - 1).bit_length()


def _numpy_dtype(name: str) -> np.dtype:
    return torch.empty((), dtype=getattr(torch, name)).numpy().dtype


class ServedModel:
    """A model behind the Open Inference Protocol.

    Args:
        call: runs the model on torch tensors (in input order); returns a tensor or a tuple/list
            of tensors.
        inputs, outputs: the tensor specs; outputs' shapes are informative.
        batch_axis: the axis requests are batched along (every input and output), or None.
        warmup_inputs: inputs run once before the server says it is ready.
        slo_ms: the latency objective of the plan, if it has one.
        resources: CPU cores and GPUs the plan uses ({"num_cpus": .., "num_gpus": ..}).
        time_axes: the model is causal in time along these axes (``time_axes_of``): requests
            of lengths in one bucket may share a padded batch. None: only equal shapes do.
    """

    def __init__(
        self,
        call: Callable[..., Any],
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        *,
        batch_axis: int | None = None,
        warmup_inputs: Sequence[Sequence[np.ndarray]] = (),
        slo_ms: float | None = None,
        resources: dict[str, float] | None = None,
        time_axes: TimeAxes | None = None,
    ) -> None:
        self.call = call
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.batch_axis = batch_axis
        self.warmup_inputs = [tuple(w) for w in warmup_inputs]
        self.slo_ms = slo_ms
        self.resources = resources or {"num_cpus": 1, "num_gpus": 0}
        self.time_axes = time_axes if batch_axis is not None else None

    # -- requests ---------------------------------------------------------------------------
    def check(self, given: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        """The request's arrays in input order.

        Raises:
            RequestError: an unknown or missing input, or a wrong dtype or shape, naming it.
        """
        names = [spec.name for spec in self.inputs]
        unknown = sorted(set(given) - set(names))
        missing = [n for n in names if n not in given]
        if unknown or missing:
            raise RequestError(
                f"the model takes inputs {names}; unknown {unknown}, missing {missing}"
            )
        arrays = []
        for spec in self.inputs:
            array = given[spec.name]
            if array.dtype != spec.dtype:
                raise RequestError(
                    f"input {spec.name!r} must be {datatype_of(spec.dtype)}, got "
                    f"{datatype_of(array.dtype)}"
                )
            wrong = array.ndim != len(spec.shape) or any(
                want is not None and got != want
                for got, want in zip(array.shape, spec.shape, strict=False)
            )
            if wrong or 0 in array.shape:
                expected = ", ".join("*" if d is None else str(d) for d in spec.shape)
                raise RequestError(
                    f"input {spec.name!r} must have shape [{expected}] (* = any size > 0), "
                    f"got {list(array.shape)}"
                )
            arrays.append(array)
        return tuple(arrays)

    def _length(self, arrays: Sequence[np.ndarray]) -> int | None:
        """The request's length when it may be padded: its inputs' steps agree."""
        if self.time_axes is None:
            return None
        lengths = {
            a.shape[ax]
            for a, ax in zip(arrays, self.time_axes.inputs, strict=True)
            if ax is not None
        }
        return lengths.pop() if len(lengths) == 1 else None

    def batch_key(self, arrays: Sequence[np.ndarray]) -> tuple:
        """Requests with equal keys can share a batch: equal shapes apart from the batch axis,
        and for a model causal in time apart from a length in the same bucket."""
        axis = self.batch_axis
        length = self._length(arrays)
        time = self.time_axes.inputs if length is not None else (None,) * len(arrays)
        return tuple(
            tuple(
                ("bucket", _length_bucket(d)) if i == t else d
                for i, d in enumerate(a.shape)
                if axis is None or i != axis % a.ndim
            )
            for a, t in zip(arrays, time, strict=True)
        )

    # -- running ----------------------------------------------------------------------------
    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The outputs for one set of inputs."""
        with torch.no_grad():
            result = self.call(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
        leaves = torch.utils._pytree.tree_leaves(result)
        return [t.detach().cpu().numpy() for t in leaves]

    def run_batch(self, requests: Sequence[Sequence[np.ndarray]]) -> list[Result]:
        """Outputs of each request (all with one batch key), run as one batch where possible.
        A failing batch is retried request by request, so an error reaches only its request."""
        if len(requests) == 1 or self.batch_axis is None:
            return [self._run_alone(r) for r in requests]
        axis = self.batch_axis
        lengths = [self._length(r) for r in requests]
        padded_to = max(lengths) if None not in lengths else None
        if padded_to is not None and min(lengths) < padded_to:
            requests = [self._padded(r, padded_to) for r in requests]
        sizes = [r[0].shape[axis] for r in requests]
        total = sum(sizes)
        rows = 1 << (total - 1).bit_length()
        joined = []
        for k in range(len(self.inputs)):
            parts = [r[k] for r in requests]
            if rows > total:
                shape = list(parts[0].shape)
                shape[axis] = rows - total
                parts.append(np.zeros(shape, dtype=parts[0].dtype))
            joined.append(np.concatenate(parts, axis=axis))
        try:
            outputs = self.run(joined)
        except Exception:  # noqa: BLE001 - isolate the request at fault
            _log.warning("a batch of %d failed; running its requests one by one", len(requests))
            return [self._run_alone(r) for r in requests]
        cuts = np.cumsum(sizes)[:-1]
        per_output = [
            np.split(out[(slice(None),) * axis + (slice(0, total),)], cuts, axis=axis)
            for out in outputs
        ]
        answers = [[pieces[i] for pieces in per_output] for i in range(len(requests))]
        if padded_to is not None:
            answers = [self._cut(a, length) for a, length in zip(answers, lengths, strict=True)]
        return answers

    def _padded(self, arrays: Sequence[np.ndarray], length: int) -> list[np.ndarray]:
        """The request padded at the end of its time axes to ``length`` steps (zeros)."""
        padded = []
        for array, axis in zip(arrays, self.time_axes.inputs, strict=True):
            if axis is not None and array.shape[axis] < length:
                widths = [(0, 0)] * array.ndim
                widths[axis] = (0, length - array.shape[axis])
                array = np.pad(array, widths)
            padded.append(array)
        return padded

    def _cut(self, outputs: list[np.ndarray], length: int) -> list[np.ndarray]:
        """Each output cut back to the request's own ``length`` steps."""
        return [
            out if axis is None else out[(slice(None),) * axis + (slice(0, length),)]
            for out, axis in zip(outputs, self.time_axes.outputs, strict=True)
        ]

    def _run_alone(self, arrays: Sequence[np.ndarray]) -> Result:
        try:
            return self.run(arrays)
        except Exception as exc:  # noqa: BLE001 - answered as a 500 for this request
            return exc

    def warmup(self) -> None:
        """Run every warm-up input once (builds each shape's executable before traffic)."""
        for arrays in self.warmup_inputs:
            self.run(arrays)


def time_axes_of(
    module: Any, inputs: Sequence[TensorSpec], batch_axis: int | None
) -> TimeAxes | None:
    """Where ``module`` (a ChrionModule) may be padded in time, or None.

    An input's time axis is its one dynamic axis other than the batch axis (an input with none
    does not vary in time; one with several is not padded). The captured graph must then prove
    every output causal in time along those axes (graph/time_causal.py).
    """
    from ..graph.time_causal import causal_time_axes

    if batch_axis is None:
        return None
    axes: list[int | None] = []
    for spec in inputs:
        batch = batch_axis % len(spec.shape)
        dynamic = [a for a, d in enumerate(spec.shape) if d is None and a != batch]
        if len(dynamic) > 1:
            return None
        axes.append(dynamic[0] if dynamic else None)
    if all(a is None for a in axes):
        return None
    outputs = causal_time_axes(module.captured_graph(), axes)
    if outputs is None:
        return None
    return TimeAxes(tuple(axes), tuple(outputs))


def lane_resources(devices: Sequence[str], cpu_threads: int | None) -> dict[str, float]:
    cpu_lanes = [d for d in devices if d.startswith("cpu")]
    gpus = {d.partition(":")[2] or "0" for d in devices if d.startswith("cuda")}
    return {"num_cpus": max(1, len(cpu_lanes) * (cpu_threads or 1)), "num_gpus": len(gpus)}


def from_package(path: str | os.PathLike, *, strict: bool = False) -> ServedModel:
    """A ServedModel for a package written by ``torch_chrion.package``."""
    from ..artifact import load_package
    from ..module import default_devices

    module = load_package(path, strict=strict)
    manifest = module.manifest
    inputs = [
        TensorSpec(
            i["name"],
            _numpy_dtype(i["dtype"]),
            tuple(None if a in i.get("dynamic_axes", []) else d for a, d in enumerate(i["shape"])),
        )
        for i in manifest["inputs"]
    ]
    outputs = [
        TensorSpec(o["name"], _numpy_dtype(o["dtype"]), tuple(o["shape"]))
        for o in manifest["outputs"]
    ]
    warmup = [
        tuple(
            np.zeros(shape, dtype=_numpy_dtype(dtype))
            for shape, dtype in zip(e["shapes"], e["dtypes"], strict=True)
        )
        for e in manifest["entries"]
    ]
    settings = module.settings
    return ServedModel(
        module,
        inputs,
        outputs,
        batch_axis=manifest["batch_axis"],
        warmup_inputs=warmup,
        slo_ms=module.plan.slo_ms,
        resources=lane_resources(settings.devices or default_devices(), settings.cpu_threads),
        time_axes=time_axes_of(module, inputs, manifest["batch_axis"]),
    )


def from_onnx(
    path: str | os.PathLike,
    *,
    shapes: dict[str, list[int]] | None = None,
    batch_axis: int | None = None,
    **options: Any,
) -> ServedModel:
    """A ServedModel for an ONNX file, planned at start-up (``shapes`` for symbolic inputs)."""
    from .. import onnx as chrion_onnx
    from ..api import compile_onnx, example_inputs_for
    from ..module import default_devices
    from ..settings import ChrionSettings

    proto = chrion_onnx.load_model(Path(path))
    example = example_inputs_for(proto, shapes)
    settings = ChrionSettings.from_options(options)
    module = compile_onnx(proto, example, settings)
    initializers = {i.name for i in proto.graph.initializer}
    declared = [v for v in proto.graph.input if v.name not in initializers]

    def spec(value: Any, dtype: np.dtype) -> TensorSpec:
        dims = value.type.tensor_type.shape.dim
        return TensorSpec(
            value.name, dtype, tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        )

    inputs = [spec(v, x.numpy().dtype) for v, x in zip(declared, example, strict=True)]
    with torch.no_grad():
        results = torch.utils._pytree.tree_leaves(module(*example))
    outputs = [spec(v, y.numpy().dtype) for v, y in zip(proto.graph.output, results, strict=True)]
    return ServedModel(
        module,
        inputs,
        outputs,
        batch_axis=batch_axis,
        warmup_inputs=[tuple(x.numpy() for x in example)],
        slo_ms=module.plan.slo_ms,
        resources=lane_resources(settings.devices or default_devices(), settings.cpu_threads),
        time_axes=time_axes_of(module, inputs, batch_axis),
    )


def load_served(path: str | os.PathLike, **kwargs: Any) -> ServedModel:
    """A package directory or an ONNX file."""
    if Path(path).is_dir():
        return from_package(path, strict=kwargs.pop("strict", False))
    return from_onnx(path, **kwargs)


__all__ = [
    "DATATYPES",
    "ServedModel",
    "TensorSpec",
    "TimeAxes",
    "time_axes_of",
    "from_onnx",
    "from_package",
    "load_served",
]
