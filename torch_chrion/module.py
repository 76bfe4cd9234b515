"""ChrionModule: a model compiled by torch_chrion, ready to serve.

One pipeline for both front ends (ONNX and torch.compile): capture an aten graph for the
input shapes (graph/), measure each node on each lane (profile/), place it (schedule/), and run
it in the C++ executor (runtime/).

Note [Shape buckets]: plans are kept per shape bucket (every dimension rounded up to a power of
two). A request never waits for profiling:

- the example inputs' bucket is profiled and planned at compile time (or by ``warmup``);
- the first call in a new bucket runs at once on the plan of the nearest planned bucket (a plan
  is placement and order by node name, valid for any graph with the same nodes), its
  predictions scaled by the buckets' sizes (a borrowed plan lends itself too: scheduling anew
  would put the scheduler's search on the request path); the bucket is queued for profiling on
  a background thread (``settings.profile_budget_s``), and its own plan, with its executable
  built off the request path, replaces the borrowed one in one step when ready;
- background work runs its steps in the lulls between requests (_Traffic): each profiling run,
  the scheduler's search and the new executable's first run wait until no request has run for
  a few milliseconds, and a profiling run that a request overlapped is not counted.

Graphs: a torch.compile graph is shape-generic (Note [Dynamic shapes] in dynamo.py): one graph
and one executable per plan serve every shape, so a new length costs a dictionary look-up. An
ONNX model (onnx2torch modules read shapes as values) is captured again per exact shape.
Executables are kept per exact input shape, least recently used dropped past ``_MAX_SHAPES``.
"""

from __future__ import annotations

import atexit
import collections
import copy
import dataclasses
import logging
import math
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .errors import ChrionError, ModelError, PlanError
from .inputs import InputSignature
from .session import SessionMixin, to_numpy
from .settings import ChrionSettings

log = logging.getLogger(__name__)

# Executables kept per exact input shape; the least recently used is dropped past this many.
_MAX_SHAPES = 64
# Plans kept process-wide (below), the least recently used dropped past this many.
_MAX_SHARED_PLANS = 256

# Plans made in this process, by (graph structure, shape bucket, plan settings, lanes): every
# module of the same model and bucket (Dynamo's graphs, reloads) reuses them.
_PLANS: dict[tuple, Any] = {}  # insertion order is recency: a hit is moved to the end
_PLANS_LOCK = threading.Lock()


# The cache holds and hands out copies: a plan is plain data that its module exposes
# (``module.plan``), and what a user does to their module's plan must not reach other modules.
def _shared_plan(key: tuple) -> Any | None:
    with _PLANS_LOCK:
        plan = _PLANS.pop(key, None)
        if plan is not None:
            _PLANS[key] = plan
        return copy.deepcopy(plan)


def _share_plan(key: tuple, plan: Any) -> None:
    with _PLANS_LOCK:
        _PLANS.pop(key, None)
        _PLANS[key] = copy.deepcopy(plan)
        while len(_PLANS) > _MAX_SHARED_PLANS:
            del _PLANS[next(iter(_PLANS))]


def default_devices() -> tuple[str, ...]:
    """The host and the first GPU; without a GPU, two CPU lanes where there are two cores."""
    if torch.cuda.is_available():
        return ("cpu", "cuda:0")
    return ("cpu:0", "cpu:1") if (os.cpu_count() or 1) >= 2 else ("cpu",)


def _signature(inputs: Sequence[Any]) -> tuple:
    return tuple(
        (tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else (type(x), x) for x in inputs
    )


def _up(d: int) -> int:
    return 1 << max(d - 1, 0).bit_length()


def _bucket(signature: tuple) -> tuple:
    return tuple(
        (tuple(_up(d) for d in shape), dtype)
        if isinstance(shape, tuple)
        else (shape, _up(dtype) if shape is int else dtype)  # a SymInt size: its bucket too
        for shape, dtype in signature
    )


def _bucket_size(bucket: tuple) -> float:
    """Elements of a bucket's inputs: what a borrowed plan's predictions are scaled by."""
    total = 0.0
    for shape, _ in bucket:
        if isinstance(shape, tuple):
            total += math.prod(shape)
    return max(total, 1.0)


def _bucket_distance(a: tuple, b: tuple) -> float:
    """How far apart two buckets are (log2 steps summed over dimensions); inf if unrelated."""
    if len(a) != len(b):
        return math.inf
    distance = 0.0
    for (shape_a, kind_a), (shape_b, kind_b) in zip(a, b, strict=True):
        if isinstance(shape_a, tuple) and isinstance(shape_b, tuple):
            if kind_a != kind_b or len(shape_a) != len(shape_b):
                return math.inf
            distance += sum(
                abs(math.log2(x or 1) - math.log2(y or 1))
                for x, y in zip(shape_a, shape_b, strict=True)
            )
        elif shape_a is int and shape_b is int:
            distance += abs(math.log2(kind_a or 1) - math.log2(kind_b or 1))
        elif (shape_a, kind_a) != (shape_b, kind_b):
            return math.inf
    return distance


def _structure(gm: torch.fx.GraphModule) -> tuple:
    """What a plan depends on besides shapes: the operators and the shapes of the weights."""
    key = []
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            key.append(("get_attr", tuple(getattr(gm, node.target).shape)))
        else:
            key.append((node.op, str(node.target)))
    return tuple(key)


def _borrowed(plan: Any, source: tuple, target: tuple) -> Any:
    """``plan`` (made for bucket ``source``) for bucket ``target``: the same placement and
    order, predictions scaled by the buckets' sizes (recurrent work grows with the length)."""
    scale = _bucket_size(target) / _bucket_size(source)
    return dataclasses.replace(
        plan,
        start_ms={k: v * scale for k, v in plan.start_ms.items()},
        finish_ms={k: v * scale for k, v in plan.finish_ms.items()},
        predicted_ms=plan.predicted_ms * scale,
    )


class BackgroundStopped(Exception):
    """Background planning stopped because the process is exiting (Note [Planner at exit])."""


class _Traffic:
    """The requests of every ChrionModule of the process, so that background planning runs its
    steps in the lulls between them (Note [Shape buckets]), and a background profile does not
    count the graph runs that a request overlapped."""

    # how long no request must have run before background work starts
    QUIET_S = 0.005

    def __init__(self) -> None:
        # every request takes the bare lock (a C call); only the background thread needs the
        # Condition around it (its Python-level enter/exit cost a request ~2 us)
        self._lock = threading.Lock()
        self._lull = threading.Condition(self._lock)
        self._running = 0
        self._started = 0  # requests started so far: the tokens of ``disturbed``
        self._last_end = 0.0
        self._closed = False
        self._waiting = 0  # background threads waiting for the running requests to end

    def close(self) -> None:
        """The process is exiting: background work stops at its next ``wait``."""
        with self._lull:
            self._closed = True
            self._lull.notify_all()

    def __enter__(self) -> None:
        with self._lock:
            self._running += 1
            self._started += 1

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self._running -= 1
            self._last_end = time.monotonic()
            if not self._running and self._waiting:
                self._lull.notify_all()

    def wait(self) -> int:
        """Block until no request has run for QUIET_S; a token for ``disturbed``. Raises
        BackgroundStopped once the process is exiting."""
        with self._lull:
            while True:
                if self._closed:
                    raise BackgroundStopped("the process is exiting")
                if self._running:
                    self._waiting += 1
                    try:
                        self._lull.wait()
                    finally:
                        self._waiting -= 1
                    continue
                quiet = self._last_end + self.QUIET_S - time.monotonic()
                if quiet <= 0:
                    return self._started
                self._lull.wait(quiet)

    def disturbed(self, token: int) -> bool:
        with self._lull:
            return self._running > 0 or self._started != token


_TRAFFIC = _Traffic()
# a child forked while a request ran would wait for it forever
os.register_at_fork(after_in_child=_TRAFFIC.__init__)


class _Planner:
    """A background thread that profiles and plans queued shape buckets, one at a time (two
    profiles at once would measure each other), in the lulls between requests. It ends when the
    queue drains, and the next submit starts another (Note [Planner ends when idle])."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Callable[[], None]] = queue.Queue()
        self._pid = -1  # the process whose planner thread is running, -1 while none is
        self._lock = threading.Lock()
        self._idle = threading.Condition()
        self._pending = 0
        self._closing = False
        atexit.register(self._close)

    # Note [Planner at exit]
    # The planner is a daemon thread, and Python stops daemon threads at finalization by
    # ending them (pthread_exit) where they next take the GIL. A planner inside the executor
    # or an ATen call (the GIL released) would then unwind through C++ frames that cannot be
    # unwound, and the process aborted ("terminate called without an active exception", in
    # about one exit of three right after calls at new lengths). So at exit, before
    # finalization, the running job is stopped at its next lull check (BackgroundStopped) and
    # waited for; queued jobs are dropped.
    EXIT_WAIT_S = 30.0

    # Note [Planner ends when idle]
    # A background profile runs the graph's wide steps on the planner thread, as the executor
    # hands them to their caller (Note [Chrion caller lane] in csrc/executor/executor.cpp), so
    # the planner becomes the master of an OpenMP team of its own. libgomp keeps a thread's
    # team until the thread exits, and while the process has more OpenMP threads than cores it
    # throttles spin-waiting in every team: a long-lived planner left the user's eager code
    # 1.8-2.2x slower for the rest of the process once one background profile had run (the
    # CRDNN speech model: 168-216 ms against 78-99 ms). A planner that exits when its queue is
    # empty takes its team with it.

    def _close(self) -> None:
        self._closing = True
        _TRAFFIC.close()
        if self._pid == os.getpid() and not self.wait(self.EXIT_WAIT_S):
            log.warning(
                "chrion: background planning did not stop within %.0f s of exit",
                self.EXIT_WAIT_S,
            )

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:  # the job is queued where the thread decides to end (_work)
            if self._pid != os.getpid():  # none running, or a forked child without the thread
                if self._pid != -1:  # a forked child: the parent's jobs are not ours
                    self._queue = queue.Queue()
                    with self._idle:
                        self._pending = 0
                threading.Thread(target=self._work, name=_PLANNER_THREAD, daemon=True).start()
                self._pid = os.getpid()
            with self._idle:
                self._pending += 1
            self._queue.put(job)

    def wait(self, timeout: float | None) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def _work(self) -> None:
        while True:
            with self._lock:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    self._pid = -1
                    return
            try:
                if not self._closing:
                    _TRAFFIC.wait()
                    job()
            except Exception:  # a failed background plan leaves the borrowed one in place
                if self._closing:  # BackgroundStopped, or lanes stopped under the job
                    log.debug("chrion: background planning stopped at exit", exc_info=True)
                else:
                    log.exception("chrion: background planning failed")
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()


_PLANNER_THREAD = "chrion-planner"
_PLANNER = _Planner()


@dataclasses.dataclass
class _Entry:
    """What a shape needs to run: its graph and the executable of its bucket's plan."""

    graph: torch.fx.GraphModule
    executable: Any
    bucket: tuple
    # recomputes the graph's derived weights whose sources the caller changed (Note [Derived
    # weights follow the model] in graph/derived_weights.py)
    refresh_weights: Callable[[], None]


class ChrionModule(SessionMixin, torch.nn.Module):
    """A model placed over CPU and GPU lanes; call it like the original model.

    Attributes:
        plan: the Plan of the example inputs' shape bucket (save it with ``plan.save(path)``).
        plans: every Plan made so far, by shape bucket (borrowed ones included until their
            bucket's own plan replaces them).
        settings: the ChrionSettings it was compiled with, "auto" granularity resolved.
        stats: counts of what happened: ``captures``, ``profiles`` (made on the request
            path or at compile/warmup time), ``background_profiles``, ``borrowed_plans``,
            ``derived_plans`` (of those, the ones scheduled from another bucket's profile, as
            no plan fitted), ``plan_swaps``, ``executables_built``, ``calls``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        example_inputs: Sequence[Any],
        settings: ChrionSettings,
        *,
        plan: Any | None = None,
        recorded_profile: Any | None = None,
        shape_generic: bool = False,
        reference: ChrionModule | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.devices = settings.devices or default_devices()
        self.settings = settings.resolve_granularity(
            self.devices, plan.granularity if plan is not None else None
        )
        self.recorded_profile = recorded_profile
        self.plans: dict[tuple, Any] = {}
        self.stats: collections.Counter[str] = collections.Counter()
        self._given_plan = plan
        self._generic = model if shape_generic else None
        # the graph that serves several shapes: Dynamo's shape-generic one (every shape), or a
        # length-generic capture (Note [Length-generic captures]) for the shapes that differ
        # from the example only in ``_shared_dim`` (input index, dimension)
        self._shared: torch.fx.GraphModule | None = self._generic
        self._shared_dim: tuple[int, int] | None = None
        self._profiles: dict[tuple, Any] = {}  # bucket -> its measured Profile
        # another module of the same model (Dynamo's static graph, say): its profiles derive
        # this one's first plan, so a second Dynamo graph is not profiled on the request path
        self._reference = weakref.ref(reference) if reference is not None else None
        if shape_generic:
            self.stats["captures"] = 1  # the graph was captured once, by dynamo.py
        self._own_plans: set[tuple] = set()  # buckets planned from their own profile
        self._queued: set[tuple] = set()
        self._entries: collections.OrderedDict[tuple, _Entry] = collections.OrderedDict()
        # shape-generic graph: one executable per distinct placement and order
        self._by_plan: dict[tuple, Any] = {}
        self._lock = threading.RLock()
        self._last: Any | None = None
        self._trace = False
        example_inputs = tuple(example_inputs)
        self.input_signature = InputSignature.of(model, example_inputs)  # checks the example
        signature = _signature(example_inputs)
        self._primary = _bucket(signature)
        self._primary_signature = signature
        # what warmup's integer inputs take (lengths, token ids): made-up ones may not be valid
        self._example_integers = {
            position: x.detach().clone()
            for position, x in enumerate(example_inputs)
            if isinstance(x, torch.Tensor) and not x.dtype.is_floating_point
        }
        with self._lock:
            graph = self._graph_for(example_inputs)
            if self._generic is None:
                graph = self._length_generic(graph, example_inputs)
            self._plan_now(self._primary, graph, example_inputs, derive=reference is not None)
            self._primary_graph = graph
            self._add_entry(signature, graph, self._primary)
        self.input_signature = self.input_signature.with_recurrent_sizes(self.captured_graph())

    # -- public -----------------------------------------------------------------------------
    @property
    def plan(self) -> Any:
        return self.plans[self._primary]

    @property
    def profiles_made(self) -> int:
        """Profiles measured or loaded from the cache by this module, in any thread."""
        return self.stats["profiles"] + self.stats["background_profiles"]

    @property
    def python_nodes(self) -> list[str]:
        """Nodes of the example inputs' graph that run as Python callables under the GIL (ONNX
        If/Loop/Scan), not as one dispatcher call: counted and shown, never hidden."""
        return list(self._entries[self._primary_signature].executable.python_nodes)

    def device_graphs(self) -> list[dict[str, Any]]:
        """The example inputs' executable's device graph segments (``cuda_graphs``; Note [Device
        graph segments] in runtime/device_graphs.py): per segment its nodes, lane, captures,
        replays, eager calls and failure (None, or why it could not be captured)."""
        return self._entries[self._primary_signature].executable.device_graphs()

    def captured_graph(self) -> torch.fx.GraphModule:
        """The aten graph captured for the example inputs (what the plan places)."""
        return self._primary_graph

    def forward(self, *inputs: Any, **named: Any) -> Any:
        """Run on ``inputs`` (torch tensors, or numpy arrays for numpy outputs), positional or
        by input name (see torch_chrion.session)."""
        inputs, as_numpy = self._session_inputs(inputs, named)
        if as_numpy:
            return to_numpy(self.forward(*inputs))
        self.input_signature.check(inputs)  # before any capture, profile or run (inputs.py)
        signature = _signature(inputs)
        # a request from here on: a new shape queues background work, whose thread must find
        # the request running and wait, not take the GIL for its first step meanwhile
        with _TRAFFIC:
            entry = self._entries.get(signature)
            if entry is None:
                with self._lock:
                    entry = self._entries.get(signature) or self._new_shape(signature, inputs)
            else:
                try:
                    self._entries.move_to_end(signature)
                except KeyError:  # evicted by another thread meanwhile; entry is still usable
                    pass
            entry.refresh_weights()
            executable = entry.executable
            # not a child module: nn.Module's __setattr__ would register it on every call
            object.__setattr__(self, "_last", executable)
            self.stats["calls"] += 1
            return executable.forward(*inputs)  # our own module: no hooks to run

    def warmup(self, shapes: Sequence[Sequence[Any]], *, wait: bool = True) -> None:
        """Prepare shape buckets ahead of traffic: profile, plan and build each bucket of
        ``shapes`` on the calling thread. Each item lists one call's inputs in input order,
        each as a shape or as a tensor to run with as it is (the valid values of an integer
        input, such as sequence lengths); a float input given by its shape gets random values,
        an integer one the example's values where they fit (zeros past them), a non-tensor
        input its value (a SymInt size) or the example's.

        Raises:
            ModelError: a shape list that does not match the model's inputs.
        """
        for index, shape_list in enumerate(shapes):
            inputs = self._inputs_of_shapes(index, shape_list)
            signature = _signature(inputs)
            bucket = _bucket(signature)
            with self._lock:
                graph = self._graph_for(inputs)
                if bucket not in self._own_plans:
                    self._plan_now(bucket, graph, inputs)
                self._add_entry(signature, graph, bucket)
        if wait:
            self.wait_for_plans()

    def wait_for_plans(self, timeout: float | None = None) -> bool:
        """Wait until no background profiling is queued; False on timeout."""
        return _PLANNER.wait(timeout)

    # -- shapes, graphs and plans -------------------------------------------------------------
    def _inputs_of_shapes(self, index: int, shape_list: Sequence[Sequence[int]]) -> tuple:
        example = self._primary_signature
        if len(shape_list) != len(example):
            raise ModelError(
                f"warmup shapes[{index}] gives {len(shape_list)} shapes; the model takes "
                f"{len(example)} inputs"
            )
        inputs: list[Any] = []
        generator = torch.Generator().manual_seed(index)
        for position, ((shape, kind), given) in enumerate(zip(example, shape_list, strict=True)):
            if not isinstance(shape, tuple):
                inputs.append(int(given) if shape is int else kind)
                continue
            if isinstance(given, torch.Tensor):
                if given.dtype != kind or given.dim() != len(shape):
                    raise ModelError(
                        f"warmup shapes[{index}][{position}]: a {given.dtype} tensor of rank "
                        f"{given.dim()}; the model's input is {kind} of rank {len(shape)}"
                    )
                inputs.append(given)
                continue
            given = tuple(int(d) for d in given)
            if len(given) != len(shape):
                raise ModelError(
                    f"warmup shapes[{index}]: {list(given)} has rank {len(given)}; the model's "
                    f"input has rank {len(shape)} ({list(shape)} in the example)"
                )
            if kind.is_floating_point:
                inputs.append(torch.randn(given, generator=generator).to(kind))
            else:
                inputs.append(_integers_like(self._example_integers[position], given))
        return tuple(inputs)

    def _graph_for(self, inputs: Sequence[Any]) -> torch.fx.GraphModule:
        if self._generic is not None:
            return self._generic
        signature = _signature(inputs)
        if self._shared is not None and _differs_only_at(
            signature, self._primary_signature, self._shared_dim
        ):
            return self._shared
        self.stats["captures"] += 1
        return self._capture(signature, inputs)

    def _length_generic(
        self, graph: torch.fx.GraphModule, inputs: Sequence[Any]
    ) -> torch.fx.GraphModule:
        """The example's capture made to serve every size of one dimension the ONNX model
        declares symbolic (Note [Length-generic captures] in graph/generalise.py), tried on
        the dimensions in order of their example size, largest first (a sequence length
        before a batch size): two more captures each, at compile time. ``graph`` itself
        where no dimension qualifies."""
        from .graph.generalise import generalise
        from .inputs import DECLARED_INPUTS

        meta = getattr(self.model, "meta", None)
        declared = meta.get(DECLARED_INPUTS) if isinstance(meta, dict) else None
        if declared is None:
            return graph
        candidates = [
            (index, dim)
            for index, spec in enumerate(declared.specs)
            if isinstance(inputs[index], torch.Tensor) and spec.dims is not None
            for dim, size in enumerate(spec.dims)
            if not isinstance(size, int)
        ]
        candidates.sort(key=lambda c: -inputs[c[0]].shape[c[1]])
        for index, dim in candidates:
            size = inputs[index].shape[dim]
            samples = []
            for other in _other_sizes(size):
                shapes = [tuple(x.shape) if isinstance(x, torch.Tensor) else x for x in inputs]
                shapes[index] = shapes[index][:dim] + (other,) + shapes[index][dim + 1 :]
                varied = self._inputs_like(inputs, shapes)
                self.stats["captures"] += 1
                try:
                    samples.append(self._capture(_signature(varied), varied))
                except Exception as exc:  # noqa: BLE001 - that size is not the model's: no reuse
                    log.info("input %d's dimension %d at %d: %s", index, dim, other, exc)
                    break
            if len(samples) == 2 and generalise([graph, *samples]) is not None:
                self._shared, self._shared_dim = graph, (index, dim)
                log.info(
                    "the captured graph serves every size of input %d's dimension %d", index, dim
                )
                return graph
        return graph

    def _inputs_like(self, inputs: Sequence[Any], shapes: Sequence[Any]) -> tuple:
        """Inputs of ``shapes``: random floats, the example's integers where they fit (token
        ids, lengths), zeros past them."""
        made: list[Any] = []
        generator = torch.Generator().manual_seed(0)
        for x, shape in zip(inputs, shapes, strict=True):
            if not isinstance(x, torch.Tensor):
                made.append(x)
            elif x.dtype.is_floating_point:
                made.append(torch.randn(shape, generator=generator).to(x.dtype))
            else:
                made.append(_integers_like(x, shape))
        return tuple(made)

    def _capture(self, signature: tuple, inputs: Sequence[Any]) -> torch.fx.GraphModule:
        """The aten graph for inputs of this signature (a packaged module reads it from disk)."""
        from . import graph

        try:
            return graph.capture(
                self.model,
                tuple(inputs),
                granularity=self.settings.granularity,
                seq_chunks=self.settings.seq_chunks,
                recurrent_dtype=self.settings.recurrent_dtype,
            )
        except ChrionError:
            raise
        except (RuntimeError, TypeError, ValueError) as exc:
            shapes = [tuple(x.shape) if isinstance(x, torch.Tensor) else x for x in inputs]
            raise ModelError(
                f"could not capture the model for inputs of shapes {shapes}: {exc}"
            ) from exc

    def _shared_key(self, gm: torch.fx.GraphModule, bucket: tuple) -> tuple:
        settings = self.settings
        return (
            _structure(gm),
            bucket,
            tuple(sorted(settings.plan_key().items())),
            self.devices,
        )

    def _planning_graph(self, gm: torch.fx.GraphModule, inputs: Sequence[Any]) -> Any:
        """``gm`` annotated for ``inputs``: a shape-generic graph is copied first (same nodes,
        same weights, its own meta) so that planning one bucket never touches what another
        thread lowers."""
        if gm is not self._shared:
            return gm
        from .graph.annotate import annotate

        copy = torch.fx.GraphModule(gm, _copy_graph(gm.graph))
        return annotate(copy, inputs)

    def _plan_now(
        self, bucket: tuple, gm: torch.fx.GraphModule, inputs: Sequence[Any], derive: bool = False
    ) -> None:
        """The bucket's own plan: the given one, a shared one, or profiled now (counted); with
        ``derive``, one derived from the reference module's profiles, profiled in the
        background."""
        if self._generic is not None and not getattr(gm, "_chrion_split", False):
            self._split_generic(gm, inputs)
        plan = self._reusable_plan(bucket, gm, _shared_plan(self._shared_key(gm, bucket)))
        if plan is not None:
            self._install_plan(bucket, plan)
            return
        if derive:
            self._borrow_plan(bucket, gm, inputs)
            return
        self._install_plan(bucket, self._profile_and_plan(gm, inputs, bucket))
        self.stats["profiles"] += 1

    def _split_generic(self, gm: torch.fx.GraphModule, inputs: Sequence[Any]) -> None:
        """Split the shape-generic graph's recurrent nodes once (layer / direction; the split
        depends on no size), annotated for the example."""
        from .graph.annotate import annotate
        from .graph.passes import fold_input_free, split_recurrent

        annotate(gm, inputs)
        split_recurrent(gm, granularity=self.settings.granularity, seq_chunks=1)
        fold_input_free(gm)
        annotate(gm, inputs)
        gm._chrion_split = True

    def _profile_and_plan(
        self, gm: torch.fx.GraphModule, inputs: Sequence[Any], bucket: tuple
    ) -> Any:
        from . import profile, runtime, schedule

        settings = self.settings
        planning = self._planning_graph(gm, inputs)
        tensors = tuple(inputs)
        log.info(
            "input shape bucket %s has no plan yet: profiling and planning%s",
            _describe(bucket),
            " (in the background)" if threading.current_thread().name == _PLANNER_THREAD else "",
        )
        background = threading.current_thread().name == _PLANNER_THREAD
        prof = profile.profile_graph(
            planning,
            tensors,
            list(self.devices),
            settings=settings,
            cache_dir=settings.cache_dir,
            recorded=self.recorded_profile,
            lull=_TRAFFIC if background else None,
        )
        costs = runtime.executor_costs(self.devices, settings.cpu_threads)  # measured once
        if background:
            _TRAFFIC.wait()  # the scheduler's search holds a core (and the GIL) for a while
        plans = schedule.make_plans(planning, prof, settings, costs=costs)
        plan = (
            plans[0]
            if background or len(plans) == 1
            else self._trial(planning, plans, tensors, costs.team_spin_ms)
        )
        _share_plan(self._shared_key(gm, bucket), plan)
        with self._lock:
            self._profiles[bucket] = prof
        return plan

    def _trial(
        self, gm: torch.fx.GraphModule, plans: list[Any], inputs: tuple, team_spin_ms: float
    ) -> Any:
        """The quicker of ``plans`` timed on ``inputs``, each block after the caller's OpenMP
        team has stopped polling (Note [Plan trials] in runtime/trial.py)."""
        from .runtime import trial

        runners = [self._build(gm, plan) for plan in plans]  # not the module's: not counted
        try:
            with torch.no_grad():
                chosen, ms = trial.quickest(runners, inputs, settle_s=2e-3 * team_spin_ms)
        finally:
            for runner in runners:
                runner.stop()
        self.stats["plan_trials"] += 1
        log.info(
            "timed the plans the replay put close: %s; keeping the %s one",
            ", ".join(
                f"{'whole graph wide' if _wide_whole(p) else 'search'} {m:.3f} ms"
                f" (predicted {p.predicted_ms:.3f})"
                for p, m in zip(plans, ms, strict=True)
            ),
            "first" if chosen == 0 else "second",
        )
        return plans[chosen]

    def _install_plan(self, bucket: tuple, plan: Any) -> None:
        self.plans[bucket] = plan
        self._own_plans.add(bucket)
        self._queued.discard(bucket)

    def _reusable_plan(
        self, bucket: tuple, gm: torch.fx.GraphModule, shared: Any | None
    ) -> Any | None:
        candidates = [self._given_plan] if self._given_plan is not None else []
        candidates += [self.plans[bucket]] if bucket in self._own_plans else []
        candidates += [shared] if shared is not None else []
        for plan in candidates:
            if plan is self._given_plan and not self.plans:
                # the user's plan must fit the model and settings they gave with it
                plan.check_use(gm, self.settings)
                log.info("using the given plan (%s nodes)", len(plan.order))
                return plan
            try:
                plan.validate(gm)
            except PlanError:
                continue
            log.info("reusing the plan of input shape bucket %s", _describe(bucket))
            return plan
        return None

    def _new_shape(self, signature: tuple, inputs: Sequence[Any]) -> _Entry:
        """A shape seen for the first time (under the lock): its bucket's plan, or one
        borrowed from the nearest planned bucket while its own is made in the background."""
        bucket = _bucket(signature)
        graph = self._graph_for(inputs)
        if bucket in self.plans and not _fits(self.plans[bucket], graph):
            del self.plans[bucket]  # an ONNX graph whose nodes changed within the bucket
        if bucket in self.plans:
            log.info("reusing the plan of input shape bucket %s", _describe(bucket))
        else:
            shared = _shared_plan(self._shared_key(graph, bucket))
            plan = self._reusable_plan(bucket, graph, shared)
            if plan is not None:
                self._install_plan(bucket, plan)
            else:
                self._borrow_plan(bucket, graph, inputs)
        return self._add_entry(signature, graph, bucket)

    def _borrow_plan(
        self, bucket: tuple, graph: torch.fx.GraphModule, inputs: Sequence[Any]
    ) -> None:
        """A plan for ``bucket`` made without profiling, its own queued for the background:
        the nearest planned bucket's plan where it fits this graph (its own plan first at equal
        distance, then a borrowed or derived one: placement and order hold for any size, and
        scheduling anew costs the scheduler's search on the request path), else one scheduled
        from the nearest measured profile (node costs by name, scaled by the buckets' sizes)."""
        nearest = sorted(
            self.plans, key=lambda b: (_bucket_distance(b, bucket), b not in self._own_plans)
        )
        for source in nearest:
            if source != bucket and _fits(self.plans[source], graph):
                self.plans[bucket] = _borrowed(self.plans[source], source, bucket)
                how = f"the plan of bucket {_describe(source)}"
                break
        else:
            self.plans[bucket], how = self._derived_plan(bucket, graph, inputs)
        self.stats["borrowed_plans"] += 1
        log.info("new input shape bucket %s runs on %s until profiled", _describe(bucket), how)
        self._queue_profile(bucket, inputs)

    def _derived_plan(
        self, bucket: tuple, graph: torch.fx.GraphModule, inputs: Sequence[Any]
    ) -> tuple[Any, str]:
        from . import runtime, schedule

        profiles = dict(self._profiles)
        reference = self._reference() if self._reference is not None else None
        if reference is not None:
            profiles.update(reference._profiles)
        if not profiles:
            lane = self.devices[0]
            return _single_lane_plan(graph, lane, self.settings), f"lane {lane} alone"
        source = min(profiles, key=lambda b: _bucket_distance(b, bucket))
        if math.isinf(_bucket_distance(source, bucket)):
            source = next(iter(profiles))
        scale = _bucket_size(bucket) / _bucket_size(source)
        planning = self._planning_graph(graph, inputs)
        derived = _scaled_profile(profiles[source], planning, scale)
        costs = runtime.executor_costs(self.devices, self.settings.cpu_threads)
        plan = schedule.make_plan(planning, derived, self.settings, costs=costs)
        self.stats["derived_plans"] += 1
        return plan, f"a plan scheduled from bucket {_describe(source)}'s profile x{scale:.2g}"

    def _queue_profile(self, bucket: tuple, inputs: Sequence[Any]) -> None:
        """Profile ``bucket`` in the background with a copy of ``inputs`` (the first request's:
        a bucket's top may not fit a graph whose other dimensions are static, and made-up
        values may not be valid ones, such as a packed sequence's lengths). The job holds the
        module weakly: a module dropped before its turn is not profiled."""
        if bucket in self._queued:
            return
        self._queued.add(bucket)
        ref = weakref.ref(self)
        kept = tuple(x.detach().clone() if isinstance(x, torch.Tensor) else x for x in inputs)

        def job() -> None:
            module = ref()
            if module is not None:
                module._profile_in_background(bucket, kept)

        _PLANNER.submit(job)

    def _profile_in_background(self, bucket: tuple, inputs: tuple) -> None:
        signature = _signature(inputs)
        with self._lock:
            entry = self._entries.get(signature)
            # the request's graph, or a capture of its own if that shape was evicted meanwhile
            graph = entry.graph if entry is not None else self._graph_for(inputs)
        plan = self._profile_and_plan(graph, inputs, bucket)
        self.stats["background_profiles"] += 1
        built: dict[tuple, Any] = {}
        shared: Any | None = None  # the shape-generic graph's one executable of ``plan``
        warm: set[int] = set()
        with self._lock:  # the request's own shape first: it warms with the request's values
            stale = [s for s, e in self._entries.items() if e.bucket == bucket]
            stale.sort(key=lambda s: s != signature)
        for shape in stale:  # built and run once off the request path, swapped in below
            entry = self._entries.get(shape)
            if entry is not None and _fits(plan, entry.graph):
                if entry.graph is not self._shared:
                    executable = self._executable(entry.graph, plan)
                elif shared is None:
                    executable = shared = self._executable(entry.graph, plan, register=False)
                else:
                    executable = shared
                built[shape] = executable
                if id(executable) in warm:  # a shape-generic graph's shapes share one
                    continue
                warm.add(id(executable))
                _TRAFFIC.wait()
                with torch.no_grad():
                    if shape == signature:
                        executable(*inputs)
                    else:
                        executable(*self._inputs_of_shapes(0, _shapes_of(shape)))
        with self._lock:
            self._install_plan(bucket, plan)
            # registered only now: a request adding a shape meanwhile drops the executables
            # no entry uses yet, and shapes it added meanwhile to this bucket move over too
            if shared is not None:
                self._by_plan[_plan_identity(plan)] = shared
            for shape, entry in list(self._entries.items()):
                if entry.bucket != bucket:
                    continue
                executable = built.get(shape, shared if entry.graph is self._shared else None)
                if executable is None:
                    del self._entries[shape]  # rebuilt with the new plan on next use
                else:
                    self._entries[shape] = dataclasses.replace(entry, executable=executable)
        self.stats["plan_swaps"] += 1
        log.info(
            "input shape bucket %s now runs on its own plan (predicted %.3f ms)",
            _describe(bucket),
            plan.predicted_ms,
        )

    def _executable(self, graph: torch.fx.GraphModule, plan: Any, *, register: bool = True) -> Any:
        key = _plan_identity(plan)
        shared = graph is self._shared
        if shared and key in self._by_plan:  # the same placement and order: nothing to build
            return self._by_plan[key]
        executable = self._build(graph, plan)
        executable.enable_trace(self._trace)
        self.stats["executables_built"] += 1
        if shared and register:
            self._by_plan[key] = executable
        return executable

    def _build(self, graph: torch.fx.GraphModule, plan: Any) -> Any:
        from . import runtime

        return runtime.PlacedGraph(
            graph,
            plan.placement,
            plan.order,
            cpu_threads=self.settings.cpu_threads,
            plan=plan,
            wide=plan.wide,
            device_graphs=self.settings.cuda_graphs,
        )

    def _add_entry(self, signature: tuple, graph: torch.fx.GraphModule, bucket: tuple) -> _Entry:
        from .graph.derived_weights import refresher_for

        executable = self._executable(graph, self.plans[bucket])
        entry = _Entry(graph, executable, bucket, refresher_for(graph))
        self._entries[signature] = entry
        self._entries.move_to_end(signature)
        while len(self._entries) > _MAX_SHAPES:  # least recently used, never the example's
            victim = next(k for k in self._entries if k != self._primary_signature)
            del self._entries[victim]
        if self._shared is not None:  # executables of plans no longer used by any shape
            used = {id(e.executable) for e in self._entries.values()}
            for key in [k for k, ex in self._by_plan.items() if id(ex) not in used]:
                del self._by_plan[key]
        return entry

    # tracing: delegated to the executable that ran last
    def enable_trace(self, enabled: bool = True) -> None:
        self._trace = enabled
        for entry in list(self._entries.values()):
            entry.executable.enable_trace(enabled)

    def last_trace(self) -> list[Any]:
        """The TraceEvents of the last traced call (``plan.gantt(path, measured=...)``)."""
        if self._last is None:
            raise PlanError("no call has run yet: call the module with tracing enabled first")
        return self._last.last_trace()

    def save_trace(self, path: str, memory: Sequence[Any] = ()) -> None:
        """Write the last traced call as Chrome / Perfetto JSON, with ``memory`` (the
        MemorySamples of ``runtime.trace.record_memory``) as counter tracks."""
        if self._last is None:
            raise PlanError("no call has run yet: call the module with tracing enabled first")
        self._last.save_trace(path, memory)


def _copy_graph(graph: torch.fx.Graph) -> torch.fx.Graph:
    copy = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    output = copy.graph_copy(graph, env)
    copy.output(output)
    for old, new in env.items():
        new.meta = dict(old.meta)
    return copy


def _fits(plan: Any, graph: torch.fx.GraphModule) -> bool:
    try:
        plan.validate(graph)
    except PlanError:
        return False
    return True


def _differs_only_at(signature: tuple, example: tuple, dim: tuple[int, int] | None) -> bool:
    """Whether ``signature`` is ``example`` but for the size of ``dim`` (input, dimension)."""
    if dim is None or len(signature) != len(example):
        return False
    for index, ((shape, kind), (example_shape, example_kind)) in enumerate(
        zip(signature, example, strict=True)
    ):
        if kind != example_kind or type(shape) is not type(example_shape):
            return False
        if index == dim[0] and isinstance(shape, tuple) and len(shape) == len(example_shape):
            shape = shape[: dim[1]] + shape[dim[1] + 1 :]
            example_shape = example_shape[: dim[1]] + example_shape[dim[1] + 1 :]
        if shape != example_shape:
            return False
    return True


def _other_sizes(size: int) -> tuple[int, int]:
    """Two sizes other than ``size`` to capture a dimension at: one below and one above
    where there is room (sizes 0 and 1 are special cases of broadcasting and emptiness)."""
    below = size // 2 if size // 2 >= 2 else size + 1
    return below, size + size // 2 + 2


def _integers_like(example: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """An integer input of ``shape``: ``example``'s values where they fit, zeros past them."""
    value = torch.zeros(tuple(shape), dtype=example.dtype)
    common = tuple(slice(0, min(a, b)) for a, b in zip(example.shape, shape, strict=True))
    value[common] = example[common]
    return value


def _shapes_of(signature: tuple) -> list:
    return [shape if isinstance(shape, tuple) else value for shape, value in signature]


def _wide_whole(plan: Any) -> bool:
    return bool(plan.wide) and len(plan.wide) == len(plan.placement)


def _plan_identity(plan: Any) -> tuple:
    """What an executable depends on in a plan: placement, wide nodes and order."""
    wide = tuple(sorted((node, tuple(lanes)) for node, lanes in (plan.wide or {}).items()))
    return (tuple(sorted(plan.placement.items())), wide, tuple(plan.order))


def _scaled_profile(profile: Any, graph: torch.fx.GraphModule, scale: float) -> Any:
    """``profile``'s costs for the schedulable nodes of ``graph`` (by name; a node it did not
    measure, such as size arithmetic, costs a microsecond), times ``scale``."""
    from .graph.nodes import schedulable_nodes

    node_ms = {}
    for node in schedulable_nodes(graph):
        measured = profile.node_ms.get(node.name)
        node_ms[node.name] = {
            lane: (measured[lane] * scale if measured and lane in measured else 1e-3)
            for lane in profile.devices
        }
    wide_ms = {name: ms * scale for name, ms in profile.wide_ms.items() if name in node_ms}
    paired_ms = {name: ms * scale for name, ms in profile.paired_ms.items() if name in node_ms}
    return dataclasses.replace(
        profile,
        node_ms=node_ms,
        wide_ms=wide_ms,
        paired_ms=paired_ms,
        notes=[*profile.notes, f"derived, scaled x{scale:.3g}"],
    )


def _single_lane_plan(graph: torch.fx.GraphModule, lane: str, settings: ChrionSettings) -> Any:
    """Every node on ``lane`` in graph order: what runs before any measurement exists."""
    from .graph.nodes import schedulable_nodes
    from .schedule import Plan

    names = [n.name for n in schedulable_nodes(graph)]
    return Plan(
        placement=dict.fromkeys(names, lane),
        order=names,
        start_ms=dict.fromkeys(names, 0.0),
        finish_ms=dict.fromkeys(names, 0.0),
        predicted_ms=0.0,
        device_bytes={lane: 0.0},
        objective=settings.objective,
        slo_ms=settings.slo_ms,
        slo_met=None,
        devices=[lane],
    )


def _describe(bucket: tuple) -> str:
    return str([list(shape) if isinstance(shape, tuple) else kind for shape, kind in bucket])


def compile_graph(
    model: torch.nn.Module, example_inputs: Sequence[Any], settings: ChrionSettings, **options: Any
) -> ChrionModule:
    """Capture, profile, place and build ``model`` for CPU and GPU lanes (both front ends).

    ``options`` are ChrionModule's keywords: ``plan``, ``recorded_profile``, ``shape_generic``
    (``model`` is already an aten graph valid for every shape, a Dynamo graph captured by
    dynamo.py, so no shape is captured again) and ``reference`` (a module of the same model
    whose profiles derive this one's first plan, profiled in the background).
    """
    return ChrionModule(model, example_inputs, settings, **options)
