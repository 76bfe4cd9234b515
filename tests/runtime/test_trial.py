"""runtime.trial.quickest: the quicker of several runners, timed interleaved on the same inputs,
whatever their order; rounds stop at the budget after the first two."""

from __future__ import annotations

import time

import pytest

from torch_chrion.runtime import trial


def sleeper(seconds: float, calls: list[float]):
    def run(x: float) -> float:
        calls.append(x)
        time.sleep(seconds)
        return x

    return run


@pytest.mark.parametrize("order", [(0.004, 0.001), (0.001, 0.004), (0.004, 0.003, 0.0005)])
def test_the_quickest_runner_is_found_in_any_order(order):
    calls: list[float] = []
    runners = [sleeper(s, calls) for s in order]
    index, ms = trial.quickest(runners, (7.0,), rounds=5, budget_s=10.0)
    assert index == order.index(min(order))
    assert len(ms) == len(order)
    for seconds, median in zip(order, ms, strict=True):
        assert median >= seconds * 1e3  # a sleep lasts at least what it asks
    # warm-up, then every round calls each runner once untimed and times TRIAL_CALLS calls
    assert len(calls) == len(order) * (2 + 5 * (1 + trial.TRIAL_CALLS))
    assert set(calls) == {7.0}


def test_rounds_stop_at_the_budget_after_two():
    calls: list[float] = []
    runners = [sleeper(0.002, calls), sleeper(0.001, calls)]
    trial.quickest(runners, (1.0,), rounds=50, budget_s=0.0)
    assert len(calls) == 2 * (2 + 2 * (1 + trial.TRIAL_CALLS))
