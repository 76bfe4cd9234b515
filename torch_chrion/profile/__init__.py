"""Per-node, per-lane costs of an aten graph, and the Profile that carries them."""

from .profile import Profile
from .profiler import profile_graph

__all__ = ["Profile", "profile_graph"]
