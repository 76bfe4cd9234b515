"""Save and rebuild a captured aten graph without tracing and without pickled code.

The structure goes to JSON (every node's name, kind, operator name and arguments), the tensors
the graph holds (weights and folded constants) to one ``torch.save`` file of plain tensors that is
read back with ``torch.load(weights_only=True)``. Operators are looked up by name in
``torch.ops`` when the graph is rebuilt, so nothing in the files is executed; an operator that
does not exist in the loading process is an error naming it.

Only what the aten graph contract allows is accepted (see capture.py): placeholders, get_attr,
call_function on an ``OpOverload`` or ``operator.getitem``, and one output, with the default fx
code generation. A ``chrion::python_call`` node holds a Python callable and cannot be saved: the
error says so.
"""

from __future__ import annotations

import json
import operator
import os
import pickle  # only for its error type: tensors are read with weights_only=True
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import fx

from ..errors import ModelError

FORMAT = "torch_chrion.graph/1"
_GETITEM = "operator.getitem"


def _target_name(node: fx.Node) -> str:
    target = node.target
    if target is operator.getitem:
        return _GETITEM
    if isinstance(target, torch._ops.OpOverload):
        if target.namespace == "chrion" and target._opname == "python_call":
            raise ModelError(
                f"node {node.name!r} runs a Python callable (ONNX If/Loop/Scan): a package "
                "cannot hold it without pickling code"
            )
        return f"{target.namespace}::{target._opname}.{target._overloadname}"
    raise ModelError(
        f"node {node.name!r} calls {target!r}, which is not an operator: only aten/chrion "
        "operators and getitem can be saved"
    )


def _resolve_target(name: str) -> Callable[..., Any]:
    if name == _GETITEM:
        return operator.getitem
    namespace, _, rest = name.partition("::")
    opname, _, overload = rest.rpartition(".")
    try:
        return getattr(getattr(getattr(torch.ops, namespace), opname), overload)
    except (AttributeError, RuntimeError) as exc:
        raise ModelError(f"the saved graph calls {name}, which this process does not have") from exc


def _encode(value: Any, where: str) -> Any:
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_encode(v, where) for v in value]
        return {"list": items} if isinstance(value, list) else {"tuple": items}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, torch.layout):
        return {"layout": str(value).removeprefix("torch.")}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    raise ModelError(
        f"{where} has an argument of type {type(value).__name__}, which cannot be saved"
    )


def _decode(value: Any, nodes: dict[str, fx.Node]) -> Any:
    if not isinstance(value, dict):
        return value
    ((kind, payload),) = value.items()
    if kind == "node":
        return nodes[payload]
    if kind in ("list", "tuple"):
        items = [_decode(v, nodes) for v in payload]
        return items if kind == "list" else tuple(items)
    if kind == "device":
        return torch.device(payload)
    if kind in ("dtype", "layout", "memory_format"):
        decoded = getattr(torch, payload, None)
        expected = {"dtype": torch.dtype, "layout": torch.layout}.get(kind, torch.memory_format)
        if not isinstance(decoded, expected):
            raise ModelError(f"the saved graph names an unknown {kind} {payload!r}")
        return decoded
    raise ModelError(f"the saved graph has an argument of unknown kind {kind!r}")


# Annotations (graph/annotate.py) kept with the graph: recomputing them needs fake-tensor
# propagation, whose first use imports torch._dynamo (over a second) in a fresh process.
_META_KEYS = ("chrion_out_bytes", "chrion_weight_bytes", "chrion_weights")


def _encode_val(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return {
            "shape": list(value.shape),
            "dtype": str(value.dtype).removeprefix("torch."),
            "device": str(value.device),
        }
    if isinstance(value, (list, tuple)):
        return [_encode_val(v) for v in value]
    return None


def _decode_val(value: Any) -> Any:
    """A stand-in for the fake tensor annotate made: right shape, dtype and device, one element
    of storage (an expanded scalar)."""
    if isinstance(value, list):
        return tuple(_decode_val(v) for v in value)
    if value is None:
        return None
    dtype = getattr(torch, value["dtype"], None)
    if not isinstance(dtype, torch.dtype):
        raise ModelError(f"the saved graph names an unknown dtype {value['dtype']!r}")
    return torch.empty((), dtype=dtype, device=value["device"]).expand(value["shape"])


def _encode_meta(node: fx.Node) -> dict[str, Any]:
    if "val" not in node.meta or any(k not in node.meta for k in _META_KEYS):
        raise ModelError(f"node {node.name!r} is not annotated: save a captured graph")
    return {"val": _encode_val(node.meta["val"]), **{k: node.meta[k] for k in _META_KEYS}}


def _decode_meta(meta: dict[str, Any]) -> dict[str, Any]:
    return {"val": _decode_val(meta["val"]), **{k: meta[k] for k in _META_KEYS}}


def graph_to_json(gm: fx.GraphModule) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The structure of ``gm`` as JSON-ready data, and the tensors its get_attr nodes read.

    Raises:
        ModelError: a node that is not part of the aten graph contract, naming it.
    """
    if type(gm.graph._codegen) is not fx.graph.CodeGen:
        raise ModelError(
            f"the graph uses {type(gm.graph._codegen).__name__} code generation; only captured "
            "aten graphs (plain fx code generation) can be saved"
        )
    nodes, tensors = [], {}
    for node in gm.graph.nodes:
        entry: dict[str, Any] = {"name": node.name, "op": node.op}
        if node.op == "get_attr":
            value = operator.attrgetter(node.target)(gm)
            if not isinstance(value, torch.Tensor):
                raise ModelError(f"get_attr node {node.name!r} reads a {type(value).__name__}")
            tensors[node.target] = value.detach()
            entry["target"] = node.target
        elif node.op == "call_function":
            entry["target"] = _target_name(node)
        elif node.op == "placeholder":
            entry["target"] = node.target
        elif node.op != "output":
            raise ModelError(f"node {node.name!r} is a {node.op}, not part of an aten graph")
        where = f"node {node.name!r}"
        entry["args"] = _encode(tuple(node.args), where)
        entry["kwargs"] = {k: _encode(v, where) for k, v in node.kwargs.items()}
        entry["meta"] = _encode_meta(node)
        nodes.append(entry)
    return {"format": FORMAT, "nodes": nodes}, tensors


def graph_from_json(structure: dict[str, Any], tensors: dict[str, torch.Tensor]) -> fx.GraphModule:
    """Rebuild the GraphModule that ``graph_to_json`` described, annotated as it was (node names
    kept, so a plan made for the original places this one)."""
    if structure.get("format") != FORMAT:
        raise ModelError(f"not a saved torch_chrion graph (format {structure.get('format')!r})")
    root = torch.nn.Module()
    graph = fx.Graph()
    nodes: dict[str, fx.Node] = {}
    try:
        for entry in structure["nodes"]:
            name, op = entry["name"], entry["op"]
            args = _decode(entry["args"], nodes)
            kwargs = {k: _decode(v, nodes) for k, v in entry["kwargs"].items()}
            if op == "get_attr":
                target = entry["target"]
                if target not in tensors:
                    raise ModelError(f"the saved graph reads tensor {target!r}, which is missing")
                _set_tensor(root, target, tensors[target])
            elif op == "call_function":
                target = _resolve_target(entry["target"])
            elif op in ("placeholder", "output"):
                target = entry["target"] if op == "placeholder" else "output"
            else:
                raise ModelError(f"the saved graph has a node of unknown kind {op!r}")
            node = graph.create_node(op, target, args, kwargs, name=name)
            if node.name != name:
                raise ModelError(f"the saved graph names two nodes {name!r}")
            node.meta.update(_decode_meta(entry["meta"]))
            nodes[name] = node
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"the saved graph is malformed: {exc!r}") from exc
    return fx.GraphModule(root, graph)


def _set_tensor(root: torch.nn.Module, target: str, value: torch.Tensor) -> None:
    *path, leaf = target.split(".")
    owner = root
    for part in path:
        if not hasattr(owner, part):
            owner.add_module(part, torch.nn.Module())
        owner = getattr(owner, part)
    owner.register_buffer(leaf, value)


def save_graph(gm: fx.GraphModule, structure_path: Path, tensors_path: Path) -> None:
    """Write ``gm`` as JSON plus a weights-only tensor file."""
    structure, tensors = graph_to_json(gm)
    structure_path.write_text(json.dumps(structure, indent=1))
    torch.save(tensors, tensors_path)


def load_graph(
    structure_path: str | os.PathLike, tensors_path: str | os.PathLike
) -> fx.GraphModule:
    """Read a graph written by ``save_graph``; no code from the files runs."""
    from ..ops import ensure_loaded

    ensure_loaded()  # chrion:: operators are looked up by name
    try:
        structure = json.loads(Path(structure_path).read_text())
        tensors = torch.load(tensors_path, weights_only=True, map_location="cpu")
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ModelError(f"cannot read the saved graph {structure_path}: {exc}") from exc
    if not isinstance(tensors, dict) or not all(
        isinstance(v, torch.Tensor) for v in tensors.values()
    ):
        raise ModelError(f"{tensors_path} does not hold a dict of tensors")
    return graph_from_json(structure, tensors)
