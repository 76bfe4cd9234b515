"""torch_chrion: serve recurrent neural networks on the host CPU and the GPU at once.

Importing the package is cheap: onnx2torch, the C++ extensions and the pipeline stages load on
first use, so a broken torchvision or a missing compiler only fails the call that needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import errors
from .errors import (
    BuildError,
    ChrionError,
    ExecutionError,
    InfeasiblePlanError,
    ModelError,
    NotPicklableError,
    OptionError,
    PlanError,
    UnsupportedOperatorError,
)

__version__ = "0.1.0"

# public name -> module that defines it, imported on first access
_LAZY = {
    "load_onnx": "torch_chrion.api",
    "compile_graph": "torch_chrion.api",
    "ChrionModule": "torch_chrion.module",
    "ChrionSettings": "torch_chrion.settings",
    "Plan": "torch_chrion.schedule",
    "package": "torch_chrion.artifact",
    "load_package": "torch_chrion.artifact",
}

__all__ = [
    "BuildError",
    "ChrionError",
    "ExecutionError",
    "InfeasiblePlanError",
    "ModelError",
    "NotPicklableError",
    "OptionError",
    "PlanError",
    "UnsupportedOperatorError",
    "errors",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'torch_chrion' has no attribute {name!r}")
