"""The fake (shape-only) kernel of chrion::softmax, softmax or log_softmax along one dimension
(csrc/kernels/softmax.cpp, Note [Softmax rows] in csrc/kernels/softmax_cpu_impl.h).

Schema:

    softmax(self, dim, log) -> output
        self float, any shape; output of self's shape, contiguous: log_softmax(self, dim) where
        log, else softmax(self, dim)
"""

from __future__ import annotations

import functools

import torch

from .._extension import load


def _softmax_fake(self: torch.Tensor, dim: int, log: bool) -> torch.Tensor:
    torch._check(self.is_floating_point(), lambda: f"softmax of {self.dtype}, not a float")
    return torch.empty_like(self, memory_format=torch.contiguous_format)


@functools.cache
def ensure_loaded() -> None:
    """Load the chrion:: kernels and register this fake kernel (once per process)."""
    load("kernels")
    torch.library.register_fake("chrion::softmax", _softmax_fake)
