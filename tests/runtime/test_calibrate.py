"""The executor's fixed costs from chain timings (torch_chrion.runtime.calibrate), against times
built by hand from known costs with the model the module docstring states."""

import pytest

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
