"""Helpers of the ONNX frontend tests: build small models, compare with onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper

from torch_chrion.onnx import to_fx


def tensor_info(name: str, elem_type: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def make_model(
    nodes, inputs, outputs, initializers=(), opset: int = 17, name: str = "test"
) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)  # what onnxruntime 1.32 reads
    return model


def run_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list:
    import onnxruntime

    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def run_ours(model: onnx.ModelProto, feeds: dict[str, np.ndarray], **options) -> list:
    gm = to_fx(model, **options)
    initializers = {init.name for init in model.graph.initializer}
    names = [v.name for v in model.graph.input if v.name not in initializers]
    with torch.no_grad():
        outputs = gm(*[torch.from_numpy(np.array(feeds[n])) for n in names])
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return [o.numpy() for o in outputs]


def assert_same_as_onnxruntime(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], rtol=1e-5, atol=1e-6, **options
) -> list:
    """Our outputs equal onnxruntime's: count, shape, dtype and values. Returns ours."""
    ours = run_ours(model, feeds, **options)
    theirs = run_onnxruntime(model, feeds)
    assert len(ours) == len(theirs)
    for got, want in zip(ours, theirs, strict=True):
        assert got.shape == want.shape, (got.shape, want.shape)
        assert got.dtype == want.dtype, (got.dtype, want.dtype)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    return ours


def with_output_shapes(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The model with its graph outputs' shapes filled in from what onnxruntime computes
    (onnx.checker wants a shape on every graph output; onnxruntime does not)."""
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    for output in bare.graph.output:
        output.type.tensor_type.ClearField("shape")
    results = run_onnxruntime(bare, feeds)
    for output, value in zip(bare.graph.output, results, strict=True):
        shape = output.type.tensor_type.shape
        shape.Clear()
        for size in np.shape(value):
            shape.dim.add().dim_value = size
    return bare
