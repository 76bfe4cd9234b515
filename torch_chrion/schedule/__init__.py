"""torch_chrion.schedule: place and order the tasks of a DAG on heterogeneous devices.

Usable on its own with any task graph: build a ``TaskGraph`` (costs per task and device,
transfer time per edge), then ``heft`` (the published algorithm), ``solve`` (the project's
heuristic, latency or memory objective under an SLO), ``milp_schedule`` (exact, small graphs),
and ``simulate`` (scores any Schedule). ``make_plan`` does it for an aten graph and a Profile.
"""

from .from_graph import task_graph_from
from .heft import heft, upward_rank
from .memory import accelerator_bytes, working_set_bound
from .milp import MilpResult, milp_schedule
from .plan import SCHEMA_VERSION, Plan, make_plan, make_plans
from .random_dag import random_task_graph
from .simulate import Simulation, simulate
from .solve import solve
from .task_graph import Schedule, TaskGraph, cpu_lanes_share_memory

__all__ = [
    "SCHEMA_VERSION",
    "MilpResult",
    "Plan",
    "Schedule",
    "Simulation",
    "TaskGraph",
    "accelerator_bytes",
    "cpu_lanes_share_memory",
    "heft",
    "make_plan",
    "make_plans",
    "milp_schedule",
    "random_task_graph",
    "simulate",
    "solve",
    "task_graph_from",
    "upward_rank",
    "working_set_bound",
]
