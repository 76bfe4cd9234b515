"""The online half of torch_chrion: a placed aten graph run by the C++ executor, one worker
thread per lane ("cpu", "cpu:N", "cuda:N"), every lane busy at once."""

from .calibrate import executor_costs
from .placed_graph import PlacedGraph

__all__ = ["PlacedGraph", "executor_costs"]
