"""The ``chrion`` backend of ``torch.compile``.

Found through the ``torch_dynamo_backends`` entry point, so ``torch.compile(model,
backend="chrion")`` works with no import of torch_chrion. Dynamo imports this module when it
looks the backend up, which happens inside ``torch.compile(...)``, before any frame is traced:
that is when ``allow_rnn`` must be on, or Dynamo breaks the graph at every nn.LSTM/GRU/RNN and
leaves the recurrent layers (the whole point) to eager.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch._dynamo

torch._dynamo.config.allow_rnn = True

_compiled: list[weakref.ref] = []


def compiled_modules() -> list[Any]:
    """The ChrionModules this process compiled through torch.compile and still holds, oldest
    first: where to look for the plan Dynamo's graphs got (``compiled_modules()[-1].plan``)."""
    _compiled[:] = [ref for ref in _compiled if ref() is not None]
    return [ref() for ref in _compiled]


# Dynamo lifts parameters and buffers to graph inputs; their sources read like
# L['self']._modules['lstm']._parameters['weight_ih_l0'].
_STATE_MARKERS = ("._parameters[", "._buffers[")


def _is_module_state(node: torch.fx.Node, example: Any) -> bool:
    if isinstance(example, torch.nn.Parameter):
        return True
    grapharg = node.meta.get("grapharg")
    source = getattr(grapharg, "source", None)
    name = source.name if isinstance(getattr(source, "name", None), str) else str(source)
    return any(marker in name for marker in _STATE_MARKERS)


def freeze_module_state(
    gm: torch.fx.GraphModule, example_inputs: Sequence[Any]
) -> tuple[torch.fx.GraphModule, list[int]]:
    """Turn the parameter and buffer inputs Dynamo lifted into constants of the graph.

    Returns the new graph (taking only the user's inputs) and the positions of those inputs
    among Dynamo's flat arguments. Weights are frozen at compile time, as for inference
    compilers generally: a later in-place update of the model's weights is not seen.
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        raise AssertionError("Dynamo gave a graph whose placeholders do not match its inputs")
    frozen = torch.fx.GraphModule(gm, gm.graph)  # shares gm's submodules; graph rebuilt below
    frozen.graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    user_positions = []
    for index, (node, example) in enumerate(zip(placeholders, example_inputs, strict=True)):
        if _is_module_state(node, example):
            name = f"_chrion_state_{index}"
            frozen.register_buffer(name, example.detach())
            env[node] = frozen.graph.get_attr(name)
        else:
            env[node] = frozen.graph.placeholder(node.name)
            user_positions.append(index)
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            env[node] = frozen.graph.node_copy(node, lambda n: env[n])
    frozen.recompile()
    return frozen, user_positions


def chrion_backend(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    options: Mapping[str, Any] | None = None,
) -> Callable[..., Any]:
    """Compile a Dynamo graph with torch_chrion; ``options`` are ChrionSettings fields."""
    from .api import compile_graph
    from .settings import ChrionSettings

    settings = ChrionSettings.from_options(options)
    frozen, user_positions = freeze_module_state(gm, example_inputs)
    user_inputs = tuple(example_inputs[i] for i in user_positions)
    compiled = compile_graph(frozen, user_inputs, settings)
    _compiled.append(weakref.ref(compiled))

    def run(*args: Any) -> Any:
        return compiled(*(args[i] for i in user_positions))

    return run
