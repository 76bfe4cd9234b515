"""A saved plan used under other settings: refused where it cannot run as asked, run with a
logged warning where it can (Plan.check_use); a missed SLO is logged (issue #20)."""

import dataclasses
import logging

import pytest
import torch
from models import StackedLSTM

import torch_chrion
from torch_chrion.errors import PlanError
from torch_chrion.schedule import Plan
from torch_chrion.settings import ChrionSettings


@pytest.fixture(scope="module")
def model_and_inputs():
    torch.manual_seed(0)
    model = StackedLSTM().eval()
    return model, model.example_inputs()


@pytest.fixture
def settings(tmp_path):
    return ChrionSettings(
        devices=("cpu:0", "cpu:1"),
        cpu_threads=1,
        profile_warmup=1,
        profile_repeats=3,
        profile_budget_s=3,
        cache_dir=str(tmp_path),
    )


def compile_with(model_and_inputs, settings, plan=None, inputs=None):
    model, example = model_and_inputs
    inputs = inputs or example
    module = torch_chrion.compile_graph(model, inputs, settings, plan=plan)
    with torch.no_grad():
        torch.testing.assert_close(module(*inputs), model(*inputs), rtol=1e-5, atol=1e-5)
    return module


def saved(plan, tmp_path):
    plan.save(tmp_path / "plan.json")
    return Plan.load(tmp_path / "plan.json")


def test_memory_plan_under_latency_objective_runs_with_a_warning(
    model_and_inputs, settings, tmp_path, caplog
):
    memory = dataclasses.replace(settings, objective="memory", slo_ms=1e4)
    plan = saved(compile_with(model_and_inputs, memory).plan, tmp_path)
    with caplog.at_level(logging.WARNING, logger="torch_chrion"):
        module = compile_with(model_and_inputs, settings, plan=plan)
    assert module.plan is plan
    assert "objective='memory', slo_ms=10000.0, but objective='latency'" in caplog.text


def test_plan_on_other_lanes_than_devices_asked_is_refused(model_and_inputs, settings, tmp_path):
    plan = saved(compile_with(model_and_inputs, settings).plan, tmp_path)
    one_lane = dataclasses.replace(settings, devices=("cpu",))
    with pytest.raises(PlanError, match=r"lanes \['cpu:0', 'cpu:1'\], but devices=\['cpu'\]"):
        compile_with(model_and_inputs, one_lane, plan=plan)
    compile_with(model_and_inputs, dataclasses.replace(settings, devices=None), plan=plan)


def test_granularity_mismatch_names_both_granularities(model_and_inputs, settings, tmp_path):
    by_op = dataclasses.replace(settings, granularity="op")
    by_layer = dataclasses.replace(settings, granularity="layer")
    plan = saved(compile_with(model_and_inputs, by_op).plan, tmp_path)
    with pytest.raises(PlanError, match="made with granularity='op', but granularity='layer'"):
        compile_with(model_and_inputs, by_layer, plan=plan)
    # a plan written before granularity was recorded: its graph hash tells what went wrong
    legacy = dataclasses.replace(plan, granularity=None, seq_chunks=None)
    with pytest.raises(PlanError, match=f"made for another graph \\({plan.graph_hash}; "):
        compile_with(model_and_inputs, by_layer, plan=legacy)
    compile_with(model_and_inputs, by_op, plan=plan)


def test_auto_granularity_takes_the_saved_plans(model_and_inputs, settings, tmp_path):
    """A plan saved with another granularity than "auto" (such as "op", or "layer", the default
    before "auto") runs under default settings: "auto" takes the plan's."""
    assert settings.granularity == "auto"
    fresh = compile_with(model_and_inputs, settings)
    assert fresh.settings.granularity == "auto" and fresh.plan.granularity == "auto"
    for granularity in ("op", "layer"):
        other = dataclasses.replace(settings, granularity=granularity)
        plan = saved(compile_with(model_and_inputs, other).plan, tmp_path)
        module = compile_with(model_and_inputs, settings, plan=plan)
        assert module.plan is plan and module.settings.granularity == granularity


def test_graph_hash_is_checked(model_and_inputs, settings, tmp_path, caplog):
    model, inputs = model_and_inputs
    plan = saved(compile_with(model_and_inputs, settings).plan, tmp_path)
    longer = model.example_inputs(seq=13)
    with caplog.at_level(logging.WARNING, logger="torch_chrion"):
        compile_with(model_and_inputs, settings, plan=plan, inputs=longer)
    assert f"the plan was made for graph {plan.graph_hash}, not this one" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="torch_chrion"):
        compile_with(model_and_inputs, settings, plan=plan)
    assert caplog.text == ""


def test_missed_slo_is_logged(model_and_inputs, settings, caplog):
    tight = dataclasses.replace(settings, slo_ms=1e-6)
    with caplog.at_level(logging.WARNING, logger="torch_chrion"):
        module = compile_with(model_and_inputs, tight)
    assert module.plan.slo_met is False
    assert "the plan misses the 1e-06 ms SLO: predicted" in caplog.text
