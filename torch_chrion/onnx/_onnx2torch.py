"""The one place torch_chrion imports onnx2torch, and torch_chrion's converter registry.

torch_chrion's registry is a private copy of onnx2torch's, taken once its own converters are
registered: torch_chrion's converters are added to the copy only, so ``onnx2torch.convert``
elsewhere in the process keeps onnx2torch's own behaviour.

onnx2torch imports torchvision at import time. A torchvision built for another torch fails
there with an error about operators or C++ symbols that says nothing about the cause; this
module turns that into an error that says which torchvision to install.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..errors import ChrionError


class OnnxDependencyError(ChrionError, ImportError):
    """onnx2torch (or the torchvision it imports) cannot be imported."""


def matching_torchvision() -> str:
    """The torchvision release built for the installed torch, e.g. ``0.29.1`` for torch 2.14.1.

    torchvision's minor version runs 15 ahead of torch's since torch 2.0 (2.0 -> 0.15).
    """
    major, minor, *rest = torch.__version__.split("+")[0].split(".")
    patch = rest[0] if rest else "0"
    if major != "2":
        return "<the release matching your torch>"
    return f"0.{int(minor) + 15}.{patch}"


def _import_onnx2torch() -> Any:
    try:
        importlib.import_module("torchvision")
    except Exception as exc:  # torchvision raises RuntimeError/ImportError/AttributeError here
        raise OnnxDependencyError(
            f"torch_chrion.onnx needs onnx2torch, which imports torchvision, and torchvision "
            f"failed to import ({type(exc).__name__}: {exc}). torchvision must match torch "
            f"{torch.__version__}: pip install torchvision=={matching_torchvision()}"
        ) from exc
    try:
        return importlib.import_module("onnx2torch")
    except Exception as exc:
        raise OnnxDependencyError(
            f"torch_chrion.onnx needs onnx2torch, which failed to import "
            f"({type(exc).__name__}: {exc}). Install it with: pip install onnx2torch"
        ) from exc


onnx2torch = _import_onnx2torch()

from onnx2torch.node_converters import registry as _registry  # noqa: E402
from onnx2torch.onnx_graph import OnnxGraph  # noqa: E402,F401
from onnx2torch.onnx_node import OnnxNode  # noqa: E402,F401
from onnx2torch.onnx_tensor import OnnxTensor  # noqa: E402,F401
from onnx2torch.utils.common import (  # noqa: E402,F401
    OnnxMapping,
    OperationConverterResult,
    onnx_mapping_from_node,
)

ONNX_DOMAIN = ""

# (domain, op_type, since_version) -> converter: onnx2torch's converters, then ours
_CONVERTERS: dict[Any, Callable[..., Any]] = dict(_registry._CONVERTER_REGISTRY)


def converter_keys() -> set[tuple[str, str, int]]:
    """Every (domain, op_type, since_version) torch_chrion's registry holds."""
    return {(k.domain, k.operation_type, k.version) for k in _CONVERTERS}


def has_converter(domain: str, op_type: str, version: int) -> bool:
    """Whether the registry holds a converter for exactly this schema version."""
    key = _registry.OperationDescription(domain=domain, operation_type=op_type, version=version)
    return key in _CONVERTERS


def get_converter(domain: str, op_type: str, version: int) -> Callable[..., Any]:
    """The converter registered for exactly this (domain, op, since_version)."""
    key = _registry.OperationDescription(domain=domain, operation_type=op_type, version=version)
    return _CONVERTERS[key]


def register_converter(
    op_type: str, versions: Iterable[int], domain: str = ONNX_DOMAIN, replace: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a converter in torch_chrion's registry for several schema versions.

    Args:
        op_type: the ONNX operator.
        versions: the schema ``since_version`` values it handles.
        domain: the operator's domain ("" for the default ONNX domain).
        replace: take the place of onnx2torch's converter for these versions. Used for the
            shape-taking ops, whose onnx2torch modules read shapes from tensor values at run
            time and so stop tracing (ours read them at conversion time), and for the
            normalisation and dropout ops, whose onnx2torch modules follow the module's
            training flag and need value_info (ours have inference semantics, see
            ``converters/normalization``).
    """

    def deco(converter: Callable[..., Any]) -> Callable[..., Any]:
        for version in versions:
            key = _registry.OperationDescription(
                domain=domain, operation_type=op_type, version=version
            )
            if key in _CONVERTERS and not replace:
                raise ValueError(f"a converter for {key} is already registered")
            _CONVERTERS[key] = converter
        return converter

    return deco
