"""The aten graph: capture a module to a device-portable graph and split its recurrent nodes."""

from .capture import capture
from .hashing import graph_hash
from .passes import split_recurrent
from .serialize import load_graph, save_graph

__all__ = ["capture", "graph_hash", "load_graph", "save_graph", "split_recurrent"]
