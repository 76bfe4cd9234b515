"""Which converter each ONNX node needs, which are missing, and bringing opsets down.

A node's converter is keyed by (domain, op_type, since_version), where since_version is the
version of the operator's schema in force at the model's opset for that domain (resolved
with ``onnx.defs.get_schema``), exactly as onnx2torch's registry resolves it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import onnx
import onnx.defs
import onnx.version_converter

from . import _onnx2torch

_LOG = logging.getLogger(__name__)

# how many lower opsets normalise_opsets tries with onnx.version_converter before giving up
_MAX_CONVERSION_ATTEMPTS = 3
_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class NodeKey:
    """The converter a node needs, and where the node is (for messages)."""

    domain: str
    op_type: str
    opset: int  # the model's opset for the node's domain
    version: int  # the schema's since_version at that opset
    node_name: str
    graph_name: str

    def describe(self) -> str:
        domain = f"{self.domain}::" if self.domain else ""
        where = f" in subgraph {self.graph_name!r}" if self.graph_name else ""
        return (
            f"{domain}{self.op_type} (opset {self.opset}, schema version {self.version}) "
            f"at node {self.node_name or '<unnamed>'!r}{where}"
        )


def is_default_domain(domain: str) -> bool:
    """Whether a node or opset domain names the default ONNX domain ("" or "ai.onnx")."""
    return domain in _DEFAULT_DOMAINS


def opset_imports(model: onnx.ModelProto) -> dict[str, int]:
    """Domain -> opset version, with the default domain under "" whichever way it is spelt."""
    imports = {}
    for entry in model.opset_import:
        domain = "" if entry.domain in _DEFAULT_DOMAINS else entry.domain
        imports[domain] = entry.version
    return imports


def default_opset(model: onnx.ModelProto) -> int:
    """The model's opset for the default ONNX domain (1 where the model does not import it)."""
    return opset_imports(model).get("", 1)


def iter_nodes(
    graph: onnx.GraphProto, graph_name: str = ""
) -> Iterator[tuple[onnx.NodeProto, str]]:
    """Every node of a graph and of its subgraphs (If/Loop/Scan bodies), with the subgraph's
    name ("" for the main graph)."""
    for node in graph.node:
        yield node, graph_name
        for attribute in node.attribute:
            subgraphs = list(attribute.graphs)
            if attribute.HasField("g"):
                subgraphs.append(attribute.g)
            for subgraph in subgraphs:
                label = f"{node.name or node.op_type}.{attribute.name}"
                yield from iter_nodes(subgraph, label)


def schema_version(domain: str, op_type: str, opset: int) -> int:
    """The since_version of the operator's schema in force at ``opset`` (``opset`` itself
    where ONNX has no schema for it, as onnx2torch does)."""
    try:
        return onnx.defs.get_schema(
            op_type, max_inclusive_version=opset, domain=domain
        ).since_version
    except (onnx.defs.SchemaError, RuntimeError):
        return opset


def node_keys(model: onnx.ModelProto, default_opset_override: int | None = None) -> list[NodeKey]:
    """The converter key of every node, subgraphs included."""
    imports = opset_imports(model)
    if default_opset_override is not None:
        imports[""] = default_opset_override
    keys = []
    for node, graph_name in iter_nodes(model.graph):
        domain = "" if node.domain in _DEFAULT_DOMAINS else node.domain
        opset = imports.get(domain, 1)
        version = schema_version(domain, node.op_type, opset)
        keys.append(NodeKey(domain, node.op_type, opset, version, node.name, graph_name))
    return keys


def missing_converters(
    model: onnx.ModelProto, default_opset_override: int | None = None
) -> list[NodeKey]:
    """The nodes no registered converter handles, in graph order."""
    return [
        key
        for key in node_keys(model, default_opset_override)
        if not _onnx2torch.has_converter(key.domain, key.op_type, key.version)
    ]


def normalise_opsets(model: onnx.ModelProto, name: str = "<model>") -> onnx.ModelProto:
    """Bring the model's default-domain opset down where that makes every node convertible.

    Where some node has no converter at the model's opset but every node has one at a lower
    opset, the model is rewritten with ``onnx.version_converter`` (trying up to three lower
    opsets, highest first). A model that converts as it is, or that no lower opset helps, is
    returned unchanged: to_fx then names the unsupported nodes.
    """
    if not missing_converters(model):
        return model
    if any(key.domain for key in missing_converters(model)):
        return model  # custom domains: version_converter only knows the default domain
    attempts = 0
    for target in range(default_opset(model) - 1, 6, -1):
        if missing_converters(model, default_opset_override=target):
            continue
        attempts += 1
        try:
            converted = onnx.version_converter.convert_version(model, target)
        except Exception as exc:  # the converter raises bare RuntimeError/ValueError/C++ errors
            _LOG.info("%s: onnx.version_converter to opset %d failed: %s", name, target, exc)
        else:
            if not missing_converters(converted):
                _LOG.info("%s: opset %d -> %d", name, default_opset(model), target)
                return converted
        if attempts >= _MAX_CONVERSION_ATTEMPTS:
            break
    return model
