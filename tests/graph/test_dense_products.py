"""dense_products: a product against a large constant float32 weight becomes one chrion::dense
node with its bias add folded in, equal to eager; what it cannot take stays as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from torch_chrion.graph.capture import capture
from torch_chrion.graph.passes import dense_products
from torch_chrion.ops import ensure_loaded

aten = torch.ops.aten
K, N = 256, 300  # 76,800 weights: over MIN_WEIGHT_ELEMENTS


def count(gm, target) -> int:
    return sum(n.target is target for n in gm.graph.nodes)


def dense_nodes(gm) -> list:
    ensure_loaded()
    return [n for n in gm.graph.nodes if n.target is torch.ops.chrion.dense.default]


class MatMulBias(nn.Module):
    """An ONNX MatMul + Add against initializers, as torch.onnx exports a linear layer."""

    def __init__(self, k: int = K, n: int = N, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.register_buffer("weight", torch.randn(k, n, dtype=dtype))
        self.register_buffer("bias", torch.randn(n, dtype=dtype))

    def forward(self, x):
        return torch.matmul(x, self.weight) + self.bias


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(K, N)

    def forward(self, x):
        return torch.relu(self.linear(x))


@pytest.mark.parametrize(
    "model,shape",
    [(MatMulBias(), (7, 3, K)), (MatMulBias(), (5, K)), (Head(), (4, K)), (Head(), (6, 2, K))],
    ids=["matmul-3d", "matmul-2d", "linear-2d", "linear-3d"],
)
def test_a_linear_layer_becomes_one_dense_node_with_its_bias(model, shape):
    torch.manual_seed(0)
    model.eval()
    x = torch.randn(shape)
    gm = capture(model, (x,))
    (node,) = dense_nodes(gm)
    assert node.args[2] is not None  # the bias is added inside the product
    assert count(gm, aten.add.Tensor) == 0
    assert count(gm, aten.mm.default) + count(gm, aten.addmm.default) == 0
    with torch.no_grad():
        for _ in range(2):
            y = torch.randn(shape)
            torch.testing.assert_close(gm(y), model(y), rtol=1e-5, atol=1e-4)


class ReadTwice(MatMulBias):
    def forward(self, x):
        y = x @ self.weight
        return y + self.bias, y


class ScaledBias(MatMulBias):
    def forward(self, x):
        return torch.add(x @ self.weight, self.bias, alpha=2.0)


class InputWeight(nn.Module):
    def forward(self, x, w):
        return x @ w


def _traced(model, *inputs):
    with torch.no_grad():
        gm = make_fx(model)(*inputs)
    expected = gm(*inputs)
    dense_products(gm)
    torch.testing.assert_close(gm(*inputs), expected, rtol=1e-5, atol=1e-4)
    return gm


def test_a_product_read_elsewhere_keeps_its_bias_add():
    gm = _traced(ReadTwice(), torch.randn(5, K))
    (node,) = dense_nodes(gm)
    assert node.args[2] is None and count(gm, aten.add.Tensor) == 1


def test_a_scaled_bias_add_is_not_folded():
    gm = _traced(ScaledBias(), torch.randn(5, K))
    (node,) = dense_nodes(gm)
    assert node.args[2] is None and count(gm, aten.add.Tensor) == 1


@pytest.mark.parametrize(
    "model,inputs",
    [
        (MatMulBias(k=64, n=64), (torch.randn(5, 64),)),  # too small to ever gain
        (MatMulBias(dtype=torch.float64), (torch.randn(5, K, dtype=torch.float64),)),
        (InputWeight(), (torch.randn(5, K), torch.randn(K, N))),  # not a constant
    ],
    ids=["small", "float64", "computed-weight"],
)
def test_what_dense_cannot_take_stays_as_it_was(model, inputs):
    gm = _traced(model, *inputs)
    assert not dense_nodes(gm)
    assert count(gm, aten.mm.default) == 1
