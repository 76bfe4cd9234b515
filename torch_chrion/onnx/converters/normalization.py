"""LayerNormalization and Dropout, in place of onnx2torch's converters.

* LayerNormalization: onnx2torch builds ``nn.LayerNorm`` with the normalised shape read from
  value_info, where a symbolic dimension reads as 0 (``normalized_shape = [0, 128]``) and a
  missing entry is a KeyError. Here the normalised shape is the input's own, read when the
  module runs, so it holds for every input shape; Scale and B may broadcast to it, and the
  Mean and InvStdDev outputs are given.
* Dropout: onnx2torch returns one tensor even where the graph reads the mask, and ignores a
  ``training_mode`` input. Inference semantics are the identity and an all-true mask; a
  ``training_mode`` that is not a constant false asks for random masks, which no inference
  runtime reproduces, so such a node is refused.

BatchNormalization and InstanceNormalization keep onnx2torch's converters: in eval mode (every
converted module is, see :mod:`torch_chrion.onnx.convert`) they compute ONNX's inference
semantics.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import UnsupportedOperatorError
from .._onnx2torch import (
    OnnxGraph,
    OnnxMapping,
    OnnxNode,
    OperationConverterResult,
    onnx_mapping_from_node,
    register_converter,
)
from ._constants import constant_input, is_given

_FLOAT_STASH = 1  # LayerNormalization's stash_type for float32 statistics


class OnnxLayerNormalization(nn.Module):
    """ONNX LayerNormalization over the dimensions from ``axis`` on, with 1 to 3 outputs
    (Y, Mean, InvStdDev)."""

    def __init__(self, axis: int, epsilon: float, outputs: int, float_stats: bool) -> None:
        super().__init__()
        self.axis = axis
        self.epsilon = epsilon
        self.outputs = outputs
        self.float_stats = float_stats

    def forward(
        self, x: Tensor, scale: Tensor, bias: Tensor | None = None
    ) -> Tensor | tuple[Tensor, ...]:
        normalized = x.shape[self.axis % x.dim() :]
        weight = scale if scale.shape == normalized else scale.expand(normalized)
        if bias is not None and bias.shape != normalized:
            bias = bias.expand(normalized)
        if self.outputs == 1:
            return torch.nn.functional.layer_norm(x, normalized, weight, bias, self.epsilon)
        y, mean, inv_std = torch.native_layer_norm(x, normalized, weight, bias, self.epsilon)
        stats_dtype = torch.float32 if self.float_stats else x.dtype
        return (y, mean.to(stats_dtype), inv_std.to(stats_dtype))[: self.outputs]


@register_converter("LayerNormalization", [17], replace=True)
def convert_layer_normalization(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    attributes = node.attributes
    module = OnnxLayerNormalization(
        axis=int(attributes.get("axis", -1)),
        epsilon=float(attributes.get("epsilon", 1e-5)),
        outputs=len(node.output_values),
        float_stats=int(attributes.get("stash_type", _FLOAT_STASH)) == _FLOAT_STASH,
    )
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


class OnnxInferenceDropout(nn.Module):
    """ONNX Dropout at inference: the input unchanged and, if asked for, an all-true mask."""

    def __init__(self, with_mask: bool) -> None:
        super().__init__()
        self.with_mask = with_mask

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if not self.with_mask:
            return x
        return x, torch.ones_like(x, dtype=torch.bool)


@register_converter("Dropout", [10, 12, 13, 22], replace=True)
def convert_dropout(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    if is_given(node, 2):
        training = constant_input(node, graph, 2)
        if training is None or bool(training.reshape(-1)[0]):
            raise UnsupportedOperatorError(
                f"Dropout {node.name!r}: its training_mode input "
                f"{node.input_values[2]!r} is {'not a constant' if training is None else 'true'}"
                "; training-mode dropout draws random masks, and torch_chrion runs inference "
                "only (training_mode false)"
            )
    with_mask = len(node.output_values) > 1 and bool(node.output_values[1])
    outputs = tuple(node.output_values[: 2 if with_mask else 1])
    return OperationConverterResult(
        torch_module=OnnxInferenceDropout(with_mask),
        onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=outputs),
    )
