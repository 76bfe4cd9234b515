"""How much measuring the profile budget affords: warm-ups, repeats and calls per repeat of
each node, cut to fit the seconds left."""

from __future__ import annotations

import math
import time

# fewer repeats than this and the median is no longer worth the name
MIN_REPEATS = 3
# a repeat runs a fast node this long (back-to-back calls), so µs-scale jitter averages out ...
MIN_REPEAT_MS = 0.5
# ... but never more than this many calls
MAX_NUMBER = 1000
# seconds each device runs the whole graph before its nodes are timed (at most 10% of the budget)
WARMUP_S = 1.0


def warmup_seconds(budget_s: float) -> float:
    """The warm-up period of a device given its budget: WARMUP_S, at most 10% of the budget."""
    return min(WARMUP_S, 0.1 * budget_s)


class Budget:
    """Splits the time budget over the measurements still to make, cutting runs to fit."""

    def __init__(self, seconds: float, measurements: int, warmup: int, repeats: int) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.left = max(measurements, 1)
        self.warmup, self.repeats = warmup, repeats
        self.fewest = repeats

    def plan(self, first_ms: float) -> tuple[int, int, int]:
        """(warm-up calls, repeats, calls per repeat) for a node whose first call took
        ``first_ms``: each repeat lasts about MIN_REPEAT_MS; when the node's share of the budget
        is short, calls per repeat go first (down to 1), then repeats (down to 3), then
        warm-ups (down to 1)."""
        share_ms = max(self.deadline - time.monotonic(), 0.0) * 1e3 / self.left
        self.left = max(self.left - 1, 1)
        first_ms = max(first_ms, 1e-6)
        affordable = share_ms / first_ms  # calls this node may make
        warmup, repeats = self.warmup, self.repeats
        number = max(1, min(MAX_NUMBER, math.ceil(MIN_REPEAT_MS / first_ms)))
        if warmup + repeats * number > affordable:
            number = max(1, int((affordable - warmup) // repeats))
        if warmup + repeats * number > affordable:
            repeats = max(MIN_REPEATS, min(repeats, int(affordable) - warmup))
            warmup = min(warmup, max(1 if warmup else 0, int(affordable) - repeats))
        self.fewest = min(self.fewest, repeats)
        return warmup, repeats, number
