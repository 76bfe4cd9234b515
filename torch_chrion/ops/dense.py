"""Fake (shape-only) kernel of chrion::dense; the real kernels are in csrc/kernels/dense.cpp.

Schema: ``dense(input, weight, bias) -> output``, ``input [..., K] @ weight [K, N] (+ bias [N])``
(the layout ``aten.mm`` reads a constant weight in), output ``[..., N]``.
"""

from __future__ import annotations

import functools

import torch

from .._extension import load


def _dense_fake(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    torch._check(
        input.shape[-1] == weight.shape[0],
        lambda: f"input has {input.shape[-1]} features, the weight takes {weight.shape[0]}",
    )
    return input.new_empty((*input.shape[:-1], weight.shape[1]))


@functools.cache
def ensure_loaded() -> None:
    """Load the chrion:: kernels and register dense's fake kernel (once per process)."""
    load("kernels")
    torch.library.register_fake("chrion::dense", _dense_fake)
