"""Our converters for shape-taking ops and for the opsets onnx2torch lacks, against
onnxruntime: each shape argument both as an initializer (read at conversion time) and as a
graph input (read at run time)."""

from __future__ import annotations

import numpy as np
import pytest
from chrion_onnx_testing import (
    assert_same_as_onnxruntime,
    make_model,
    tensor_info,
    with_output_shapes,
)
from onnx import TensorProto, helper, numpy_helper

from torch_chrion.onnx.converters.shape_ops import _pad_indices

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
RNG = np.random.default_rng(0)


def one_node(op, data, args, opset, out_type=F, **attributes):
    """A one-node model: input ``x`` = data, then ``args`` as (name, array, static)."""
    inputs = [tensor_info("x", helper.np_dtype_to_tensor_dtype(data.dtype), data.shape)]
    initializers, feeds = [], {"x": data}
    names = ["x"]
    for name, value, static in args:
        names.append(name if value is not None else "")
        if value is None:
            continue
        if static:
            initializers.append(numpy_helper.from_array(value, name))
        else:
            inputs.append(
                tensor_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
            )
            feeds[name] = value
    node = helper.make_node(op, names, ["y"], name=f"{op.lower()}_node", **attributes)
    return make_model(
        [node], inputs, [tensor_info("y", out_type, None)], initializers, opset
    ), feeds


STATIC = pytest.mark.parametrize("static", [True, False], ids=["initializer", "fed"])
x3 = RNG.standard_normal((2, 3, 4)).astype(np.float32)


def ints(*values):
    return np.array(values, np.int64)


def check(op, data, args, opset, out_type=F, **attributes):
    model, feeds = one_node(op, data, args, opset, out_type, **attributes)
    return assert_same_as_onnxruntime(with_output_shapes(model, feeds), feeds)


@STATIC
@pytest.mark.parametrize("opset", [14, 21])
@pytest.mark.parametrize("shape", [(0, -1), (4, 0, 2), (6, 4), (-1,)])
def test_reshape(static, opset, shape):
    check("Reshape", x3, [("shape", ints(*shape), static)], opset)


@STATIC
def test_reshape_allowzero(static):
    check("Reshape", np.zeros((0, 3), np.float32), [("shape", ints(3, 0), static)], 21, allowzero=1)


@pytest.mark.parametrize("perm", [None, [2, 0, 1]])
def test_transpose_21(perm):
    check("Transpose", x3, [], 21, **({"perm": perm} if perm else {}))


@STATIC
@pytest.mark.parametrize("opset", [13, 21])
@pytest.mark.parametrize("axes", [None, [2], [-4, 2]])
def test_squeeze(static, opset, axes):
    data = RNG.standard_normal((1, 3, 1, 2)).astype(np.float32)
    args = [("axes", None if axes is None else ints(*axes), static)]
    check("Squeeze", data, args if axes is not None else [], opset)


@STATIC
@pytest.mark.parametrize("opset", [13, 21])
@pytest.mark.parametrize("axes", [[0], [-1, 1], [3, 0]])
def test_unsqueeze(static, opset, axes):
    check("Unsqueeze", x3, [("axes", ints(*axes), static)], opset)


@pytest.mark.parametrize("num_outputs,length", [(3, 7), (2, 4), (4, 10)])
def test_split_18_num_outputs(num_outputs, length):
    data = RNG.standard_normal((2, length)).astype(np.float32)
    outs = [f"y{i}" for i in range(num_outputs)]
    node = helper.make_node("Split", ["x"], outs, axis=1, num_outputs=num_outputs)
    model = make_model(
        [node], [tensor_info("x", F, data.shape)], [tensor_info(o, F, None) for o in outs], opset=18
    )
    assert_same_as_onnxruntime(with_output_shapes(model, {"x": data}), {"x": data})


@STATIC
@pytest.mark.parametrize("opset", [13, 18])
def test_split_sizes(static, opset):
    data = RNG.standard_normal((5, 2)).astype(np.float32)
    inputs = [tensor_info("x", F, data.shape)]
    initializers, feeds = [], {"x": data}
    if static:
        initializers.append(numpy_helper.from_array(ints(1, 4), "split"))
    else:
        inputs.append(tensor_info("split", I64, [2]))
        feeds["split"] = ints(1, 4)
    node = helper.make_node("Split", ["x", "split"], ["a", "b"], axis=0)
    model = make_model(
        [node], inputs, [tensor_info("a", F, None), tensor_info("b", F, None)], initializers, opset
    )
    assert_same_as_onnxruntime(with_output_shapes(model, feeds), feeds)


@STATIC
@pytest.mark.parametrize(
    "mode,opset,pads,axes",
    [
        ("constant", 13, [1, 0, 2, 0, 2, 1], None),
        ("constant", 18, [-1, 2, 1, 0], [0, 2]),
        ("reflect", 18, [2, 1, 1, 2], [2, -2]),
        ("edge", 18, [1, 2, 3, 0, 0, 1], None),
        ("wrap", 19, [3, 1, 0, 2], [1, 2]),
        ("edge", 21, [0, 1, 1, 0], [-1, 0]),
    ],
)
def test_pad(static, mode, opset, pads, axes):
    args = [("pads", ints(*pads), static)]
    args.append(("value", np.array(1.5, np.float32) if mode == "constant" else None, static))
    if axes is not None:
        args.append(("axes", ints(*axes), static))
    check("Pad", x3, args, opset, mode=mode)


def test_pad_indices_follow_numpy():
    for mode, numpy_mode in (("reflect", "reflect"), ("edge", "edge"), ("wrap", "wrap")):
        for size in (1, 2, 3, 5):
            for before, after in ((0, 0), (2, 1), (4, 7)):
                if mode == "reflect" and size == 1:
                    continue
                want = np.pad(np.arange(size), (before, after), mode=numpy_mode)
                assert _pad_indices(size, before, after, mode) == list(want), (mode, size)


@STATIC
@pytest.mark.parametrize(
    "starts,ends,axes,steps",
    [([1, 0], [3, -1], [0, 2], None), ([-1], [-100], [1], [-1]), ([3, 0], [0, 4], [2, 0], [-2, 1])],
)
def test_slice(static, starts, ends, axes, steps):
    args = [
        ("starts", ints(*starts), static),
        ("ends", ints(*ends), static),
        ("axes", ints(*axes), static),
    ]
    if steps is not None:
        args.append(("steps", ints(*steps), static))
    check("Slice", x3, args, 13)


@STATIC
@pytest.mark.parametrize(
    "op", ["ReduceMax", "ReduceMin", "ReduceMean", "ReduceProd", "ReduceL2", "ReduceLogSumExp"]
)
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_18_axes_input(static, op, keepdims):
    check(op, x3, [("axes", ints(-1, 0), static)], 18, keepdims=keepdims)


@pytest.mark.parametrize("noop", [0, 1])
def test_reduce_18_without_axes(noop):
    check("ReduceMean", x3, [], 18, noop_with_empty_axes=noop)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_reduce_20_bool(op):
    data = RNG.random((3, 4)) > 0.5
    check(op, data, [("axes", ints(1), True)], 20, out_type=B, keepdims=0)


@STATIC
def test_reduce_sum_13(static):
    check("ReduceSum", x3, [("axes", ints(1), static)], 13, keepdims=0)


@pytest.mark.parametrize("opset", [13, 19, 21])
@pytest.mark.parametrize(
    "to,out",
    [
        (TensorProto.FLOAT16, TensorProto.FLOAT16),
        (TensorProto.INT32, TensorProto.INT32),
        (TensorProto.DOUBLE, TensorProto.DOUBLE),
    ],
)
def test_cast(opset, to, out):
    check("Cast", x3 * 10, [], opset, out_type=out, to=to)


def test_cast_like_19():
    check("CastLike", x3 * 10, [("like", np.zeros(1, np.int64), False)], 19, out_type=I64)


@STATIC
@pytest.mark.parametrize("opset", [9, 20, 21])
def test_constant_of_shape(static, opset):
    shape = ints(2, 3)
    value = helper.make_tensor("value", TensorProto.INT64, [1], [7])
    inputs, initializers, feeds = [], [], {}
    if static:
        initializers.append(numpy_helper.from_array(shape, "shape"))
    else:
        inputs.append(tensor_info("shape", I64, [2]))
        feeds["shape"] = shape
    node = helper.make_node("ConstantOfShape", ["shape"], ["y"], value=value)
    model = make_model([node], inputs, [tensor_info("y", I64, None)], initializers, opset)
    assert_same_as_onnxruntime(with_output_shapes(model, feeds), feeds)


@STATIC
def test_expand_and_tile(static):
    data = RNG.standard_normal((3, 1)).astype(np.float32)
    check("Expand", data, [("shape", ints(2, 1, 4), static)], 13)
    check("Tile", data, [("repeats", ints(2, 3), static)], 13)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
def test_unsigned_arithmetic(op, dtype):
    a = np.array([7, 200, 65000, 3], dtype)
    b = np.array([3, 100, 2, 3], dtype)
    node = helper.make_node(op, ["a", "b"], ["y"])
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    model = make_model(
        [node],
        [tensor_info("a", elem, [4]), tensor_info("b", elem, [4])],
        [tensor_info("y", elem, [4])],
    )
    assert_same_as_onnxruntime(model, {"a": a, "b": b})


@pytest.mark.parametrize("opset", [13, 21])
def test_size(opset):
    check("Size", x3, [], opset, out_type=I64)


@STATIC
@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, -1, 2])
def test_trilu(static, upper, k):
    args = [] if k is None else [("k", np.array(k, np.int64), static)]
    check("Trilu", RNG.standard_normal((2, 4, 5)).astype(np.float32), args, 14, upper=upper)


@STATIC
@pytest.mark.parametrize("bounds", [(-0.5, 0.5), (None, 0.1), (-0.2, None), (0.3, -0.3)])
def test_clip(static, bounds):
    args = [
        (name, None if v is None else np.array(v, np.float32), static)
        for name, v in zip(("lo", "hi"), bounds, strict=True)
    ]
    check("Clip", x3, args, 13)
