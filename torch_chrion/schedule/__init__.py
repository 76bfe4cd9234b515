"""torch_chrion.schedule: place and order the tasks of a DAG on heterogeneous devices."""

from .heft import heft, upward_rank
from .milp import MilpResult, milp_schedule
from .random_dag import random_task_graph
from .simulate import Simulation, simulate
from .solve import solve
from .task_graph import Schedule, TaskGraph

__all__ = [
    "MilpResult",
    "Schedule",
    "Simulation",
    "TaskGraph",
    "heft",
    "milp_schedule",
    "random_task_graph",
    "simulate",
    "solve",
    "upward_rank",
]
