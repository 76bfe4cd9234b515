"""The timeline of a Plan as a PNG (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import OptionError

if TYPE_CHECKING:
    from .plan import Plan


def draw_gantt(plan: Plan, path: str | os.PathLike[str], title: str | None = None) -> None:
    """One row per lane, one bar per node (labelled with its name where the bar is wide
    enough), the predicted latency and the SLO as vertical lines. A Figure made without pyplot
    renders with Agg and leaves the caller's matplotlib backend alone."""
    from matplotlib.figure import Figure

    lanes = list(plan.devices)
    fig = Figure(figsize=(12, 1.2 + 0.8 * len(lanes)))
    # the format follows the extension: check it before drawing, not deep inside savefig
    extension = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
    formats = fig.canvas.get_supported_filetypes()
    if extension not in formats:
        raise OptionError(
            f"cannot draw the timeline as {os.fspath(path)!r}: the extension must be one of "
            f"{', '.join(sorted(formats))}"
        )
    ax = fig.add_subplot()
    span = max(plan.predicted_ms, 1e-9)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for row, lane in enumerate(lanes):
        for node in plan.lane_order(lane):
            start, finish = plan.start_ms[node], plan.finish_ms[node]
            width = max(finish - start, span * 1e-4)
            ax.barh(
                row,
                width,
                left=start,
                height=0.6,
                color=colours[row % len(colours)],
                edgecolor="black",
                linewidth=0.4,
            )
            if width > span * 0.04:
                ax.text(
                    start + width / 2, row, node, ha="center", va="center", fontsize=6, clip_on=True
                )
    ax.axvline(
        plan.predicted_ms, color="black", linewidth=1, label=f"predicted {plan.predicted_ms:.3f} ms"
    )
    if plan.slo_ms is not None:
        ax.axvline(
            plan.slo_ms, color="red", linestyle="--", linewidth=1, label=f"SLO {plan.slo_ms:g} ms"
        )
    ax.set_yticks(range(len(lanes)), lanes)
    ax.invert_yaxis()
    ax.set_xlabel("ms")
    ax.set_title(title or f"{plan.objective} plan, {len(plan.order)} nodes")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=120)
