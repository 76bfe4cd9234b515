"""Step traces of the executor as Chrome / Perfetto trace JSON (one row per lane), and the
memory the allocators held during a traced call (counter events of the same document)."""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# the counter events that carry memory: "<device> allocated bytes", category "memory"
_MEMORY = "memory"
_MEMORY_SUFFIX = " allocated bytes"


@dataclass(frozen=True)
class TraceEvent:
    """One step of one call: which node ran on which lane, and when.

    Times are microseconds since the call's first step started. On a CUDA lane they span the
    host thread issuing the work, not the kernels on the device.
    """

    node: str
    op: str
    lane: str
    request: int
    start_us: float
    end_us: float


@dataclass(frozen=True)
class MemorySample:
    """The bytes a device's allocator held at one moment of a traced call, as torch.profiler
    reports them ("Total Allocated": on a GPU, the caching allocator's allocated bytes; on the
    CPU, the bytes allocated since profiling began, so weights and inputs made before are not
    counted). ``us`` is on the trace's clock: microseconds since the call's first step."""

    device: str
    us: float
    bytes: float


def chrome_trace(
    events: list[TraceEvent], lanes: list[str], memory: Sequence[MemorySample] = ()
) -> dict:
    """The Chrome trace-event document for ``events``: complete ("X") events, one tid per lane,
    named by thread_name metadata so Perfetto shows the lane names; each memory sample is a
    counter ("C") event, which Perfetto draws as a track per device."""
    rows = {lane: i for i, lane in enumerate(lanes)}
    trace = [
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": i, "args": {"name": lane}}
        for lane, i in rows.items()
    ]
    for e in events:
        trace.append(
            {
                "name": e.node,
                "cat": e.op,
                "ph": "X",
                "pid": 1,
                "tid": rows[e.lane],
                "ts": e.start_us,
                "dur": e.end_us - e.start_us,
                "args": asdict(e),
            }
        )
    for sample in memory:
        trace.append(
            {
                "name": f"{sample.device}{_MEMORY_SUFFIX}",
                "cat": _MEMORY,
                "ph": "C",
                "pid": 1,
                "ts": sample.us,
                "args": {"bytes": sample.bytes},
            }
        )
    return {"traceEvents": trace, "displayTimeUnit": "ms"}


def save_chrome_trace(
    events: list[TraceEvent],
    lanes: list[str],
    path: str | Path,
    memory: Sequence[MemorySample] = (),
) -> Path:
    """Write ``events`` (and ``memory``) as Chrome trace JSON to ``path`` (open it in
    ui.perfetto.dev)."""
    path = Path(path)
    path.write_text(json.dumps(chrome_trace(events, lanes, memory)))
    return path


def load_chrome_trace(path: str | Path) -> list[TraceEvent]:
    """The TraceEvents of a trace written by ``save_chrome_trace``."""
    document = json.loads(Path(path).read_text())
    return [TraceEvent(**e["args"]) for e in document["traceEvents"] if e.get("ph") == "X"]


def load_memory(path: str | Path) -> list[MemorySample]:
    """The memory samples of a trace written by ``save_chrome_trace`` (empty when it has none)."""
    document = json.loads(Path(path).read_text())
    return [
        MemorySample(e["name"].removesuffix(_MEMORY_SUFFIX), e["ts"], e["args"]["bytes"])
        for e in document["traceEvents"]
        if e.get("ph") == "C" and e.get("cat") == _MEMORY
    ]


def memory_from_profiler(document: dict, steps: Sequence[TraceEvent]) -> list[MemorySample]:
    """The memory samples of a torch.profiler trace document (``profile_memory=True``) of one
    traced call whose steps are ``steps``, moved onto the steps' clock.

    The profiler's clock is not the executor's: the executor records each step as a user scope
    named after its node (RECORD_USER_SCOPE), so the offset between the clocks is the median
    difference between a step's start in the profiler and in ``steps``. Samples of devices other
    than the CPU and CUDA GPUs are left out.
    """
    events = document.get("traceEvents", [])
    scope_start = {e["name"]: e["ts"] for e in events if e.get("cat") == "user_annotation"}
    offsets = [scope_start[s.node] - s.start_us for s in steps if s.node in scope_start]
    if not offsets:
        return []
    offset = statistics.median(offsets)
    samples = []
    for e in events:
        if e.get("name") != "[memory]":
            continue
        args = e["args"]
        kind = args.get("Device Type")
        if kind == 0:
            device = "cpu"
        elif kind == 1:
            device = f"cuda:{args['Device Id']}"
        else:
            continue
        samples.append(MemorySample(device, e["ts"] - offset, float(args["Total Allocated"])))
    return sorted(samples, key=lambda sample: sample.us)


def record_memory(
    call: Callable[[], object], steps: Callable[[], Sequence[TraceEvent]]
) -> list[MemorySample]:
    """Run ``call`` (one traced call) under torch.profiler with ``profile_memory=True`` and
    return the allocators' samples on the clock of its trace, ``steps()`` after the call."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, profile_memory=True) as profiler:
        call()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "profile.json"
        profiler.export_chrome_trace(str(path))
        document = json.loads(path.read_text())
    return memory_from_profiler(document, steps())
