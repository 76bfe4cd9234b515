"""The executor's fixed costs from chain timings (torch_chrion.runtime.calibrate), against times
built by hand from known costs with the model the module docstring states; the OpenMP team's
polling against what libgomp's wait policies say it is."""

import math
import os
import subprocess
import sys

import pytest

from torch_chrion.runtime import calibrate
from torch_chrion.runtime.calibrate import costs_from_timings


def test_costs_come_back_from_timings_made_by_hand():
    n, span = 48, 0.002
    step, handoff, call, wake = 0.0003, 0.004, 0.011, 0.03
    one = call + span + step
    timings = {
        "one": one,
        "chain": one + (n - 1) * (span + step),
        "alternating": one + (n - 1) * (span + step + handoff),
    }
    # parking: each of the n - 1 hand-offs and the caller's wait wake a parked thread
    timings["alternating, parking"] = timings["alternating"] + n * wake
    costs = costs_from_timings(timings, span, n, spin_ms=0.05)
    assert costs.step_ms == pytest.approx(step)
    assert costs.handoff_ms == pytest.approx(handoff)
    assert costs.call_ms == pytest.approx(call)
    assert costs.wake_ms == pytest.approx(wake)
    assert costs.spin_ms == 0.05
    one_lane = costs_from_timings({k: timings[k] for k in ("one", "chain")}, span, n, 0.05)
    assert one_lane.handoff_ms == one_lane.wake_ms == 0.0


def test_the_cores_the_lanes_get_come_back_from_side_by_side_chains():
    n, span, fixed = 48, 0.002, 0.0113
    timings = {"one": fixed, "chain": fixed + (n - 1) * span}
    timings["alternating"] = timings["alternating, parking"] = timings["chain"]
    work = 0.4  # one busy chain: two of them side by side on c cores take 2 * work / c
    timings |= {"one, gap": fixed, "busy, gap": fixed}
    for cores in (1.0, 1.25, 1.7):
        busy = {"busy": fixed + work, "busy, side by side": fixed + 2 * work / cores}
        costs = costs_from_timings(timings | busy, span, n, spin_ms=0.05)
        assert costs.cores == pytest.approx(cores)
    # side by side as fast as alone: no shortage seen (a third lane may have a core too)
    free = {"busy": fixed + work, "busy, side by side": fixed + work * 0.98}
    assert costs_from_timings(timings | free, span, n, 0.05).cores == math.inf
    # nearly as fast (1.86 cores): within what quiet runs vary by, not a shortage
    near = {"busy": fixed + work, "busy, side by side": fixed + 2 * work / 1.86}
    assert costs_from_timings(timings | near, span, n, 0.05).cores == math.inf
    # slower than one after the other (a load burst): at least one core
    worse = {"busy": fixed + work, "busy, side by side": fixed + 3 * work}
    assert costs_from_timings(timings | worse, span, n, 0.05).cores == 1.0


def test_the_wake_up_after_a_long_call_comes_back_from_the_uncovered_time():
    n, span, busy_steps = 48, 0.002, calibrate._BUSY_STEPS
    step, call, long_wake = 0.0003, 0.011, 0.05
    one = call + span + step
    timings = {"one": one, "chain": one + (n - 1) * (span + step)}
    timings["alternating"] = timings["alternating, parking"] = timings["chain"]
    work = busy_steps * 0.03
    timings |= {"busy": one + work, "busy, side by side": one + work}
    # what the traced steps leave uncovered: the call and each step's fixed cost, and the
    # long call's wake-up of its parked caller and lanes
    timings["one, gap"] = call + step
    timings["busy, gap"] = call + busy_steps * step + long_wake
    costs = costs_from_timings(timings, span, n, spin_ms=0.05)
    assert costs.caller_wake_ms == pytest.approx(long_wake)


def test_cores_come_from_one_round_and_long_call_wake_from_the_quietest():
    # round 3 of the side-by-side chains shared the cores with a burst of other work
    rounds = {
        "one": [0.010, 0.011, 0.010],
        "busy": [0.51, 0.50, 0.52],
        "busy, side by side": [0.52, 0.51, 0.98],
        "busy, gap": [0.09, 0.03, 0.10],
        "chain": [0.020, 0.090, 0.021],
    }
    t = calibrate.timings_from_rounds(rounds)
    # the pair's shares: 1.961, 1.960, 1.05 cores; the upper quartile's round is the first
    assert t["busy"] == 0.51 and t["busy, side by side"] == 0.52 and t["busy, gap"] == 0.03
    assert t["one"] == 0.010 and t["chain"] == 0.021  # the others keep their medians


def test_a_fast_minute_for_one_chain_is_not_a_shortage_of_cores():
    # the host ran round 1 fast (the lone chain's quickest time) and its pair met a burst;
    # rounds 2 and 3, slower, found two full cores. Each chain's quickest round taken apart
    # (0.41 against 0.52) would read 1.57 cores; the pair's own round says 2.
    one = 0.010
    rounds = {
        "one": [one] * 3,
        "busy": [0.41, 0.677, 0.51],
        "busy, side by side": [0.80, 0.69, 0.52],
        "busy, gap": [0.03] * 3,
        "one, gap": [0.005] * 3,
        "chain": [0.02] * 3,
    }
    t = calibrate.timings_from_rounds(rounds)
    assert (t["busy"], t["busy, side by side"]) in ((0.677, 0.69), (0.51, 0.52))
    assert costs_from_timings(t, 0.002, 48, 0.05).cores == math.inf
    # the same pair short of cores in every round is a shortage, whatever the host's speed
    rounds["busy, side by side"] = [one + 2 * (b - one) / 1.3 for b in rounds["busy"]]
    cores = costs_from_timings(calibrate.timings_from_rounds(rounds), 0.002, 48, 0.05).cores
    assert cores == pytest.approx(1.3)


def test_a_burst_over_most_rounds_is_not_a_shortage_where_the_quiet_rounds_had_two_cores():
    # rounds 0, 2 and 4 met a burst of other work (their pair read 1.4 cores), rounds 1 and 3
    # found two full cores: a profile keeps its quickest chunk, the cores their quiet rounds
    one, work = 0.010, 0.40
    rounds = {
        "one": [one] * 5,
        "busy": [one + work] * 5,
        "busy, side by side": [one + 2 * work / c for c in (1.4, 2.0, 1.4, 2.0, 1.4)],
        "busy, gap": [0.03] * 5,
        "one, gap": [0.005] * 5,
        "chain": [0.02] * 5,
    }
    t = calibrate.timings_from_rounds(rounds)
    assert costs_from_timings(t, 0.002, 48, 0.05).cores == math.inf
    # a lone chain slowed by a burst in one round reads more than two cores: not that round
    rounds["busy"][2] = one + 3 * work
    rounds["busy, side by side"] = [one + 2 * work / 1.3] * 5
    t = calibrate.timings_from_rounds(rounds)
    assert (t["busy"], t["busy, side by side"]) == (one + work, one + 2 * work / 1.3)
    cores = costs_from_timings(t, 0.002, 48, 0.05).cores
    assert cores == pytest.approx(1.3)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to bounce between")
def test_the_cross_core_round_trip_pins_only_for_its_duration_and_names_bad_cpus():
    from torch_chrion.runtime.placed_graph import executor_extension

    extension = executor_extension()
    before = os.sched_getaffinity(0)
    a, b = sorted(before)[:2]
    ns = extension.cross_core_round_trip_ns(a, b, 2000)
    # a cache line's round trip between two cores of one machine: tens to a few hundred ns
    assert 10.0 < ns < 100_000.0
    assert os.sched_getaffinity(0) == before  # the caller's CPUs, restored
    outside = max(before) + 1
    for bad in ((a, a), (a, outside), (-1, b)):
        with pytest.raises(ValueError, match=f"cpu_a={bad[0]} and cpu_b={bad[1]}"):
            extension.cross_core_round_trip_ns(*bad, 10)
    with pytest.raises(ValueError, match="iterations"):
        extension.cross_core_round_trip_ns(a, b, 0)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores for a team of two")
@pytest.mark.parametrize(("policy", "low", "high"), [("passive", 0.0, 2.0), ("active", 5.0, 20.0)])
def test_the_openmp_teams_polling_is_what_its_wait_policy_says(policy, low, high):
    # libgomp's documented policies: passive workers sleep at once, active ones poll without
    # end (through the whole 20 ms sleep the calibration watches, on a core that other
    # processes may share)
    probe = (
        "import torch; torch.set_num_threads(2); "
        "from torch_chrion.runtime.calibrate import team_spin_ms; print(team_spin_ms(2))"
    )
    env = dict(os.environ, OMP_WAIT_POLICY=policy)
    ran = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    assert low <= float(ran.stdout.split()[-1]) <= high
