"""Fake (shape-only) kernels of chrion::dense and chrion::conv2d, products against a constant
weight that the CPU kernels run against the weight packed once (dense: the recurrent kernels'
panels, csrc/kernels/dense.cpp; conv2d: oneDNN's reordered layout, convolution.cpp).

Schemas:

    dense(input, weight, bias) -> output
        input [..., K] @ weight [K, N] (+ bias [N]), the layout aten.mm reads a constant weight
        in; output [..., N]
    conv2d(input, weight, bias, stride, padding, dilation, groups, activation, activation_args)
        -> output
        aten.convolution (2-D, not transposed), then ``activation``: "none", "relu",
        "leaky_relu" (args: negative slope) or "hardtanh" (args: min, max)
"""

from __future__ import annotations

import functools

import torch

from .._extension import load

aten = torch.ops.aten


def _dense_fake(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    torch._check(
        input.shape[-1] == weight.shape[0],
        lambda: f"input has {input.shape[-1]} features, the weight takes {weight.shape[0]}",
    )
    return input.new_empty((*input.shape[:-1], weight.shape[1]))


def _conv2d_fake(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    activation: str,
    activation_args: list[float],
) -> torch.Tensor:
    # aten's own meta kernel: the output's shape and memory format as every device's kernel
    return aten.convolution(input, weight, bias, stride, padding, dilation, False, [0, 0], groups)


@functools.cache
def ensure_loaded() -> None:
    """Load the chrion:: kernels and register these fake kernels (once per process)."""
    load("kernels")
    torch.library.register_fake("chrion::dense", _dense_fake)
    torch.library.register_fake("chrion::conv2d", _conv2d_fake)
