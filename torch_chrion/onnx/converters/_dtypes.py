"""ONNX TensorProto data types as torch dtypes."""

from __future__ import annotations

import onnx
import torch

from ...errors import UnsupportedOperatorError

_DTYPES: dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.UINT16: torch.uint16,
    onnx.TensorProto.UINT32: torch.uint32,
    onnx.TensorProto.UINT64: torch.uint64,
    onnx.TensorProto.BOOL: torch.bool,
    onnx.TensorProto.COMPLEX64: torch.complex64,
    onnx.TensorProto.COMPLEX128: torch.complex128,
    onnx.TensorProto.FLOAT8E4M3FN: torch.float8_e4m3fn,
    onnx.TensorProto.FLOAT8E4M3FNUZ: torch.float8_e4m3fnuz,
    onnx.TensorProto.FLOAT8E5M2: torch.float8_e5m2,
    onnx.TensorProto.FLOAT8E5M2FNUZ: torch.float8_e5m2fnuz,
}


def torch_dtype(onnx_type: int) -> torch.dtype:
    """The torch dtype of an ONNX TensorProto data type.

    Raises:
        UnsupportedOperatorError: torch has no such dtype (strings, 4-bit types, ...).
    """
    if onnx_type not in _DTYPES:
        name = onnx.TensorProto.DataType.Name(onnx_type) if onnx_type else "UNDEFINED"
        raise UnsupportedOperatorError(f"data type {name} has no torch equivalent")
    return _DTYPES[onnx_type]
