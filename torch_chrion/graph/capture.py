"""capture: any PyTorch module (an onnx2torch or dynamo GraphModule included) to the aten graph.

The aten graph (the contract shared by graph/, profile/, schedule/ and runtime/): placeholders are
the user's inputs in order, get_attr nodes the weights and constants, call_function nodes call an
``OpOverload`` (``aten::*`` or ``chrion::*``) or ``operator.getitem``, and one output node. Every
node carries ``meta["val"]``, ``meta["chrion_out_bytes"]`` and ``meta["chrion_weight_bytes"]``.

The steps, each a pass of its own (after tracing, in the order of ``PASSES``):
1. trace with ``make_fx(tracing_mode="real")`` under ``torch.no_grad()``, recurrent functions
   redirected to ``torch.ops.chrion.*`` (recurrent_calls.py) so each stays one node, ONNX
   If / Loop / Scan modules called through ``chrion::python_call`` (python_calls.py) so each
   stays one opaque node run as a Python callable, and small
   constant tensors propagated (onnx2torch modules compute shapes from tensor values; with
   ``CONSTANT_NUMEL_LIMIT`` raised the shape chain folds while tracing); a graph that updates
   anything in place is traced again functionalised (``functionalize_mutations``), so no
   folded constant is ever written into;
2. ``unpin_copies`` and ``fold_input_free``: no node stays pinned to the tracing device;
3. dead-code elimination; ``SPEED_REWRITES``, CPU-speed rewrites that keep the values
   (``fold_batch_norm``, ``max_pool_windows``, ``channels_last_convolutions``,
   ``packed_convolutions``, ``dense_products``, ``gather_rows``, ``softmax_rows``); then
   ``check_portable``: no backend-only kernel is left;
4. ``split_recurrent`` to the requested granularity, ``bf16_recurrent_weights`` when asked,
   ``fold_input_free`` again, then ``annotate`` (fake-tensor propagation).

The graph is specialised to the example inputs' shapes: one capture per input-shape bucket.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.fx.experimental.proxy_tensor as proxy_tensor
from torch import fx
from torch.fx.experimental.proxy_tensor import make_fx

from ..errors import ModelError, UnsupportedOperatorError
from ..ops import ensure_loaded
from ..ops.python_call import PythonCall
from .annotate import annotate
from .passes import (
    SPEED_REWRITES,
    bf16_recurrent_weights,
    check_portable,
    copy_aliased_outputs,
    fold_input_free,
    functionalize_mutations,
    split_recurrent,
    unpin_copies,
)
from .python_calls import ControlFlowAsPythonCalls, adopt_python_calls, has_control_flow
from .recurrent_calls import RecurrentToChrion

# Constants up to this many elements are computed while tracing instead of recorded: enough for
# any shape tensor, small enough that no weight-sized tensor is duplicated.
_CONSTANT_NUMEL_LIMIT = 1 << 16


# make_fx reads the limit from a module global and has no per-call option, so capture sets it for
# the length of one trace. The lock keeps two captures in different threads from restoring each
# other's value (one could otherwise leave the raised limit set for good, or trace with the
# default and fail); a make_fx of the user's own in another thread meanwhile still sees it.
_CONSTANT_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _constant_propagation(limit: int) -> Iterator[None]:
    with _CONSTANT_LIMIT_LOCK:
        saved = proxy_tensor.CONSTANT_NUMEL_LIMIT
        proxy_tensor.CONSTANT_NUMEL_LIMIT = limit
        try:
            yield
        finally:
            proxy_tensor.CONSTANT_NUMEL_LIMIT = saved


def _traced_device(example_inputs: tuple) -> torch.device:
    devices = {x.device for x in example_inputs if isinstance(x, torch.Tensor)}
    if len(devices) > 1:
        raise ModelError(f"example inputs are on several devices: {sorted(map(str, devices))}")
    return devices.pop() if devices else torch.device("cpu")


def _trace(module: torch.nn.Module, example_inputs: tuple) -> fx.GraphModule:
    calls: list[PythonCall] = []
    # ONNX If / Loop / Scan stay one chrion::python_call node each (python_calls.py)
    run = ControlFlowAsPythonCalls(module, calls).run if has_control_flow(module) else module

    def forward(*args: torch.Tensor) -> object:
        with RecurrentToChrion():
            return run(*args)

    name = type(module).__name__
    try:
        with torch.no_grad(), _constant_propagation(_CONSTANT_NUMEL_LIMIT):
            gm = make_fx(forward, tracing_mode="real")(*example_inputs)
        gm = functionalize_mutations(gm, example_inputs)
        return adopt_python_calls(gm, calls) if calls else gm
    except UnsupportedOperatorError:
        raise
    except RuntimeError as exc:
        if "_local_scalar_dense" in str(exc) or "data-dependent" in str(exc):
            raise UnsupportedOperatorError(
                f"{name} has data-dependent control flow or reads tensor values as Python "
                "numbers (e.g. `if x.mean() > 0`): one aten graph cannot hold it. Use "
                "torch.compile(backend='chrion'), which breaks the graph there.",
                ops=["_local_scalar_dense"],
            ) from exc
        raise ModelError(f"tracing {name} to an aten graph failed: {exc}") from exc


@dataclass(frozen=True)
class PassContext:
    """What the passes after tracing may read."""

    example_inputs: tuple
    device: torch.device
    granularity: str
    seq_chunks: int
    recurrent_dtype: str = "float32"


def _eliminate_dead_code(gm: fx.GraphModule) -> None:
    gm.graph.eliminate_dead_code()
    gm.recompile()


# The passes after tracing, in the order they run; each takes (gm, context) and updates gm.
PASSES: tuple[tuple[str, Callable[[fx.GraphModule, PassContext], object]], ...] = (
    ("unpin_copies", lambda gm, c: unpin_copies(gm, c.device)),
    ("fold_input_free", lambda gm, c: fold_input_free(gm)),
    ("eliminate_dead_code", lambda gm, c: _eliminate_dead_code(gm)),
    *((rewrite.__name__, lambda gm, c, rewrite=rewrite: rewrite(gm)) for rewrite in SPEED_REWRITES),
    ("check_portable", lambda gm, c: check_portable(gm)),
    ("annotate", lambda gm, c: annotate(gm, c.example_inputs)),  # split_recurrent reads meta
    (
        "split_recurrent",
        lambda gm, c: split_recurrent(gm, granularity=c.granularity, seq_chunks=c.seq_chunks),
    ),
    (
        "bf16_recurrent_weights",
        lambda gm, c: bf16_recurrent_weights(gm) if c.recurrent_dtype == "bfloat16" else None,
    ),
    ("fold_input_free", lambda gm, c: fold_input_free(gm)),  # the pieces' slices of a state
    ("copy_aliased_outputs", lambda gm, c: copy_aliased_outputs(gm)),  # after the last fold
    ("annotate", lambda gm, c: annotate(gm, c.example_inputs)),
)


def capture(
    module: torch.nn.Module,
    example_inputs: tuple,
    *,
    granularity: str = "layer",
    seq_chunks: int = 1,
    recurrent_dtype: str = "float32",
) -> fx.GraphModule:
    """Lower ``module`` to a device-portable aten graph for inputs shaped like ``example_inputs``.

    Args:
        module: an ``nn.Module`` or ``fx.GraphModule`` (onnx2torch's or dynamo's) in eval mode.
        example_inputs: tensors, in the order ``module`` takes them; real values (onnx2torch
            modules read shape tensors while tracing).
        granularity: "op" keeps each recurrent operator whole; "layer" splits multi-layer and
            bidirectional ones into one node per layer and direction.
        seq_chunks: with "layer", also cut the sequence into this many chunks (state handed from
            chunk to chunk).
        recurrent_dtype: "bfloat16" gives every recurrent layer a bfloat16 W_hh
            (bf16_recurrent_weights).

    Returns:
        The annotated aten graph; it runs on CPU, and on CUDA once its constants are moved there.

    Raises:
        ModelError: the module cannot be traced with these inputs.
        UnsupportedOperatorError: the module uses what a portable aten graph cannot hold
            (data-dependent control flow, packed sequences, LSTM projections, training dropout,
            backend-only kernels).
        OptionError: a bad ``granularity`` / ``seq_chunks``.
    """
    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"capture needs a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(example_inputs, (tuple, list)):
        raise ModelError(
            f"example_inputs must be a tuple of tensors, got {type(example_inputs).__name__}"
        )
    for i, x in enumerate(example_inputs):
        if not isinstance(x, torch.Tensor):
            raise ModelError(f"example_inputs[{i}] is a {type(x).__name__}, not a tensor")
    example_inputs = tuple(example_inputs)
    ensure_loaded()
    context = PassContext(
        example_inputs, _traced_device(example_inputs), granularity, seq_chunks, recurrent_dtype
    )
    gm = _trace(module, example_inputs)
    for _, run_pass in PASSES:
        run_pass(gm, context)
    return gm
