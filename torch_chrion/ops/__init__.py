"""The ``torch.ops.chrion`` operator library: recurrent layers as single operators.

``ensure_loaded()`` loads the C++ kernels (building them once if need be) and registers the fake
kernels that shape propagation, make_fx and torch.export use.
"""

from .recurrent import ensure_loaded

__all__ = ["ensure_loaded"]
