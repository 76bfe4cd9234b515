"""PlacedGraph: an nn.Module that runs a placed aten graph on the C++ executor."""

from __future__ import annotations

import contextlib
import functools
import os
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.fx
import torch.utils._pytree as pytree
from torch import nn

from .. import _extension
from ..errors import ModelError, PlanError
from .device_graphs import CapturedSegment, CudaCapture, RecordedCapture, group_segments
from .lanes import lane_specs
from .lowering import flatten_for_cudnn, lower
from .trace import MemorySample, TraceEvent, save_chrome_trace


def _stop_executor(executor: Any, timeout_s: float) -> bool:
    return executor.stop(timeout_s)


@functools.cache
def executor_extension() -> Any:
    """The executor extension, with its fork handlers registered once per process.

    After ``os.fork()`` the child has none of the parent's lane threads: the child handler
    forgets them (they are never waited on, so exit cannot hang), and each module starts new
    lanes on its first call in the child (Note [Chrion lanes] in csrc/executor/lane.h). The
    pool is locked across the fork so that the child never sees it half-updated.
    """
    extension = _extension.load("executor")
    os.register_at_fork(
        before=extension.before_fork,
        after_in_parent=extension.after_fork_in_parent,
        after_in_child=extension.after_fork_in_child,
    )
    return extension


@contextlib.contextmanager
def spin_before_park(us: float) -> Iterator[None]:
    """Lanes and callers poll ``us`` microseconds before they park (0: at once) inside the
    block, process-wide (Note [Chrion spin before park] in csrc/executor/lane.h); the setting
    before it is restored after."""
    executor = executor_extension()
    before = executor.spin_before_park_us()
    executor.set_spin_before_park_us(us)
    try:
        yield
    finally:
        executor.set_spin_before_park_us(before)


def _output_assembler(
    leaves: Sequence[tuple[str, Any]], spec: pytree.TreeSpec
) -> Callable[[Sequence[Any]], Any]:
    """What turns the executor's outputs into the graph's output structure. A tuple or list of
    plain outputs (what a captured graph returns) is built directly: pytree's general unflatten cost
    ~5 us per request, a tenth of a small model's whole call."""
    if all(kind == "out" for kind, _ in leaves):
        picks = [int(value) for _, value in leaves]
        flat_sequence = spec.type in (tuple, list) and all(c.is_leaf() for c in spec.children())
        if flat_sequence and picks == list(range(len(picks))):
            kind = spec.type
            return lambda results: kind(results[: len(picks)])
        if spec.is_leaf() and len(picks) == 1:
            only = picks[0]
            return lambda results: results[only]

    def unflatten(results: Sequence[Any]) -> Any:
        flat = [results[value] if kind == "out" else value for kind, value in leaves]
        return pytree.tree_unflatten(flat, spec)

    return unflatten


class PlacedGraph(nn.Module):
    """Runs ``gm`` with each node on its lane, every lane a C++ worker thread.

    Args:
        gm: the aten graph: placeholders, get_attr weights, call_function nodes on OpOverloads
            (aten::*, chrion::*) and operator.getitem, one output. Other callables run as
            Python steps under the GIL (listed in ``python_nodes``).
        placement: lane ("cpu", "cpu:N", "cuda:N") of every schedulable node, by name.
        order: global priority order of the schedulable nodes; each lane runs its ready nodes
            in this order. Default: the graph's (topological) order.
        cpu_threads: intra-op threads per CPU lane (default: torch.get_num_threads() shared
            evenly among the CPU lanes, at least 1).
        plan: the Plan this placement came from, stored as ``.plan``.
        wide: node name -> the CPU lanes it holds, its placed lane first (a Plan's ``wide``):
            such a node runs with the intra-op threads of all of them while they run nothing
            else (Note [Chrion wide steps] in csrc/executor/program.cpp).
        device_graphs: run each segment of a device lane's nodes (consecutive in plan order,
            Note [Device graph segments] in runtime/device_graphs.py) as one captured graph
            replayed per call: CUDA graphs on CUDA lanes. ``device_graphs()`` lists the segments.
        fuse_elementwise: run each chain of small elementwise CPU nodes (add, sub, mul, neg,
            relu, consecutive on one lane, each read only by the next) as one step; results
            are bitwise those of the unfused calls (Note [Chrion elementwise chains] in
            csrc/executor/elementwise.h). ``fused_chains()`` lists them.

    Raises:
        PlanError: unknown or missing nodes in ``placement``/``order``, or a graph the executor
            cannot compile (the message names the node).
        OptionError: an unknown lane string, or a CUDA lane without CUDA.

    Each lane runs its nodes in the order of ``order``, on every call. Lanes (one worker thread
    each) belong to the process and are shared by every module that names them; a lane's
    thread stops when the last module using it stops. Calls are thread-safe: concurrent calls
    run as independent requests on the same lanes. An operator failure raises
    torch_chrion.errors.ExecutionError with ``.node``, ``.lane`` and ``.op`` (a Python node's
    own exception is its ``__cause__``); the module keeps working. Warnings raised on lanes are
    re-raised on the caller's thread. A module stops when it is garbage-collected, at
    interpreter exit, or on ``stop()``. In a process forked from the one that built it, the
    module starts new lanes on its first call.
    """

    def __init__(
        self,
        gm: torch.fx.GraphModule,
        placement: Mapping[str, str],
        order: Sequence[str] | None = None,
        *,
        cpu_threads: int | None = None,
        plan: object | None = None,
        wide: Mapping[str, Sequence[str]] | None = None,
        fuse_elementwise: bool = True,
        device_graphs: bool = False,
    ) -> None:
        super().__init__()
        self._segments: list[CapturedSegment] = []
        if device_graphs:
            captures = {
                lane.name: RecordedCapture if lane.fake else CudaCapture
                for lane in lane_specs(placement.values())
                if lane.physical != "cpu"
            }
            gm, placement, order, self._segments = group_segments(
                gm, placement, order, captures, prepare=flatten_for_cudnn
            )
        lowered = lower(gm, placement, order, cpu_threads, wide, fuse_elementwise)
        extension = executor_extension()
        try:
            executor = extension.Executor(lowered.description)
        except (ValueError, RuntimeError) as exc:
            raise PlanError(f"cannot compile the graph for the executor: {exc}") from exc
        self._executor = executor
        self._stop = weakref.finalize(self, _stop_executor, executor, 10.0)
        self._lowered = lowered
        self._codegen = gm.graph._codegen
        # the base CodeGen passes inputs and outputs through: skip its two calls per request
        self._plain_codegen = type(self._codegen) is torch.fx.graph.CodeGen
        self._assemble = _output_assembler(lowered.output_leaves, lowered.output_spec)
        self._steps = executor.steps()
        self._tracing = False
        self._cpu_only = all(lane.physical == "cpu" for lane in lowered.lanes)
        self.plan = plan
        self.lanes: list[str] = [lane.name for lane in lowered.lanes]
        self.python_nodes: list[str] = list(lowered.python_nodes)

    def forward(self, *inputs: Any) -> Any:
        """Run the graph on ``inputs``; returns what ``gm(*inputs)`` returns."""
        flat = inputs if self._plain_codegen else self._codegen.process_inputs(*inputs)
        if len(flat) != self._lowered.num_inputs:
            raise ModelError(f"the graph takes {self._lowered.num_inputs} inputs, got {len(flat)}")
        if self._cpu_only:  # inputs of a mixed program are copied by its copy steps
            flat = [x.cpu() if isinstance(x, torch.Tensor) else x for x in flat]
        outputs = self._assemble(self._executor.run(flat, self._tracing))
        return outputs if self._plain_codegen else self._codegen.process_outputs(outputs)

    def fused_chains(self) -> list[list[str]]:
        """Node names of each chain of elementwise nodes run as one step, first node first."""
        return [list(chain) for chain in self._executor.fused_chains()]

    def device_graphs(self) -> list[dict[str, Any]]:
        """Each segment run as a device graph: its ``nodes`` (plan order), ``lane``, input
        signatures captured (``captures``), ``replays``, ``eager_calls`` (first calls of a
        signature, and every call after a failed capture) and ``failure`` (None, or why the
        capture failed). Its step is named ``device_graph_<first node>`` in traces."""
        return [segment.status() for segment in self._segments]

    def enable_trace(self, enabled: bool = True) -> None:
        """Record every step's start and end per lane on the following calls."""
        self._tracing = bool(enabled)

    def last_trace(self) -> list[TraceEvent]:
        """Steps of the last traced call that finished, by start time."""
        raw = self._executor.last_trace()
        if not raw:
            return []
        origin = min(start for _, _, _, start, _ in raw)
        events = []
        for step, lane, request, start, end in raw:
            name, op, _ = self._steps[step]
            events.append(
                TraceEvent(
                    name,
                    op,
                    self.lanes[lane],
                    request,
                    (start - origin) / 1e3,
                    (end - origin) / 1e3,
                )
            )
        return events

    def save_trace(self, path: str | Path, memory: Sequence[MemorySample] = ()) -> Path:
        """Write the last trace (and ``memory``, from ``trace.record_memory``) as Chrome /
        Perfetto trace JSON, one row per lane."""
        return save_chrome_trace(self.last_trace(), self.lanes, path, memory)

    def transfer_stats(self) -> dict[str, int]:
        """Cross-device copies so far: host_to_device, device_to_host, pinned (copies whose host
        side was page-locked) and bytes."""
        return dict(self._executor.transfer_stats())

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Refuse further calls (ExecutionError), wait for running ones, and release the
        lanes; a lane's thread is joined when no other module uses it.

        Returns:
            False if a call or a lane did not finish within ``timeout_s`` (stuck in an
            operator); such a thread is left to finish on its own, holding what it reads.
        """
        if not self._stop.alive:
            return True
        self._stop.detach()
        return _stop_executor(self._executor, timeout_s)

    def extra_repr(self) -> str:
        return (
            f"lanes={self.lanes}, steps={len(self._steps)}, python_nodes={len(self.python_nodes)}"
        )
