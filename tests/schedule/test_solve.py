"""solve(): never worse than HEFT, better on average, memory objective within its SLO,
infeasible SLOs reported (or raised in strict mode)."""

import numpy as np
import pytest
from schedule_checks import all_schedules, assert_valid

from torch_chrion.errors import InfeasiblePlanError, OptionError
from torch_chrion.schedule import heft, milp_schedule, random_task_graph, solve


def graphs(count, n_range=(6, 13), seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        devices = [("cpu", "cuda:0"), ("cpu:0", "cpu:1", "cuda:0")][int(rng.integers(2))]
        yield random_task_graph(
            rng, int(rng.integers(*n_range)), devices=devices,
            ccr=float(rng.choice([0.1, 1.0, 10.0])), alpha=float(rng.choice([0.5, 1.0, 2.0])),
        )  # fmt: skip


def test_never_worse_than_heft_and_better_on_average():
    ratios = []
    for g in graphs(25):
        plain, best = heft(g), solve(g, budget_s=0.05)
        assert_valid(g, best)
        assert best.makespan <= plain.makespan
        ratios.append(best.makespan / plain.makespan)
    assert np.mean(ratios) < 0.95


def test_close_to_the_milp_optimum_on_small_graphs():
    gaps = []
    for g in graphs(8, (5, 9), seed=1):
        gaps.append(solve(g, budget_s=0.1).makespan / milp_schedule(g).value)
    assert np.mean(gaps) < 1.05


def test_memory_objective_meets_its_slo_and_finds_the_brute_force_optimum_on_tiny_graphs():
    for g in graphs(4, (4, 6), seed=2):
        schedules = list(all_schedules(g))
        slo = 1.25 * min(sim.makespan for _, sim in schedules)
        brute = min(sim.accelerator_bytes for _, sim in schedules if sim.makespan <= slo)
        # a generous budget: tiny graphs stop at their evaluation cap, so load cannot cut them short
        lean = solve(g, "memory", slo=slo, budget_s=5.0)
        assert_valid(g, lean)
        assert lean.slo_met and lean.makespan <= slo
        assert lean.accelerator_bytes == pytest.approx(brute, rel=0.05, abs=1.0)


def test_memory_objective_moves_work_off_the_accelerator_as_the_slo_loosens():
    g = next(graphs(1, (10, 11), seed=3))
    fastest = solve(g).makespan
    tight = solve(g, "memory", slo=fastest * 1.05)
    loose = solve(g, "memory", slo=fastest * 100)
    assert tight.slo_met and loose.slo_met
    assert loose.accelerator_bytes == 0.0  # everything fits on the CPU lanes
    assert tight.accelerator_bytes >= loose.accelerator_bytes


def test_unmeetable_slo_is_reported_with_the_best_makespan():
    g = next(graphs(1, seed=4))
    plain = heft(g)
    slo = plain.makespan / 10
    for objective in ("latency", "memory"):
        result = solve(g, objective, slo=slo)
        assert result.slo_met is False
        assert result.makespan <= plain.makespan  # the best makespan found, not any
        with pytest.raises(InfeasiblePlanError, match="best makespan") as info:
            solve(g, objective, slo=slo, strict=True)
        assert slo < info.value.best_ms <= plain.makespan


def test_bad_options():
    g = next(graphs(1))
    with pytest.raises(OptionError, match="needs an slo"):
        solve(g, "memory")
    with pytest.raises(OptionError, match="objective"):
        solve(g, "throughput")
    with pytest.raises(OptionError, match="positive"):
        solve(g, slo=-1.0)
