"""value_info for every value, so converters that read an input's rank find it.

Models from PyTorch's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) carry no
``value_info`` for intermediate values; onnx2torch's MaxPool, BatchNormalization,
InstanceNormalization and pooling converters read the rank of their input from it. Shape
inference (``onnx.shape_inference``, with data propagation so Shape -> Gather -> Concat ->
Reshape chains keep their rank) fills it in.

Inference on the model as declared keeps symbolic dimensions symbolic, and loses a value's
shape altogether where it depends on a symbolic dimension in a way inference cannot follow.
There, the example inputs decide: inference runs again on a copy whose inputs have the example
inputs' concrete shapes, and a value the first pass could not shape takes the second pass's
rank. Its dimensions stay symbolic: the converted module serves every input shape the model
accepts, not only the example's, so no converter may bake in an example's dimension.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import onnx
import onnx.shape_inference

_LOG = logging.getLogger(__name__)

# onnx.shape_inference works on serialised protos, which protobuf caps at 2 GiB
_INFERENCE_SIZE_LIMIT = 2**31 - 1
# the dim_param of a dimension known only from the example inputs
EXAMPLE_DIM = "chrion_example_dim"


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph in it (If / Loop / Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _graphs(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graphs(subgraph)


def _has_shape(value: onnx.ValueInfoProto) -> bool:
    return value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape")


def _infer(model: onnx.ModelProto) -> onnx.ModelProto | None:
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError) as exc:
        # non-strict inference raises only on what it cannot read at all; converters that
        # need a shape then name the value they miss
        _LOG.info("shape inference failed: %s", exc)
        return None


def _with_example_shapes(
    model: onnx.ModelProto, example_shapes: Sequence[Sequence[int]]
) -> onnx.ModelProto:
    """A copy of the model whose graph inputs (initializers excluded, in order) have the
    example shapes."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    initializers = {init.name for init in fixed.graph.initializer}
    inputs = [v for v in fixed.graph.input if v.name not in initializers]
    for value, shape in zip(inputs, example_shapes, strict=False):
        if not value.type.HasField("tensor_type"):
            continue
        dims = value.type.tensor_type.shape
        dims.Clear()
        for size in shape:
            dims.dim.add().dim_value = int(size)
    return fixed


def with_value_info(
    model: onnx.ModelProto, example_shapes: Sequence[Sequence[int]] | None = None
) -> onnx.ModelProto:
    """A copy of the model with value_info inferred for every value inference can shape.

    Args:
        model: a checked model (it is not modified).
        example_shapes: the shapes of the example inputs, one per graph input (initializers
            excluded), in order; they give the rank of values the model's declared shapes
            leave unknown.

    Returns:
        The model with value_info filled in (the model itself where it is past the 2 GiB
        inference limit).
    """
    if model.ByteSize() >= _INFERENCE_SIZE_LIMIT:
        _LOG.info("model past 2 GiB: converting with its own value_info only")
        return model
    typed = _infer(model)
    if typed is None:
        typed = onnx.ModelProto()
        typed.CopyFrom(model)
    if example_shapes is None:
        return typed
    concrete = _infer(_with_example_shapes(model, example_shapes))
    if concrete is None:
        return typed
    ranks = {
        value.name: value
        for graph in _graphs(concrete.graph)
        for value in graph.value_info
        if _has_shape(value)
    }
    for graph in _graphs(typed.graph):
        entries = {value.name: value for value in graph.value_info}
        shaped = {name for name, value in entries.items() if _has_shape(value)}
        shaped |= {value.name for value in (*graph.input, *graph.output) if _has_shape(value)}
        for node in graph.node:
            for name in node.output:
                if not name or name in shaped or name not in ranks:
                    continue
                if name in entries:  # typed but unshaped: the rank goes into that entry
                    entries[name].CopyFrom(_rank_only(ranks[name]))
                else:
                    graph.value_info.append(_rank_only(ranks[name]))
    return typed


def _rank_only(value: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """The value's type with every dimension symbolic (:data:`EXAMPLE_DIM`)."""
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(value)
    for dim in copy.type.tensor_type.shape.dim:
        dim.dim_param = EXAMPLE_DIM  # clears dim_value (a oneof)
    return copy
