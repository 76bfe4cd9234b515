"""LayerNormalization, BatchNormalization and Dropout, in place of onnx2torch's converters.

Each computes ONNX's inference semantics whatever the module's ``training`` flag says (a
caller's ``.train()`` changes nothing), and none needs value_info:

* LayerNormalization: onnx2torch builds ``nn.LayerNorm`` with the normalised shape read from
  value_info, where a symbolic dimension reads as 0 (``normalized_shape = [0, 128]``) and a
  missing entry is a KeyError. Here the normalised shape is the input's own, read when the
  module runs, so it holds for every input shape; Scale and B may broadcast to it, and the
  Mean and InvStdDev outputs are given.
* Dropout: onnx2torch returns one tensor even where the graph reads the mask, and ignores a
  ``training_mode`` input. Inference semantics are the identity and a constant mask; a
  ``training_mode`` that is not a constant false asks for random masks (unless the ratio is a
  constant 0), which no other runtime reproduces, so such a node is refused.

* BatchNormalization: onnx2torch's ``nn.BatchNormXd`` uses batch statistics in training mode
  (a module's default) and reads the input's rank from value_info. Here it is always the
  running statistics, for any rank; ``training_mode=1`` (batch statistics and updated running
  statistics as outputs) is refused.

InstanceNormalization keeps onnx2torch's converter: its modules normalise with the input's own
statistics in either mode, which is ONNX's semantics.
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


class OnnxInferenceBatchNormalization(nn.Module):
    """ONNX BatchNormalization at inference: normalised with the running mean and variance."""

    def __init__(self, epsilon: float) -> None:
        super().__init__()
        self.epsilon = epsilon

    def forward(self, x: Tensor, scale: Tensor, bias: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        return torch.nn.functional.batch_norm(
            x, mean, var, scale, bias, training=False, eps=self.epsilon
        )


@register_converter("BatchNormalization", [9, 14, 15], replace=True)
def convert_batch_normalization(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    if int(node.attributes.get("training_mode", 0)) or any(node.output_values[1:]):
        raise UnsupportedOperatorError(
            "training mode (training_mode=1, or the running or saved statistics as outputs: "
            "batch statistics); torch_chrion runs inference only"
        )
    return OperationConverterResult(
        torch_module=OnnxInferenceBatchNormalization(float(node.attributes.get("epsilon", 1e-5))),
        onnx_mapping=OnnxMapping(
            inputs=tuple(node.input_values[:5]), outputs=node.output_values[:1]
        ),
    )


class OnnxInferenceDropout(nn.Module):
    """ONNX Dropout at inference: the input unchanged and, if asked for, a mask of one value
    (``mask_value``)."""

    def __init__(self, with_mask: bool, mask_value: bool) -> None:
        super().__init__()
        self.with_mask = with_mask
        self.mask_value = mask_value

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if not self.with_mask:
            return x
        return x, torch.full_like(x, self.mask_value, dtype=torch.bool)


def _drops_nothing(node: OnnxNode, graph: OnnxGraph) -> bool:
    """Whether the ratio input is a constant 0, so that even training mode is the identity."""
    ratio = constant_input(node, graph, 1)
    return ratio is not None and float(ratio.reshape(-1)[0]) == 0.0


def _inference_dropout(node: OnnxNode, mask_value: bool) -> OperationConverterResult:
    with_mask = len(node.output_values) > 1 and bool(node.output_values[1])
    outputs = tuple(node.output_values[: 2 if with_mask else 1])
    return OperationConverterResult(
        torch_module=OnnxInferenceDropout(with_mask, mask_value),
        onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=outputs),
    )


@register_converter("Dropout", [10], replace=True)
def convert_dropout_10(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    # the spec does not say what the mask holds at inference; onnxruntime, the reference users
    # compare with, returns all false (onnx's reference evaluator all true)
    return _inference_dropout(node, mask_value=False)


@register_converter("Dropout", [12, 13, 22], replace=True)
def convert_dropout(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Dropout-12 on: the mask is "kept", all true at inference."""
    if is_given(node, 2) and not _drops_nothing(node, graph):
        training = constant_input(node, graph, 2)
        if training is None or bool(training.reshape(-1)[0]):
            raise UnsupportedOperatorError(
                f"its training_mode input {node.input_values[2]!r} is "
                f"{'not a constant' if training is None else 'true'}; training-mode dropout "
                "draws random masks, and torch_chrion runs inference only (training_mode "
                "false, or a ratio of 0)"
            )
    return _inference_dropout(node, mask_value=True)
