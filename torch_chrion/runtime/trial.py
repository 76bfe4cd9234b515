"""Which of a graph's candidate plans runs quicker on this machine, timed on the example inputs.

Note [Plan trials]
A plan's prediction is only as good as its profile, and on a shared host a profile is a sample
of minutes whose speed drifts by up to 2x. The node costs it keeps are the quickest chunks, but
a wide cost (a node on every thread at once) also depends on the other cores being free while
it was measured, and a burst then makes every wide option look dear: one CRNN profile placed no
convolution wide and predicted 9.7 ms where the next one's plan ran 6.2 ms. The choice it
sways most is between the search's plan and the whole graph placed wide (plan.wide_if_faster),
whose replays differ by less than that noise for most recurrent models. So where both replay
within plan.TRIAL_RATIO of each other, both are built and timed here, in interleaved rounds on
the example inputs (a burst then slows both alike), and the quicker one is kept. Three fresh
loads of the DeepSpeech2-like model in one process gave the whole graph wide once and a mix of
wide layers and a layer on two lanes twice; timed interleaved in two rounds, the mixes ran 6.1
and 5.9 ms, then 6.3 and 10.2 ms, the whole graph wide 5.8, then 6.4. With the trial, its three
fresh loads all kept the whole graph wide (6.5 against 6.8, 6.1 against 6.2, 5.8 against 7.7
ms in the trials).

Each plan's block of calls starts after ``settle_s`` of sleep and one untimed call. A plan that
runs wide steps leaves its caller's OpenMP team polling for milliseconds after its last call
(the simulator's team_spin_ms), holding a core: timed right after it, another plan ran on a
core fewer. Alternating blocks with no pause, the two-lane plan of a batch-1 bi-LSTM 2x128 was
timed at 0.70-0.88 ms after the whole graph wide (0.43-0.50) and lost to it; with the pause it
took 0.43-0.45 against 0.44-0.45 (a speech model's conv + bi-GRU: 1.83 against 0.75-0.87). The
untimed call wakes the plan's own parked threads, so the block times calls in a stream, as
requests make them.

The trial takes a few rounds, at most TRIAL_BUDGET_S after the first two (a 15 ms language
model: 9 rounds of 3 calls each, about 1 s); it runs where the plan is made in the caller's
thread (a model's first call, warmup), not in the background planner, which must not take the
cores from the requests it serves.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

TRIAL_ROUNDS = 9
TRIAL_CALLS = 3  # calls of a plan per round, one after another, as a request stream makes them
TRIAL_BUDGET_S = 1.0
_WARMUP_CALLS = 2


def quickest(
    runners: Sequence[Callable[..., Any]],
    inputs: Sequence[Any],
    settle_s: float = 0.0,
    rounds: int = TRIAL_ROUNDS,
    budget_s: float = TRIAL_BUDGET_S,
) -> tuple[int, list[float]]:
    """The index of the quickest of ``runners`` on ``inputs`` and each one's median ms per call:
    each warmed up, then timed in rounds of TRIAL_CALLS calls each, every block after
    ``settle_s`` of sleep and one untimed call, the order rotating from round to round; after
    two rounds, no new round starts once ``budget_s`` has passed."""
    for run in runners:
        for _ in range(_WARMUP_CALLS):
            run(*inputs)
    times: list[list[float]] = [[] for _ in runners]
    deadline = time.perf_counter() + budget_s
    for r in range(rounds):
        if r >= 2 and time.perf_counter() > deadline:
            break
        for k in range(len(runners)):
            index = (k + r) % len(runners)
            time.sleep(settle_s)
            runners[index](*inputs)
            start = time.perf_counter()
            for _ in range(TRIAL_CALLS):
                runners[index](*inputs)
            times[index].append((time.perf_counter() - start) / TRIAL_CALLS)
    medians = [statistics.median(t) * 1e3 for t in times]
    return medians.index(min(medians)), medians
