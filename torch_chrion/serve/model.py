"""ServedModel: what a server runs. It checks request tensors against the model's inputs,
groups requests into batches and splits the answers back, whatever the server around it.

Batching concatenates requests along the batch axis. It never pads the time axis: without the
true lengths a recurrent layer (a backward direction above all) computes something else on a
padded sequence, so only requests whose shapes are identical apart from the batch axis share a
batch. The batch itself is padded with zero rows up to a power of two (rows of a batch are
independent, so this is exact), which bounds the number of shapes the model is built for.
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
    ) -> None:
        self.call = call
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.batch_axis = batch_axis
        self.warmup_inputs = [tuple(w) for w in warmup_inputs]
        self.slo_ms = slo_ms
        self.resources = resources or {"num_cpus": 1, "num_gpus": 0}

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

    def batch_key(self, arrays: Sequence[np.ndarray]) -> tuple:
        """Requests with equal keys can share a batch: equal shapes apart from the batch axis."""
        axis = self.batch_axis
        return tuple(
            tuple(d for i, d in enumerate(a.shape) if axis is None or i != axis % a.ndim)
            for a in arrays
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
        sizes = [r[0].shape[axis] for r in requests]
        total = sum(sizes)
        padded = 1 << (total - 1).bit_length()
        joined = []
        for k in range(len(self.inputs)):
            parts = [r[k] for r in requests]
            if padded > total:
                shape = list(parts[0].shape)
                shape[axis] = padded - total
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
        return [[pieces[i] for pieces in per_output] for i in range(len(requests))]

    def _run_alone(self, arrays: Sequence[np.ndarray]) -> Result:
        try:
            return self.run(arrays)
        except Exception as exc:  # noqa: BLE001 - answered as a 500 for this request
            return exc

    def warmup(self) -> None:
        """Run every warm-up input once (builds each shape's executable before traffic)."""
        for arrays in self.warmup_inputs:
            self.run(arrays)


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
    )


def load_served(path: str | os.PathLike, **kwargs: Any) -> ServedModel:
    """A package directory or an ONNX file."""
    if Path(path).is_dir():
        return from_package(path, strict=kwargs.pop("strict", False))
    return from_onnx(path, **kwargs)


__all__ = ["DATATYPES", "ServedModel", "TensorSpec", "from_onnx", "from_package", "load_served"]
