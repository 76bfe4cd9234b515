"""Serving: the Open Inference Protocol (KServe v2) over a torch_chrion package or ONNX file,
embedded on uvicorn (``chrion serve PATH``) or scaled out on Ray Serve (``deployment``).

Needs the ``serve`` extra: ``pip install torch_chrion[serve]``.
"""

from __future__ import annotations

from typing import Any

from .app import create_app
from .model import ServedModel, TensorSpec, load_served

__all__ = ["ServedModel", "TensorSpec", "create_app", "deployment", "load_served"]


def deployment(path: str, **options: Any) -> Any:
    """A Ray Serve application serving ``path``; see ray_app.deployment."""
    from .ray_app import deployment as ray_deployment

    return ray_deployment(path, **options)
