"""The ``chrion`` backend of ``torch.compile``.

Found through the ``torch_dynamo_backends`` entry point, so ``torch.compile(model,
backend="chrion")`` works with no import of torch_chrion.

Note [Dynamic shapes]: Dynamo's default (``dynamic=None``) compiles the first call with static
shapes and, at the first call with another shape, a second graph whose sizes are ``SymInt``
inputs. The backend captures each Dynamo graph once, with ``make_fx`` in Dynamo's own fake mode
(its shape environment and guards), into a *shape-generic* aten graph: size arithmetic stays in
the graph (``SymInt`` placeholders, ``operator.mul`` nodes, ``SymInt`` items in list arguments)
and the executor evaluates it on every call. A new length therefore costs no Dynamo recompile
and no tracing: ChrionModule only picks (or derives) the plan of its shape bucket.

Note [allow_rnn, scoped]: Dynamo graph-breaks at every nn.LSTM/GRU/RNN unless
``torch._dynamo.config.allow_rnn`` is on, and it reads that flag while it traces a frame, long
before any backend is called. Dynamo's per-backend context hook (``backend_ctx_ctor``) is not
forwarded by ``torch.compile``'s backend wrapper, and setting the flag process-wide changes
what every other backend in the process traces (inductor's first LSTM call went from 0.04 s to
2.7 s). So the flag is set per compilation: Dynamo's compile start / end callbacks (run on the
compiling thread around each frame's compilation) turn it on with ``config.patch`` (thread-local)
only when the frame being compiled is compiled for chrion, and restore it afterwards
(``specialize_float`` too: see _COMPILE_CONFIG).
The same callbacks scope how Dynamo traces ``torch.lstm/gru/rnn_*`` in chrion's compilations
(Note [Recurrent calls in Dynamo] in dynamo_calls.py: as chrion operators, so that no length is
fixed while Dynamo traces).
``torch._dynamo.reset()`` clears every compile callback ("as in a fresh process"), and nothing of
chrion's runs between a reset and the next compilation (the backend was looked up earlier, and
is called only after tracing): without the callbacks, Dynamo skips a frame holding an
nn.GRU/RNN/LSTM and runs it eagerly for good, with no chrion compilation to notice (the
reset-per-row benchmark ran its GRU, RNN and bidirectional rows eagerly so). The one hook that a
reset keeps and that Dynamo runs at the start of every compilation, before its compile
callbacks, is the recompile user-context hook: chrion's installs the callbacks again where a
reset cleared them, and gives Dynamo's metrics no context ("").
``install_compile_hooks()`` does the same by hand (after
``torch._dynamo.reset_recompile_user_contexts()``, which clears that hook too), and a chrion
compilation that ran without the callbacks warns that its recurrent layers were left to eager.
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch._dynamo
from torch import fx

from . import dynamo_calls
from .errors import ModelError, OptionError

log = logging.getLogger(__name__)

_compiled: list[weakref.ref] = []


def compiled_modules() -> list[Any]:
    """The ChrionModules this process compiled through torch.compile and still holds, oldest
    first: where to look for the plan Dynamo's graphs got (``compiled_modules()[-1].plan``)."""
    _compiled[:] = [ref for ref in _compiled if ref() is not None]
    return [ref() for ref in _compiled]


# --- allow_rnn, scoped to chrion's compilations (Note [allow_rnn, scoped]) -------------------

_scope = threading.local()

# What chrion's compilations trace with: recurrent layers inside the graph, and Python float
# attributes (nn.LSTM's dropout) as constants, not as tensor inputs read with .item() (what
# dynamic=True does otherwise), which an inference graph has no use for.
_COMPILE_CONFIG = {"allow_rnn": True, "specialize_float": True}


def _compiling_for_chrion() -> bool:
    """Whether the frame Dynamo is compiling on this thread is compiled with this backend:
    read from the ``compiler_fn`` of Dynamo's ``_compile`` call on the stack."""
    from torch._dynamo.eval_frame import innermost_backend

    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_compile" and "compiler_fn" in frame.f_locals:
            backend = innermost_backend(frame.f_locals["compiler_fn"])
            backend = getattr(backend, "compiler_fn", backend)  # torch.compile's wrapper
            return backend is chrion_backend
        frame = frame.f_back
    return False


def _on_compile_start(_: Any) -> None:
    patch = None
    _scope.hooked = True
    if _compiling_for_chrion():
        patch = torch._dynamo.config.patch(**_COMPILE_CONFIG)
        patch.__enter__()
        dynamo_calls.install()  # Note [Recurrent calls in Dynamo]
    _scope.__dict__.setdefault("patches", []).append(patch)


def _on_compile_end(_: Any) -> None:
    _scope.hooked = False
    patches = _scope.__dict__.get("patches")
    if patches:
        patch = patches.pop()
        if patch is not None:
            dynamo_calls.uninstall()
            patch.__exit__(None, None, None)


def _restore_callbacks() -> str:
    """Dynamo's recompile user-context hook, run at the start of every compilation: the compile
    callbacks again if ``torch._dynamo.reset()`` cleared them (Note [allow_rnn, scoped])."""
    handler = torch._dynamo.callback_handler
    if _on_compile_start not in handler.start_callbacks:
        handler.register_start_callback(_on_compile_start)
        handler.register_end_callback(_on_compile_end)
    return ""


def install_compile_hooks() -> None:
    """Install the compile callbacks that scope ``allow_rnn`` to chrion's compilations, and the
    hook that restores them after ``torch._dynamo.reset()`` (done at import)."""
    _restore_callbacks()
    utils = torch._dynamo.utils
    register = getattr(utils, "register_hook_for_recompile_user_context", None)
    registered = getattr(utils, "get_hook_for_recompile_user_context", lambda: None)()
    if register is not None and _restore_callbacks not in (registered or ()):
        register(_restore_callbacks)


install_compile_hooks()  # Dynamo imports this module when it looks the backend up


# --- capture ----------------------------------------------------------------------------------

# Dynamo lifts parameters and buffers to graph inputs; their sources read like
# L['self']._modules['lstm']._parameters['weight_ih_l0'].
_STATE_MARKERS = ("._parameters[", "._buffers[")


def _is_module_state(node: fx.Node, example: Any) -> bool:
    if isinstance(example, torch.nn.Parameter):
        return True
    grapharg = node.meta.get("grapharg")
    source = getattr(grapharg, "source", None)
    name = source.name if isinstance(getattr(source, "name", None), str) else str(source)
    return any(marker in name for marker in _STATE_MARKERS)


def freeze_module_state(
    gm: fx.GraphModule, state_positions: Sequence[int], values: Sequence[torch.Tensor]
) -> fx.GraphModule:
    """Turn the placeholders at ``state_positions`` (the parameters and buffers Dynamo lifted)
    into constants of ``gm`` holding ``values``, in place.

    Weights are frozen at compile time, as for inference compilers generally: a later in-place
    update of the model's weights is not seen.
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for position, value in zip(state_positions, values, strict=True):
        node = placeholders[position]
        name = f"_chrion_state_{position}"
        gm.register_buffer(name, value.detach())
        with gm.graph.inserting_before(node):
            constant = gm.graph.get_attr(name)
        node.replace_all_uses_with(constant)
        gm.graph.erase_node(node)
    gm.recompile()
    return gm


_FACTORY_TO_NEW = {
    torch.ops.aten.zeros.default: torch.ops.aten.new_zeros.default,
    torch.ops.aten.ones.default: torch.ops.aten.new_ones.default,
    torch.ops.aten.empty.memory_format: torch.ops.aten.new_empty.default,
}


def _factories_follow_inputs(gm: fx.GraphModule) -> fx.GraphModule:
    """``torch.zeros(2, batch, hidden, device=x.device)`` (nn.LSTM's default state) traced with
    a symbolic batch cannot be folded to a constant, and its ``device=cpu`` would pin it to the
    tracing device. Rewritten as ``x.new_zeros(...)`` on the graph's first tensor input, it
    follows that input to whichever device its lane runs on."""
    tensor_inputs = [
        n
        for n in gm.graph.nodes
        if n.op == "placeholder" and isinstance(n.meta.get("val"), torch.Tensor)
    ]
    if not tensor_inputs:
        return gm
    for node in list(gm.graph.nodes):
        new = _FACTORY_TO_NEW.get(node.target)
        if new is None or not node.all_input_nodes:  # input-free ones fold to constants
            continue
        kwargs = {k: v for k, v in node.kwargs.items() if k in ("dtype",)}
        with gm.graph.inserting_before(node):
            replacement = gm.graph.call_function(new, (tensor_inputs[0], node.args[0]), kwargs)
        replacement.meta = dict(node.meta)
        node.replace_all_uses_with(replacement)
        gm.graph.erase_node(node)
    gm.recompile()
    return gm


def capture_dynamo_graph(
    gm: fx.GraphModule, example_inputs: Sequence[Any], settings: Any
) -> tuple[fx.GraphModule, list[int]]:
    """Capture a Dynamo graph once into a shape-generic aten graph (Note [Dynamic shapes]).

    Returns the graph, taking only the user's inputs (tensors and SymInt sizes), and the
    positions of those inputs among Dynamo's flat arguments.

    Raises:
        ModelError: the graph cannot be traced.
        OptionError: ``seq_chunks`` > 1 on a graph with symbolic lengths.
    """
    from torch.func import functionalize
    from torch.fx.experimental.proxy_tensor import make_fx

    from .graph.passes import (
        SPEED_REWRITES,
        bf16_recurrent_weights,
        check_portable,
        fold_input_free,
        unpin_copies,
    )
    from .graph.passes.functionalize import written_arguments
    from .graph.recurrent_calls import RecurrentToChrion
    from .ops import ensure_loaded

    ensure_loaded()
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        raise AssertionError("Dynamo gave a graph whose placeholders do not match its inputs")
    state = [
        i
        for i, (n, x) in enumerate(zip(placeholders, example_inputs, strict=True))
        if _is_module_state(n, x)
    ]
    user = [i for i in range(len(example_inputs)) if i not in set(state)]
    symbolic = any(isinstance(example_inputs[i], torch.SymInt) for i in user)
    if symbolic and settings.seq_chunks > 1:
        raise OptionError(
            f"seq_chunks={settings.seq_chunks} cuts sequences at fixed steps, which a graph "
            "with symbolic lengths cannot hold: use seq_chunks=1, or "
            "torch.compile(..., dynamic=False)"
        )
    fakes = [n.meta.get("example_value") for n in placeholders]
    if any(f is None for f in fakes):
        raise ModelError("Dynamo's graph has placeholders without example values")

    def forward(*args: Any) -> Any:
        with RecurrentToChrion():
            return gm(*args)

    try:
        with torch.no_grad():
            aten_gm = make_fx(forward, tracing_mode="fake")(*fakes)
            if any(written_arguments(n) for n in aten_gm.graph.nodes):
                # functionalised, as capture does (graph/passes/functionalize.py), so no in-place
                # update survives to be folded; only then, as its views may specialise sizes
                aten_gm = make_fx(functionalize(forward), tracing_mode="fake")(*fakes)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ModelError(f"tracing the Dynamo graph to an aten graph failed: {exc}") from exc
    freeze_module_state(aten_gm, state, [example_inputs[i] for i in state])
    devices = {x.device for x in example_inputs if isinstance(x, torch.Tensor)}
    unpin_copies(aten_gm, devices.pop() if len(devices) == 1 else torch.device("cpu"))
    _factories_follow_inputs(aten_gm)
    if settings.recurrent_dtype == "bfloat16":
        bf16_recurrent_weights(aten_gm)
    fold_input_free(aten_gm)
    aten_gm.graph.eliminate_dead_code()
    aten_gm.recompile()
    for rewrite in SPEED_REWRITES:
        rewrite(aten_gm)
    check_portable(aten_gm)
    return aten_gm, user


# --- the backend ------------------------------------------------------------------------------


_RECURRENT = (torch.lstm, torch.gru, torch.rnn_tanh, torch.rnn_relu)
_DROPOUTS = (
    torch.nn.functional.dropout,
    torch.nn.functional.dropout1d,
    torch.nn.functional.dropout2d,
    torch.nn.functional.dropout3d,
    torch.nn.functional.alpha_dropout,
    torch.nn.functional.feature_alpha_dropout,
)


def _training_node(node: fx.Node) -> bool:
    """Whether ``node`` of a Dynamo graph behaves as in training mode (what ``model.train()``
    changes: recurrent layers' ``train`` flag, dropout, batch statistics)."""
    args, kwargs = node.args, node.kwargs
    if node.target in _RECURRENT:
        packed = len(args) > 2 and not isinstance(args[2], (list, tuple))
        position = 7 if packed else 6
        return len(args) > position and args[position] is True
    if node.target in _DROPOUTS:
        p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
        return bool(kwargs.get("training", args[2] if len(args) > 2 else True)) and p != 0
    if node.target is torch.nn.functional.batch_norm:
        return bool(kwargs.get("training", args[5] if len(args) > 5 else False))
    return False


def _refuse_training(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> None:
    """A chrion graph serves inference and computes no gradients: refuse, with what to do, a
    model in training mode or inputs that require grad (never outputs silently without them)."""
    training = [n.name for n in gm.graph.nodes if n.op == "call_function" and _training_node(n)]
    if training:
        raise ModelError(
            f"the model is in training mode (nodes {training[:5]} use dropout, batch statistics "
            "or a recurrent layer's train flag): torch_chrion serves inference; call "
            "model.eval() before calling the compiled model, or compile with another backend "
            "for training"
        )
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    needing = [
        n.name
        for n, x in zip(placeholders, example_inputs, strict=True)
        if isinstance(x, torch.Tensor) and x.requires_grad and not _is_module_state(n, x)
    ]
    if needing and torch.is_grad_enabled():
        raise ModelError(
            f"inputs {needing} require grad, but torch_chrion serves inference and returns "
            "outputs without gradients: call the compiled model under torch.no_grad() (or "
            "torch.inference_mode()), detach the inputs, or compile with another backend "
            "for training"
        )


def chrion_backend(
    gm: fx.GraphModule,
    example_inputs: Sequence[Any],
    options: Mapping[str, Any] | None = None,
) -> Callable[..., Any]:
    """Compile a Dynamo graph with torch_chrion; ``options`` are ChrionSettings fields."""
    from .module import compile_graph
    from .settings import ChrionSettings

    if not getattr(_scope, "hooked", False):
        warnings.warn(
            "torch_chrion: this graph was traced without chrion's compile hooks (cleared by "
            "torch._dynamo.reset()), so Dynamo left any nn.LSTM/GRU/RNN to eager with a graph "
            "break; the hooks are back for the next compilation "
            "(torch_chrion.dynamo.install_compile_hooks() restores them after a reset)",
            stacklevel=2,
        )
    install_compile_hooks()
    settings = ChrionSettings.from_options(options)
    _refuse_training(gm, example_inputs)
    aten_gm, user_positions = capture_dynamo_graph(gm, example_inputs, settings)
    user_inputs = tuple(example_inputs[i] for i in user_positions)
    concrete = tuple(
        _concrete(x) if isinstance(x, (torch.Tensor, torch.SymInt)) else x for x in user_inputs
    )
    weights = frozenset(id(x) for i, x in enumerate(example_inputs) if i not in user_positions)
    earlier = next((m for m in reversed(compiled_modules()) if m._chrion_weights == weights), None)
    compiled = compile_graph(
        aten_gm, concrete, settings, shape_generic=True, reference=earlier if weights else None
    )
    compiled._chrion_weights = weights  # which model it is: a later graph of it derives from it
    _compiled.append(weakref.ref(compiled))
    log.info(
        "chrion: compiled a Dynamo graph (%s sizes) for inputs %s",
        "symbolic" if any(isinstance(x, torch.SymInt) for x in user_inputs) else "static",
        [tuple(x.shape) if isinstance(x, torch.Tensor) else x for x in concrete],
    )

    def run(*args: Any) -> Any:
        return compiled(*(args[i] for i in user_positions))

    return run


def _concrete(value: Any) -> Any:
    """The real value behind Dynamo's example: a SymInt's hint, a real tensor as it is."""
    if isinstance(value, torch.SymInt):
        return int(value.node.hint) if value.node.hint is not None else int(value)
    return value
