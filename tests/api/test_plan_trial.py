"""Plan trials (Note [Plan trials] in runtime/trial.py): where the replay puts two plans close,
the module builds both, times them on the example inputs and keeps the quicker one."""

from __future__ import annotations

import dataclasses

import torch
from models import BiGRUWithState

import torch_chrion
from torch_chrion import schedule
from torch_chrion.runtime import trial


def offer_a_second_plan(monkeypatch, lane: str) -> list[list]:
    """make_plans offers, after its own first plan, every node on ``lane`` (a plan its replay
    did not prefer); returns the list each call's plans are appended to."""
    made: list[list] = []
    real_make_plans = schedule.make_plans

    def two_plans(gm, profile, settings, graph_hash=None, costs=None):
        first = real_make_plans(gm, profile, settings, graph_hash, costs)[0]
        other = dataclasses.replace(
            first, placement=dict.fromkeys(first.placement, lane), wide=None
        )
        made.append([first, other])
        return made[-1]

    monkeypatch.setattr(schedule, "make_plans", two_plans)
    return made


def compiled_bi_gru(cache_dir, seq: int):
    torch.manual_seed(0)
    model = BiGRUWithState(layers=1).eval()
    inputs = model.example_inputs(seq=seq, batch=1)
    settings = torch_chrion.ChrionSettings(devices=("cpu:0", "cpu:1"), cache_dir=cache_dir)
    return model, inputs, torch_chrion.compile_graph(model, inputs, settings)


def test_the_module_keeps_the_plan_its_trial_timed_quicker(monkeypatch, cache_dir):
    made = offer_a_second_plan(monkeypatch, "cpu:1")
    timed: list[int] = []

    def second_is_quicker(runners, inputs, settle_s):
        timed.append(len(runners))
        for run in runners:
            run(*inputs)  # each plan built and runnable on the example inputs
        return 1, [2.0, 1.0]

    monkeypatch.setattr(trial, "quickest", second_is_quicker)
    model, inputs, compiled = compiled_bi_gru(cache_dir, seq=16)
    assert timed == [2] and compiled.stats["plan_trials"] == 1
    assert compiled.plan is made[0][1]
    assert set(compiled.plan.placement.values()) == {"cpu:1"}
    with torch.no_grad():
        torch.testing.assert_close(compiled(*inputs), model(*inputs))


def test_a_real_trial_keeps_one_of_the_two_plans_and_runs_it_exactly(monkeypatch, cache_dir):
    made = offer_a_second_plan(monkeypatch, "cpu:0")
    # a bucket of its own (40 steps), so that no plan shared by the test above is reused
    model, inputs, compiled = compiled_bi_gru(cache_dir, seq=40)
    assert compiled.stats["plan_trials"] == 1
    assert any(compiled.plan is plan for plan in made[0])
    with torch.no_grad():
        torch.testing.assert_close(compiled(*inputs), model(*inputs))
