"""The ``torch.ops.chrion`` operator library: recurrent layers as single operators, ``dense``
and ``conv2d`` (products against constant weights, packed once on CPU: packed_products.py),
``max_pool_tiles`` (a max pool whose windows tile its input: pooling.py), ``gather_rows`` (the
rows of a table picked by an index tensor: gather.py), ``softmax`` (softmax and log_softmax:
softmax.py), ``python_call``, one
node running a Python callable (ONNX If / Loop / Scan), and ``lstm_packed_cell_state`` (packed
sequences under torch.compile).

``ensure_loaded()`` loads the C++ kernels (building them once if need be), registers the fake
kernels that shape propagation, make_fx and torch.export use, and defines ``python_call``.
"""

from . import gather, packed_products, packed_state, pooling, python_call, recurrent, softmax


def ensure_loaded() -> None:
    """Load the chrion:: kernels and define chrion::python_call and
    chrion::lstm_packed_cell_state (once per process)."""
    recurrent.ensure_loaded()
    packed_products.ensure_loaded()
    pooling.ensure_loaded()
    gather.ensure_loaded()
    softmax.ensure_loaded()
    python_call.register_operator()
    packed_state.register_operator()


__all__ = ["ensure_loaded", "python_call"]
