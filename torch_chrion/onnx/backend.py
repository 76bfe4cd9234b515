"""torch_chrion as an ``onnx.backend.base.Backend``, so ONNX's own backend test suite
(``onnx.backend.test.BackendTest``) runs through it the way it runs through
``onnxruntime.backend``.

For now ``prepare`` converts the model with :func:`torch_chrion.onnx.to_fx` and runs the
GraphModule directly; later stages route it through the whole pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import torch
from onnx.backend.base import Backend, BackendRep
from torch import fx

from ..errors import ModelError, OptionError
from . import to_fx

try:  # numpy has no bfloat16 / float8; ml_dtypes (an onnx dependency) does
    import ml_dtypes
except ImportError:  # pragma: no cover - onnx >= 1.16 depends on it
    ml_dtypes = None

_NUMPY_VIEWS = {
    torch.bfloat16: (torch.uint16, "bfloat16"),
    torch.float8_e4m3fn: (torch.uint8, "float8_e4m3fn"),
    torch.float8_e4m3fnuz: (torch.uint8, "float8_e4m3fnuz"),
    torch.float8_e5m2: (torch.uint8, "float8_e5m2"),
    torch.float8_e5m2fnuz: (torch.uint8, "float8_e5m2fnuz"),
}


def _torch_device(device: str) -> torch.device:
    kind = device.split(":")[0].upper()
    if kind == "CPU":
        return torch.device("cpu")
    if kind == "CUDA":
        return torch.device(device.lower())
    raise OptionError(f"unknown device {device!r}; ChrionBackend runs on 'CPU' or 'CUDA'")


def to_value(value: Any, device: torch.device) -> Any:
    """A backend input as torch_chrion takes it: arrays as tensors, sequences (lists) as
    lists of tensors, an empty optional (None) as None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [to_value(element, device) for element in value]
    return to_tensor(value, device)


def to_output(value: Any) -> Any:
    """An output as numpy: tensors as arrays, sequences as lists, None as None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [to_output(element) for element in value]
    return to_numpy(value)


def to_tensor(value: Any, device: torch.device) -> torch.Tensor:
    """A numpy array (or scalar) as a tensor; bfloat16/float8 arrays of ml_dtypes included."""
    array = np.asarray(value)
    if ml_dtypes is not None:
        for dtype, (carrier, name) in _NUMPY_VIEWS.items():
            if array.dtype == np.dtype(getattr(ml_dtypes, name)):
                carried = torch.from_numpy(array.view(carrier_np(carrier)).copy())
                return carried.view(dtype).to(device)
    if array.dtype == object or array.dtype.kind in "USV":
        raise ModelError(f"input of numpy dtype {array.dtype} has no torch equivalent")
    return torch.from_numpy(np.array(array, copy=True, order="C")).to(device)  # keeps 0-d


def carrier_np(dtype: torch.dtype) -> np.dtype:
    """The numpy integer type with the same width as a torch carrier dtype."""
    return np.dtype(np.uint16) if dtype == torch.uint16 else np.dtype(np.uint8)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as a numpy array, bfloat16/float8 as ml_dtypes arrays."""
    tensor = tensor.detach().cpu()
    if tensor.dtype in _NUMPY_VIEWS and ml_dtypes is not None:
        carrier, name = _NUMPY_VIEWS[tensor.dtype]
        return tensor.view(carrier).numpy().view(getattr(ml_dtypes, name))
    return tensor.numpy()


class ChrionBackendRep(BackendRep):
    """A prepared model: ``run(inputs)`` returns its outputs as numpy arrays."""

    def __init__(
        self, module: fx.GraphModule, input_names: Sequence[str], device: torch.device
    ) -> None:
        self.module = module
        self.input_names = list(input_names)
        self.device = device

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        """Run the model.

        Args:
            inputs: arrays in the order of the graph inputs (initializers excluded), a
                mapping from input name to array, or one array.

        Returns:
            The outputs, in the ONNX output order.
        """
        if isinstance(inputs, Mapping):
            unknown = sorted(set(inputs) - set(self.input_names))
            if unknown:
                raise ModelError(
                    f"unknown input name(s) {unknown}; the model takes {self.input_names}"
                )
            inputs = [inputs[name] for name in self.input_names if name in inputs]
        elif isinstance(inputs, np.ndarray) or np.isscalar(inputs):
            inputs = [inputs]
        tensors = [to_value(value, self.device) for value in inputs]
        with torch.inference_mode():
            outputs = self.module(*tensors)
        if not isinstance(outputs, tuple):
            outputs = (outputs,)
        return tuple(to_output(output) for output in outputs)


class ChrionBackend(Backend):
    """torch_chrion for ``onnx.backend.test.BackendTest`` and other ONNX backend users."""

    @classmethod
    def prepare(
        cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any
    ) -> ChrionBackendRep:
        """Check and convert the model for repeated runs on ``device`` ("CPU" or "CUDA").

        Raises:
            ModelError, UnsupportedOperatorError: see :func:`torch_chrion.onnx.to_fx`.
        """
        torch_device = _torch_device(device)
        module = to_fx(model).to(torch_device)
        initializers = {init.name for init in model.graph.initializer}
        names = [value.name for value in model.graph.input if value.name not in initializers]
        return ChrionBackendRep(module, names, torch_device)

    @classmethod
    def run_model(
        cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any
    ) -> tuple[np.ndarray, ...]:
        """Prepare and run once."""
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        """CPU always; CUDA where torch sees a CUDA device."""
        kind = device.split(":")[0].upper()
        if kind == "CPU":
            return True
        if kind == "CUDA":
            return torch.cuda.is_available()
        return False


prepare = ChrionBackend.prepare
run_model = ChrionBackend.run_model
supports_device = ChrionBackend.supports_device
