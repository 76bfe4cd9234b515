"""The fake (shape-only) kernel of chrion::max_pool_tiles, a max pool whose windows tile its input
and whose indices nobody reads (csrc/kernels/pooling.cpp, Note [Max pool tiles]).

Schema:

    max_pool_tiles(input, window) -> output
        input [C, H, W] or [N, C, H, W], window [kH, kW]; output [..., H // kH, W // kW], each
        the maximum of its window (NaN propagating), channels-last where the input is
"""

from __future__ import annotations

import functools

import torch

from .._extension import load


def _max_pool_tiles_fake(input: torch.Tensor, window: list[int]) -> torch.Tensor:
    kh, kw = window
    torch._check(
        input.shape[-2] >= kh and input.shape[-1] >= kw,
        lambda: f"input of shape {tuple(input.shape)} is smaller than the window {window}",
    )
    shape = (*input.shape[:-2], input.shape[-2] // kh, input.shape[-1] // kw)
    channels_last = (
        input.dim() == 4
        and not input.is_contiguous()
        and input.is_contiguous(memory_format=torch.channels_last)
    )
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return input.new_empty(shape).contiguous(memory_format=layout)


@functools.cache
def ensure_loaded() -> None:
    """Load the chrion:: kernels and register this fake kernel (once per process)."""
    load("kernels")
    torch.library.register_fake("chrion::max_pool_tiles", _max_pool_tiles_fake)
