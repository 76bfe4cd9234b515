"""What every stage agrees a node of the aten graph is: which nodes get a lane (and so a cost, a
place in the plan and a step in the executor), and how a node's target is reached; and the small
edits of a graph that several passes make."""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import fx

# Operator calls. A call_module/call_method node (left by a graph that was not fully lowered to
# aten) runs as a Python step; it is placed and costed like any other operator call.
_SCHEDULABLE_OPS = ("call_function", "call_module", "call_method")


def is_schedulable(node: fx.Node) -> bool:
    """A node that gets a lane: an operator call other than ``operator.getitem`` (a getitem
    lives on its producer's lane and costs nothing)."""
    return node.op in _SCHEDULABLE_OPS and node.target is not operator.getitem


def schedulable_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The graph's schedulable nodes, in graph (topological) order."""
    return [n for n in gm.graph.nodes if is_schedulable(n)]


def fetch_attr(gm: fx.GraphModule, target: str) -> Any:
    """The value a get_attr node reads (a dotted path from ``gm``)."""
    return functools.reduce(getattr, target.split("."), gm)


def constant_tensor(gm: fx.GraphModule, arg: object) -> torch.Tensor | None:
    """The strided tensor a get_attr argument reads, else None (a computed value, a scalar)."""
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        value = fetch_attr(gm, str(arg.target))
        if isinstance(value, torch.Tensor) and value.layout == torch.strided:
            return value
    return None


def node_callable(gm: fx.GraphModule, node: fx.Node) -> Callable[..., Any]:
    """What a schedulable node calls with its args and kwargs: the function, the submodule of a
    call_module node, or, for call_method, a function of (self, *args)."""
    if node.op == "call_module":
        return gm.get_submodule(str(node.target))
    if node.op == "call_method":
        method = str(node.target)
        return lambda self_, *args, **kwargs: getattr(self_, method)(*args, **kwargs)
    return node.target  # type: ignore[return-value]


def computes_nothing(node: fx.Node) -> bool:
    """An aten view (view, transpose, expand, squeeze, ...): every output aliases an input, so it
    does no arithmetic, and gives the same result on whatever thread and thread count runs it."""
    schema = getattr(node.target, "_schema", None)
    return (
        node.op == "call_function"
        and schema is not None
        and bool(schema.returns)
        and all(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)
    )


# ATen's internal::GRAIN_SIZE: parallel_for runs a range of fewer elements on the calling thread
_GRAIN_SIZE = 32768


def runs_alike_on_any_thread(node: fx.Node) -> bool:
    """A view (computes_nothing), or an aten call whose inputs and outputs hold fewer than ATen's
    grain size of elements in all: ATen does not split it across threads, so it costs the same
    and gives the same result on a thread with any intra-op thread count."""
    if computes_nothing(node):
        return True
    if node.op != "call_function" or getattr(node.target, "namespace", None) != "aten":
        return False  # chrion's own kernels split rows across threads at any size
    elements = 0
    for value in [n.meta.get("val") for n in node.all_input_nodes] + [node.meta.get("val")]:
        values = value if isinstance(value, (tuple, list)) else [value]
        for v in values:
            if not isinstance(v, torch.Tensor) or not isinstance(v.numel(), int):
                return False  # unknown or symbolic: it may be large
            elements += v.numel()
    return elements < _GRAIN_SIZE


def reads_only_first_output(node: fx.Node) -> bool:
    """Whether a multi-output node's readers read only its first output (every reader a
    getitem, any of another output itself unread): an op that computes the other outputs too
    (a pool's indices, a batch norm's statistics) may then be replaced by one of the value."""
    return all(u.target is operator.getitem and (u.args[1] == 0 or not u.users) for u in node.users)


def replace_first_output(graph: fx.Graph, node: fx.Node, value: fx.Node) -> None:
    """Point the readers of ``node``'s first output at ``value``, and erase ``node`` with its
    getitems (``reads_only_first_output(node)`` must hold)."""
    for user in list(node.users):
        if user.args[1] == 0:
            user.replace_all_uses_with(value)
        graph.erase_node(user)
    graph.erase_node(node)


def shares_storage(value: object, tensors: object) -> bool:
    """Whether ``value`` is a tensor viewing the storage of one of the tensors among the leaves
    of ``tensors``."""
    if not isinstance(value, torch.Tensor):
        return False
    storage = value.untyped_storage().data_ptr()
    return any(
        isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() == storage
        for t in torch.utils._pytree.tree_leaves(tensors)
    )


def replace_with_call(graph: fx.Graph, node: fx.Node, target: Any, args: tuple) -> fx.Node:
    """``target(*args)`` in ``node``'s place: inserted before it, with its meta and its readers;
    ``node`` is erased."""
    with graph.inserting_before(node):
        call = graph.call_function(target, args)
    call.meta.update(node.meta)
    node.replace_all_uses_with(call)
    graph.erase_node(node)
    return call


def replace_matches(
    gm: fx.GraphModule, match: Callable[[fx.Node], tuple | None], target: Any
) -> fx.GraphModule:
    """Every node for which ``match`` gives arguments becomes ``target(*arguments)`` (in place;
    ``gm`` recompiled if any did)."""
    changed = False
    for node in list(gm.graph.nodes):
        args = match(node)
        if args is not None:
            replace_with_call(gm.graph, node, target, args)
            changed = True
    if changed:
        gm.recompile()
    return gm


def drop_unread_constants(gm: fx.GraphModule, targets: set[str]) -> None:
    """After a pass replaced constants: drop the nodes nothing reads, then the attributes among
    ``targets`` that no get_attr node reads any more (their tensors are not held twice)."""
    gm.graph.eliminate_dead_code()
    read = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for target in targets - read:
        owner, _, name = target.rpartition(".")
        delattr(gm.get_submodule(owner) if owner else gm, name)
