"""Step traces of the executor as Chrome / Perfetto trace JSON (one row per lane)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


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


def chrome_trace(events: list[TraceEvent], lanes: list[str]) -> dict:
    """The Chrome trace-event document for ``events``: complete ("X") events, one tid per lane,
    named by thread_name metadata so Perfetto shows the lane names."""
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
    return {"traceEvents": trace, "displayTimeUnit": "ms"}


def save_chrome_trace(events: list[TraceEvent], lanes: list[str], path: str | Path) -> Path:
    """Write ``events`` as Chrome trace JSON to ``path`` (open it in ui.perfetto.dev)."""
    path = Path(path)
    path.write_text(json.dumps(chrome_trace(events, lanes)))
    return path


def load_chrome_trace(path: str | Path) -> list[TraceEvent]:
    """The TraceEvents of a trace written by ``save_chrome_trace``."""
    document = json.loads(Path(path).read_text())
    return [TraceEvent(**e["args"]) for e in document["traceEvents"] if e.get("ph") == "X"]
