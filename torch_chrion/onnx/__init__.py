"""ONNX frontend: an ONNX model becomes a torch.fx.GraphModule that computes what
onnxruntime computes.

    gm = torch_chrion.onnx.to_fx("model.onnx")
    y = gm(x)

Importing this package imports onnx2torch (and through it torchvision); a torchvision that
does not match torch fails here with an error saying which one to install.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import onnx
from torch import fx

from . import (
    _onnx2torch,  # noqa: F401  (first: the clear error for a broken torchvision)
    converters,  # noqa: F401  (registers our converters in torch_chrion's registry)
)
from ._onnx2torch import OnnxDependencyError
from .convert import model_to_module
from .folding import fold_constants
from .loader import load_model

__all__ = ["OnnxDependencyError", "load_model", "to_fx"]


def to_fx(
    model: str | os.PathLike | bytes | onnx.ModelProto,
    fold: bool = False,
    example_shapes: Sequence[Sequence[int]] | None = None,
) -> fx.GraphModule:
    """Load an ONNX model and convert it to a GraphModule.

    Args:
        model: a path (external data read from its folder), serialised bytes or a ModelProto.
        fold: fold constant subgraphs first (``onnxscript.optimizer``), so shape arithmetic on
            static shapes (Shape -> Gather -> Concat -> Reshape) becomes constants that our
            converters read at conversion time. The result then traces with
            ``make_fx(tracing_mode="real")``; it is specialised to the input shapes the model
            declares, so use it only for models with static input shapes.
        example_shapes: the shapes of example inputs, one per graph input (initializers
            excluded), in order: where shape inference on the declared input shapes cannot tell
            a value's rank, inference on these can (see :mod:`torch_chrion.onnx.shapes`).

    Returns:
        A GraphModule in eval mode (ONNX inference semantics) taking the model's inputs (initializers excluded) in order and
        returning one tensor for a one-output model, else a tuple in the ONNX output order.

    Raises:
        ModelError: unreadable or corrupt model, or onnx.checker rejects it.
        UnsupportedOperatorError: operators or attribute values torch_chrion cannot convert;
            every one is listed (op type, opset, node name) in the message and ``.ops``.
    """
    proto = load_model(model)
    if fold:
        proto = fold_constants(proto)
    return model_to_module(proto, example_shapes)
