"""The timeline of a Plan as a PNG (matplotlib, Agg backend: no display needed).

Panels, on one time axis scaled to the plan (and to the measured run, when given): the
predicted timeline (one row per lane, a row of the predicted cross-device copies), the measured
timeline of a traced run (its copy steps drawn as transfers), and the memory of each GPU lane
(of each lane on a CPU-only plan): predicted by the plan's memory model (schedule/memory.py),
and measured, dashed, when the trace carries the allocators' samples (``chrion run --trace``
records them). An SLO beyond the axis is named in the legend rather than stretching the axis
to it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import OptionError

if TYPE_CHECKING:
    from .plan import Plan

_COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
_TRANSFER = "tab:gray"
_LABEL_SHARE = 0.04  # a bar wider than this share of the axis is labelled with its node


def draw_gantt(
    plan: Plan,
    path: str | os.PathLike[str],
    title: str | None = None,
    measured: Sequence[Any] | None = None,
    measured_memory: Sequence[Any] | None = None,
) -> Any:
    """Draw ``plan`` (and ``measured``, the TraceEvents of a traced run, and
    ``measured_memory``, its MemorySamples) to ``path``; returns the matplotlib Figure. A
    Figure made without pyplot renders with Agg and leaves the caller's backend alone."""
    from matplotlib.figure import Figure

    lanes = list(plan.devices)
    # the format follows the extension: check it before drawing, not deep inside savefig
    extension = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
    formats = Figure().canvas.get_supported_filetypes()
    if extension not in formats:
        raise OptionError(
            f"cannot draw the timeline as {os.fspath(path)!r}: the extension must be one of "
            f"{', '.join(sorted(formats))}"
        )
    measured = list(measured or [])
    for event in measured:
        if event.lane not in lanes:
            lanes.append(event.lane)
    measured_ms = max((e.end_us for e in measured), default=0.0) / 1e3
    span = max(plan.predicted_ms, measured_ms, 1e-9) * 1.05
    memory = _memory_tracks(plan, measured_memory or [])
    panels = [("predicted", len(lanes) + (1 if plan.transfers else 0))]
    if measured:
        panels.append(("measured", len(lanes)))
    if any(memory):
        panels.append(("memory", 2))
    fig = Figure(figsize=(12, 1.4 + 0.5 * sum(rows + 1 for _, rows in panels)))
    axes = fig.subplots(
        len(panels), 1, sharex=True, squeeze=False, height_ratios=[r + 1 for _, r in panels]
    )[:, 0]
    for ax, (kind, _) in zip(axes, panels, strict=True):
        if kind == "predicted":
            _draw_predicted(ax, plan, lanes, span)
        elif kind == "measured":
            _draw_measured(ax, measured, lanes, span)
        else:
            _draw_memory(ax, *memory, span)
    slo_note = _draw_slo(axes, plan, span)
    axes[-1].set_xlim(0, span)
    axes[-1].set_xlabel("ms from the request")
    heading = title or f"{plan.objective} plan, {len(plan.order)} nodes"
    measured_note = f", measured {measured_ms:.3f} ms" if measured else ""
    axes[0].set_title(f"{heading}: predicted {plan.predicted_ms:.3f} ms{measured_note}{slo_note}")
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=120)
    return fig


def _bar(
    ax: Any, row: int, start: float, width: float, colour: str, label: str, span: float
) -> None:
    width = max(width, span * 1e-4)
    ax.barh(row, width, left=start, height=0.6, color=colour, edgecolor="black", linewidth=0.4)
    if label and width > span * _LABEL_SHARE:
        ax.text(start + width / 2, row, label, ha="center", va="center", fontsize=6, clip_on=True)


def _lane_axis(ax: Any, labels: list[str], panel: str) -> None:
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_ylabel(panel)


def _draw_predicted(ax: Any, plan: Plan, lanes: list[str], span: float) -> None:
    for node in plan.order:
        row = lanes.index(plan.placement[node])
        start = plan.start_ms[node]
        colour = _COLOURS[row % len(_COLOURS)]
        _bar(ax, row, start, plan.finish_ms[node] - start, colour, node, span)
        for held in plan.lanes_of(node)[1:]:  # a wide node: hatched on the lanes it holds
            _bar(ax, lanes.index(held), start, plan.finish_ms[node] - start, colour, "", span)
            ax.patches[-1].set_hatch("//")
    labels = list(lanes)
    if plan.transfers:
        row = len(labels)
        labels.append("transfers")
        for src, _, _, to_lane, start, finish in plan.transfers:
            _bar(ax, row, start, finish - start, _TRANSFER, f"{src}->{to_lane}", span)
    ax.axvline(plan.predicted_ms, color="black", linewidth=1)
    _lane_axis(ax, labels, "predicted")


def _draw_measured(ax: Any, events: list[Any], lanes: list[str], span: float) -> None:
    for event in events:
        # a wide step ran on its own lane, "cpu:0+cpu:1": drawn on each lane it held
        held = event.lane.split("+")
        for lane in held:
            row = lanes.index(lane)
            copy = event.node.startswith("copy:")
            colour = _TRANSFER if copy else _COLOURS[lanes.index(held[0]) % len(_COLOURS)]
            start, end = event.start_us / 1e3, event.end_us / 1e3
            _bar(ax, row, start, end - start, colour, event.node if lane == held[0] else "", span)
            if lane != held[0]:
                ax.patches[-1].set_hatch("//")
    ax.axvline(max(e.end_us for e in events) / 1e3, color="black", linewidth=1)
    _lane_axis(ax, lanes, "measured")


Track = dict[str, list[tuple[float, float]]]  # lane or device -> (ms, bytes from then on)


def _memory_tracks(plan: Plan, samples: Sequence[Any]) -> tuple[Track, Track]:
    """The (predicted, measured) memory drawn: the GPUs' when the plan or the trace has one,
    else every lane's and the host's."""
    predicted = {lane: [(t, b) for t, b in points] for lane, points in (plan.memory or {}).items()}
    measured: Track = {}
    for sample in samples:
        measured.setdefault(sample.device, []).append((sample.us / 1e3, sample.bytes))
    if any(name.startswith("cuda") for name in [*predicted, *measured]):
        predicted = {k: v for k, v in predicted.items() if k.startswith("cuda")}
        measured = {k: v for k, v in measured.items() if k.startswith("cuda")}
    return predicted, measured


def _draw_memory(ax: Any, predicted: Track, measured: Track, span: float) -> None:
    colours = {
        name: _COLOURS[k % len(_COLOURS)] for k, name in enumerate({**predicted, **measured})
    }
    for tracks, kind, style in ((predicted, "predicted", "-"), (measured, "measured", "--")):
        for name, points in tracks.items():
            times = [t for t, _ in points] + [max(span, points[-1][0])]
            mib = [b / 2**20 for _, b in points]
            ax.step(
                times,
                mib + mib[-1:],
                where="post",
                color=colours[name],
                linestyle=style,
                label=f"{name} {kind}",
            )
    gpu = any(name.startswith("cuda") for name in colours)
    ax.set_ylabel("GPU MiB" if gpu else "resident MiB")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=7)


def _draw_slo(axes: Sequence[Any], plan: Plan, span: float) -> str:
    """The SLO as a line where it is on the axis; else a note for the title."""
    if plan.slo_ms is None:
        return ""
    if plan.slo_ms <= span:
        for ax in axes:
            ax.axvline(plan.slo_ms, color="red", linestyle="--", linewidth=1)
        return f", SLO {plan.slo_ms:g} ms (red)"
    return f", SLO {plan.slo_ms:g} ms (off the axis, {plan.slo_ms / plan.predicted_ms:.1f}x)"
