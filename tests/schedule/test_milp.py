"""The MILP against brute force over every placement and every order (4-5 task graphs)."""

import numpy as np
import pytest
from schedule_checks import all_schedules

from torch_chrion.errors import OptionError
from torch_chrion.schedule import milp_schedule, random_task_graph, working_set_bound

CASES = [
    (seed, n, devices)
    for seed, (n, devices) in enumerate(
        [
            (4, ("cpu", "cuda:0")),
            (5, ("cpu", "cuda:0")),
            (4, ("cpu:0", "cpu:1", "cuda:0")),
            (5, ("cpu", "cuda:0")),
            (5, ("cpu:0", "cpu:1", "cuda:0")),
        ]  # fmt: skip
    )
]


def graph_for(seed, n, devices, ccr=1.0):
    rng = np.random.default_rng(100 + seed)
    return random_task_graph(rng, n, devices=devices, ccr=ccr, alpha=0.7, out_degree=2)


@pytest.mark.parametrize("seed, n, devices", CASES)
def test_latency_optimum_equals_brute_force(seed, n, devices):
    g = graph_for(seed, n, devices, ccr=[0.5, 1.0, 5.0][seed % 3])
    brute = min(sim.makespan for _, sim in all_schedules(g))
    result = milp_schedule(g, "latency")
    assert result.optimal
    assert result.value == pytest.approx(brute, rel=1e-6)
    assert result.schedule.makespan == pytest.approx(brute, rel=1e-6)


@pytest.mark.parametrize("seed, n, devices", CASES[:4])
def test_memory_optimum_equals_brute_force_of_its_model(seed, n, devices):
    g = graph_for(seed, n, devices)
    schedules = list(all_schedules(g))
    fastest = min(sim.makespan for _, sim in schedules)
    slo = 1.2 * fastest
    feasible = [(p, sim) for p, sim in schedules if sim.makespan <= slo]
    # what the MILP minimises: weights + largest working set on the accelerator
    brute_model = min(working_set_bound(g, p) for p, _ in feasible)
    # the simulator's measure: a bound from above of the model's optimum
    brute_sim = min(sim.accelerator_bytes for _, sim in feasible)
    result = milp_schedule(g, "memory", slo=slo)
    assert result.optimal
    assert result.value == pytest.approx(brute_model, rel=1e-6)
    assert result.value <= brute_sim + 1e-6
    assert result.schedule.makespan <= slo * (1 + 1e-9)


def test_memory_with_an_slo_nothing_meets_is_infeasible():
    g = graph_for(0, 4, ("cpu", "cuda:0"))
    fastest = milp_schedule(g, "latency").value
    result = milp_schedule(g, "memory", slo=0.5 * fastest)
    assert not result.feasible and result.schedule is None


def test_bad_options():
    g = graph_for(0, 4, ("cpu", "cuda:0"))
    with pytest.raises(OptionError, match="needs an slo"):
        milp_schedule(g, "memory")
    with pytest.raises(OptionError, match="objective"):
        milp_schedule(g, "energy")
