"""ONNX graph -> torch.fx.GraphModule, node by node through torch_chrion's converter registry.

This is torch_chrion's own graph builder, not ``onnx2torch.convert``: it takes the same
converters (onnx2torch's and ours, in a private copy of its registry) but also

* lists every unsupported operator at once, before converting anything;
* reports every converter failure (unsupported attribute values) at once, as a
  torch_chrion error naming op type, opset and node, never a bare KeyError or
  NotImplementedError;
* returns the right element when a graph output comes from a multi-output node
  (see :mod:`torch_chrion.onnx.outputs`);
* converts subgraphs (If / Loop / Scan bodies), whose nodes may read values of the
  enclosing graphs: those become extra inputs of the subgraph's GraphModule;
* gives converters an :class:`~torch_chrion.onnx.scope.OnnxScope`, where Constant-node
  outputs and the enclosing graphs' constants count as initializers (a Conv weight may be
  either), and value_info is inferred (see :mod:`torch_chrion.onnx.shapes`);
* returns a module in eval mode: ONNX operators have inference semantics (BatchNormalization
  with its running statistics, Dropout as the identity), which onnx2torch's modules give only
  when not training.
"""

from __future__ import annotations

import contextvars
import inspect
import keyword
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import onnx
from torch import fx, nn

from ..errors import ChrionError, UnsupportedOperatorError
from . import _onnx2torch
from ._onnx2torch import OnnxMapping
from .opsets import NodeKey, missing_converters, opset_imports, schema_version
from .outputs import ValueTable, emit_outputs
from .scope import OnnxScope, is_constant_identity
from .shapes import with_value_info

# the model's opsets while a conversion runs, for converters that convert subgraphs
_OPSETS: contextvars.ContextVar[dict[str, int]] = contextvars.ContextVar("chrion_onnx_opsets")
# the graph whose nodes are being converted, the enclosing scope of their subgraphs
_SCOPE: contextvars.ContextVar[OnnxScope | None] = contextvars.ContextVar(
    "chrion_onnx_scope", default=None
)


@contextmanager
def _in_force(variable: contextvars.ContextVar, value: object) -> Iterator[None]:
    token = variable.set(value)
    try:
        yield
    finally:
        variable.reset(token)


def raise_if_unsupported(model: onnx.ModelProto) -> None:
    """Raise one error listing every node (subgraphs included) no converter handles.

    Raises:
        UnsupportedOperatorError: ``.ops`` holds one description per node: op type, opset,
            schema version, node name and, inside subgraphs, the subgraph.
    """
    missing = missing_converters(model)
    if missing:
        lines = [key.describe() for key in missing]
        kinds = sorted(
            {f"{k.domain + '::' if k.domain else ''}{k.op_type}-{k.version}" for k in missing}
        )
        raise UnsupportedOperatorError(
            f"{len(missing)} node(s) use operators torch_chrion cannot convert "
            f"({', '.join(kinds)}):\n  " + "\n  ".join(lines),
            ops=lines,
        )


def free_values(graph: onnx.GraphProto) -> list[str]:
    """Names a (sub)graph reads but does not define: values of the enclosing scopes.

    Nested subgraphs count: what they read from outside this graph is read through it.
    Order is first use, so the list is deterministic.
    """
    defined = {value.name for value in graph.input}
    defined |= {init.name for init in graph.initializer}
    defined |= {init.values.name for init in graph.sparse_initializer}
    free: dict[str, None] = {}

    def need(name: str) -> None:
        if name and name not in defined:
            free.setdefault(name, None)

    for node in graph.node:
        for name in node.input:
            need(name)
        for attribute in node.attribute:
            subgraphs = list(attribute.graphs)
            if attribute.HasField("g"):
                subgraphs.append(attribute.g)
            for subgraph in subgraphs:
                for name in free_values(subgraph):
                    need(name)
        defined.update(node.output)
    for value in graph.output:
        need(value.name)
    return list(free)


def _module_name(onnx_name: str) -> str:
    """A submodule name: onnx2torch's unique node name with what attribute paths forbid."""
    return re.sub(r"[^0-9A-Za-z_]", "_", onnx_name) or "node"


def graph_to_module(
    graph: onnx.GraphProto,
    opsets: dict[str, int],
    outer_values: Sequence[str] = (),
    tuple_output: bool = False,
) -> fx.GraphModule:
    """Convert one ONNX graph (the main graph or a subgraph) to a GraphModule.

    Args:
        graph: the graph.
        opsets: domain -> opset version of the model ("" for the default domain).
        outer_values: names of enclosing-scope values the graph reads; they become
            placeholders after the graph's own inputs, in this order.
        tuple_output: always return a tuple (subgraphs), even for one output.

    Returns:
        The GraphModule. Its placeholders are the graph inputs that are not initializers,
        then ``outer_values``.

    Raises:
        UnsupportedOperatorError: converters failed on some nodes (all of them listed).
    """
    with _in_force(_OPSETS, opsets):
        return _build(graph, opsets, outer_values, tuple_output)


def convert_subgraph(graph: onnx.GraphProto, outer_values: Sequence[str]) -> fx.GraphModule:
    """Convert a subgraph of the node being converted now (for If / Loop / Scan converters).

    Returns a GraphModule taking the subgraph's inputs then ``outer_values`` and returning a
    tuple of the subgraph's outputs.
    """
    return _build(graph, _OPSETS.get(), outer_values, tuple_output=True)


def _build(
    graph: onnx.GraphProto,
    opsets: dict[str, int],
    outer_values: Sequence[str],
    tuple_output: bool,
) -> fx.GraphModule:
    onnx_graph = OnnxScope(graph, parent=_SCOPE.get())
    root = nn.Module()
    initializers = nn.Module()
    root.add_module("initializers", initializers)
    fx_graph = fx.Graph()

    table = ValueTable(fx_graph, initializers, onnx_graph.constant)
    initializer_names = {init.name for init in graph.initializer}
    used: set[str] = set()
    for index, value in enumerate(graph.input):
        if value.name in initializer_names:
            continue  # IR < 4 lists initializers as inputs; they are weights, not inputs
        placeholder = fx_graph.placeholder(_placeholder_name(value.name, index, used))
        table.set(value.name, placeholder)
    for index, name in enumerate(outer_values):
        placeholder = fx_graph.placeholder(_placeholder_name(name, index, used, prefix="outer"))
        table.set(name, placeholder)

    with _in_force(_SCOPE, onnx_graph):
        converted, failures = _convert_nodes(onnx_graph, opsets, graph.name)
    if failures:
        raise UnsupportedOperatorError(
            f"{len(failures)} node(s) could not be converted:\n  " + "\n  ".join(failures),
            ops=failures,
        )

    for unique_name, module, mapping in converted:
        name = _module_name(unique_name)
        while hasattr(root, name):
            name += "_"
        root.add_module(name, module)
        args = [table.get(v) if v else None for v in mapping.inputs]
        kwargs: dict = {}
        if not getattr(module, "takes_blank_inputs", False):
            args, kwargs = _call_arguments(module, args)
        fx_node = fx_graph.call_module(name, tuple(args), kwargs)
        table.set_outputs(mapping.outputs, fx_node)

    emit_outputs(fx_graph, table, [value.name for value in graph.output], tuple_output)
    fx_graph.lint()
    module = fx.GraphModule(root, fx_graph, class_name=_class_name(graph.name))
    return module.eval()  # inference semantics (see the module docstring)


def _convert_nodes(
    onnx_graph: OnnxScope, opsets: dict[str, int], graph_name: str
) -> tuple[list[tuple[str, nn.Module, OnnxMapping]], list[str]]:
    """Every node's module and mapping, and a description of every node that failed."""
    converted = []
    failures: list[str] = []
    for unique_name, onnx_node in onnx_graph.nodes.items():
        if is_constant_identity(onnx_node, onnx_graph):
            continue  # its readers read the constant itself (OnnxScope), not a per-call copy
        key = _node_key(onnx_node, opsets, graph_name)
        try:
            converter = _onnx2torch.get_converter(key.domain, key.op_type, key.version)
            module, mapping = converter(onnx_node, onnx_graph)
        except ChrionError as exc:
            failures.append(f"{key.describe()}: {exc}")
            continue
        except Exception as exc:  # converters raise bare NotImplementedError/KeyError/...
            failures.append(f"{key.describe()}: {type(exc).__name__}: {exc}")
            continue
        converted.append((unique_name, module, mapping))
    return converted, failures


def _node_key(onnx_node: _onnx2torch.OnnxNode, opsets: dict[str, int], graph_name: str) -> NodeKey:
    domain = "" if onnx_node.domain in ("", "ai.onnx") else onnx_node.domain
    opset = opsets.get(domain, 1)
    version = schema_version(domain, onnx_node.operation_type, opset)
    return NodeKey(domain, onnx_node.operation_type, opset, version, onnx_node.name, graph_name)


def _call_arguments(module: nn.Module, args: list) -> tuple[list, dict]:
    """Positional args up to the first skipped (blank) ONNX input, keywords after it, by the
    module's forward signature (onnx2torch's convention for optional inputs)."""
    if None not in args:
        return args, {}
    first_skipped = args.index(None)
    parameters = list(inspect.signature(module.forward).parameters)
    kwargs = {
        parameters[i]: value
        for i, value in enumerate(args)
        if i >= first_skipped and value is not None
    }
    return args[:first_skipped], kwargs


def _placeholder_name(onnx_name: str, index: int, used: set[str], prefix: str = "input") -> str:
    """The ONNX name where it is a usable argument name, else ``<prefix>_<index>``; unique."""
    name = re.sub(r"[^0-9A-Za-z_]", "_", onnx_name)
    if not name.isidentifier() or keyword.iskeyword(name) or name in ("self", "torch"):
        name = f"{prefix}_{index}"
    while name in used:
        name += "_"
    used.add(name)
    return name


def _class_name(graph_name: str) -> str:
    name = re.sub(r"[^0-9A-Za-z_]", "_", graph_name)
    return f"Onnx_{name}" if name else "OnnxGraphModule"


def model_to_module(
    model: onnx.ModelProto, example_shapes: Sequence[Sequence[int]] | None = None
) -> fx.GraphModule:
    """Convert a checked, opset-normalised model (see :func:`load_model`) to a GraphModule.

    Args:
        model: the model.
        example_shapes: shapes of example inputs (one per graph input, initializers excluded),
            which give the rank of values whose shape inference on the declared shapes cannot
            tell (see :mod:`torch_chrion.onnx.shapes`). The module serves every shape.

    Returns:
        A GraphModule in eval mode taking the graph inputs (initializers excluded) in order and
        returning one tensor for a one-output graph, else a tuple in the ONNX output order.
        Their ONNX names are in ``module.meta["onnx_inputs"]`` and
        ``module.meta["onnx_outputs"]``.
    """
    raise_if_unsupported(model)
    typed = with_value_info(model, example_shapes)
    module = graph_to_module(typed.graph, opset_imports(model))
    initializers = {init.name for init in model.graph.initializer}
    # the ONNX names, for callers that feed inputs by name or label outputs
    module.meta["onnx_inputs"] = [v.name for v in model.graph.input if v.name not in initializers]
    module.meta["onnx_outputs"] = [v.name for v in model.graph.output]
    return module
