"""ChrionModule: a model compiled by torch_chrion, ready to serve.

One pipeline for both front ends (ONNX and torch.compile): capture an aten graph for the
input shapes (graph/), measure each node on each lane (profile/), place it (schedule/), and run
it in the C++ executor (runtime/).

Shapes: the aten graph is specific to the input shapes, so each new shape is captured again
(cheap). Plans are kept per shape bucket (every dimension rounded up to a power of two): a new
shape in a known bucket reuses that bucket's plan when its graph has the same nodes, so a new
sequence length is neither profiled nor scheduled again.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

import torch

from .errors import ChrionError, ModelError, PlanError
from .inputs import InputSignature
from .session import SessionMixin, to_numpy
from .settings import ChrionSettings

log = logging.getLogger(__name__)

# Compiled executables kept per exact input shape; the oldest is dropped past this many.
_MAX_SHAPES = 32

# Plans made in this process, by (graph structure, shape bucket, plan settings): Dynamo compiles
# every new shape into a new module, and those must reuse the plan of their bucket too.
_PLANS: dict[tuple, Any] = {}


def default_devices() -> tuple[str, ...]:
    """The host and the first GPU; without a GPU, two CPU lanes where there are two cores."""
    if torch.cuda.is_available():
        return ("cpu", "cuda:0")
    return ("cpu:0", "cpu:1") if (os.cpu_count() or 1) >= 2 else ("cpu",)


def _signature(inputs: Sequence[Any]) -> tuple:
    return tuple(
        (tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else (type(x), x) for x in inputs
    )


def _bucket(signature: tuple) -> tuple:
    def up(d: int) -> int:
        return 1 << max(d - 1, 0).bit_length()

    return tuple(
        (tuple(up(d) for d in shape), dtype) if isinstance(shape, tuple) else (shape, dtype)
        for shape, dtype in signature
    )


def _structure(gm: torch.fx.GraphModule) -> tuple:
    """What a plan depends on besides shapes: the operators and the shapes of the weights."""
    key = []
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            key.append(("get_attr", tuple(getattr(gm, node.target).shape)))
        else:
            key.append((node.op, str(node.target)))
    return tuple(key)


class ChrionModule(SessionMixin, torch.nn.Module):
    """A model placed over CPU and GPU lanes; call it like the original model.

    Attributes:
        plan: the Plan of the example inputs' shape bucket (save it with ``plan.save(path)``).
        plans: every Plan made so far, by shape bucket.
        settings: the ChrionSettings it was compiled with.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        example_inputs: Sequence[Any],
        settings: ChrionSettings,
        *,
        plan: Any | None = None,
        recorded_profile: Any | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.settings = settings
        self.devices = settings.devices or default_devices()
        self.recorded_profile = recorded_profile
        self.plans: dict[tuple, Any] = {}
        self.profiles_made = 0
        self._given_plan = plan
        self._executables: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._last: Any | None = None
        self._trace = False
        example_inputs = tuple(example_inputs)
        self.input_signature = InputSignature.of(model, example_inputs)  # checks the example
        signature = _signature(example_inputs)
        self._primary = _bucket(signature)
        self._primary_signature = signature
        self._compile(signature, example_inputs)
        self.input_signature = self.input_signature.with_recurrent_sizes(self.captured_graph())

    @property
    def plan(self) -> Any:
        return self.plans[self._primary]

    @property
    def python_nodes(self) -> list[str]:
        """Nodes of the example inputs' graph that run as Python callables under the GIL (ONNX
        If/Loop/Scan), not as one dispatcher call: counted and shown, never hidden."""
        return list(self._executables[self._primary_signature].python_nodes)

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
        executable = self._executables.get(signature)
        if executable is None:
            with self._lock:
                executable = self._executables.get(signature) or self._compile(signature, inputs)
        self._last = executable
        return executable(*inputs)

    def _compile(self, signature: tuple, inputs: Sequence[Any]) -> Any:
        from . import profile, runtime, schedule

        settings = self.settings
        gm = self._capture(signature, inputs)
        bucket = _bucket(signature)
        shared_key = (
            _structure(gm),
            bucket,
            tuple(sorted(settings.plan_key().items())),
            self.devices,
        )
        plan = self._reusable_plan(bucket, gm, _PLANS.get(shared_key))
        if plan is None:
            log.info("input shape bucket %s has no plan yet: profiling and planning", bucket)
            prof = profile.profile_graph(
                gm,
                tuple(inputs),
                list(self.devices),
                settings=settings,
                cache_dir=settings.cache_dir,
                recorded=self.recorded_profile,
            )
            self.profiles_made += 1
            plan = schedule.make_plan(gm, prof, settings)
            _PLANS[shared_key] = plan
        self.plans.setdefault(bucket, plan)
        if signature == self._primary_signature:
            self._primary_graph = gm
        executable = runtime.PlacedGraph(
            gm, plan.placement, plan.order, cpu_threads=settings.cpu_threads, plan=plan
        )
        executable.enable_trace(self._trace)
        self._executables[signature] = executable
        if len(self._executables) > _MAX_SHAPES:  # drop the oldest, never the example's
            dropped = next(k for k in self._executables if k != self._primary_signature)
            del self._executables[dropped]
        return executable

    def _capture(self, signature: tuple, inputs: Sequence[Any]) -> torch.fx.GraphModule:
        """The aten graph for inputs of this signature (a packaged module reads it from disk)."""
        from . import graph

        try:
            return graph.capture(
                self.model,
                tuple(inputs),
                granularity=self.settings.granularity,
                seq_chunks=self.settings.seq_chunks,
            )
        except ChrionError:
            raise
        except (RuntimeError, TypeError, ValueError) as exc:
            shapes = [tuple(x.shape) if isinstance(x, torch.Tensor) else x for x in inputs]
            raise ModelError(
                f"could not capture the model for inputs of shapes {shapes}: {exc}"
            ) from exc

    def _reusable_plan(
        self, bucket: tuple, gm: torch.fx.GraphModule, shared: Any | None
    ) -> Any | None:
        candidates = [self._given_plan] if self._given_plan is not None else []
        candidates += [self.plans[bucket]] if bucket in self.plans else []
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
            log.info("reusing the plan of input shape bucket %s", bucket)
            return plan
        return None

    # tracing: delegated to the executable that ran last
    def enable_trace(self, enabled: bool = True) -> None:
        self._trace = enabled
        for executable in self._executables.values():
            executable.enable_trace(enabled)

    def last_trace(self) -> list[Any]:
        """The TraceEvents of the last traced call (``plan.gantt(path, measured=...)``)."""
        if self._last is None:
            raise PlanError("no call has run yet: call the module with tracing enabled first")
        return self._last.last_trace()

    def save_trace(self, path: str) -> None:
        if self._last is None:
            raise PlanError("no call has run yet: call the module with tracing enabled first")
        self._last.save_trace(path)


def compile_graph(
    model: torch.nn.Module,
    example_inputs: Sequence[Any],
    settings: ChrionSettings,
    *,
    plan: Any | None = None,
    recorded_profile: Any | None = None,
) -> ChrionModule:
    """Capture, profile, place and build ``model`` for CPU and GPU lanes (both front ends)."""
    return ChrionModule(
        model, example_inputs, settings, plan=plan, recorded_profile=recorded_profile
    )
