"""The aten graph: capture a module to a device-portable graph and split its recurrent nodes."""

from .capture import capture
from .hashing import graph_hash
from .passes import split_recurrent

__all__ = ["capture", "graph_hash", "split_recurrent"]
