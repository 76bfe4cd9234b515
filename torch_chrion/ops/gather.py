"""The fake (shape-only) kernel of chrion::gather_rows, the rows of a table picked by an integer
tensor (csrc/kernels/gather.cpp, Note [Gather rows]).

Schema:

    gather_rows(table, index) -> output
        table [R, ...], index int64 or int32 of any shape, each in [-R, R); output
        [*index.shape, ...], contiguous: table[index]
"""

from __future__ import annotations

import functools

import torch

from .._extension import load


def _gather_rows_fake(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    torch._check(table.dim() >= 1, lambda: "table must have a dimension to pick rows from")
    torch._check(
        index.dtype in (torch.int64, torch.int32),
        lambda: f"index must be int64 or int32, got {index.dtype}",
    )
    return table.new_empty((*index.shape, *table.shape[1:]))


@functools.cache
def ensure_loaded() -> None:
    """Load the chrion:: kernels and register this fake kernel (once per process)."""
    load("kernels")
    torch.library.register_fake("chrion::gather_rows", _gather_rows_fake)
