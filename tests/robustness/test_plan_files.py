"""Plan files with wrong inner types or hostile nesting are PlanErrors naming the field; saved
plans and profiles follow the umask; a failed save names the file asked for (issue #19).

After each refusal the good plan still loads and runs the model exactly as before.
"""

import json
import os
import stat
from types import SimpleNamespace

import pytest
import torch
from models import StackedLSTM

import torch_chrion
from torch_chrion.errors import PlanError
from torch_chrion.profile import Profile
from torch_chrion.schedule import Plan
from torch_chrion.settings import ChrionSettings


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    torch.manual_seed(0)
    model = StackedLSTM().eval()
    inputs = model.example_inputs()
    settings = ChrionSettings(
        devices=("cpu:0", "cpu:1"),
        cpu_threads=1,
        profile_warmup=1,
        profile_repeats=3,
        profile_budget_s=3,
        cache_dir=str(tmp_path_factory.mktemp("cache")),
    )
    module = torch_chrion.compile_graph(model, inputs, settings)
    with torch.no_grad():
        expected = module(*inputs)
    torch.testing.assert_close(expected, model(*inputs), rtol=1e-5, atol=1e-5)
    return SimpleNamespace(
        model=model,
        inputs=inputs,
        settings=settings,
        plan=module.plan,
        expected=expected,
    )


def still_usable(compiled, path):
    """The good plan, saved at ``path``, loads and runs the model to the same outputs."""
    compiled.plan.save(path)
    loaded = Plan.load(path)
    assert loaded == compiled.plan
    with torch.no_grad():
        module = torch_chrion.compile_graph(
            compiled.model, compiled.inputs, compiled.settings, plan=loaded
        )
        assert torch.equal(module(*compiled.inputs), compiled.expected)


def write_edited(compiled, path, edit):
    data = json.loads(compiled.plan.to_json())
    edit(data)
    path.write_text(json.dumps(data))


def test_order_entry_that_is_a_list_names_the_field(compiled, tmp_path):
    path = tmp_path / "plan.json"
    write_edited(compiled, path, lambda d: d["order"].__setitem__(1, [d["order"][1]]))
    with pytest.raises(PlanError, match=r"plan.json: order\[1\] must be a string, got \["):
        Plan.load(path)
    still_usable(compiled, path)


def test_device_bytes_as_strings_names_the_field(compiled, tmp_path):
    path = tmp_path / "plan.json"
    write_edited(compiled, path, lambda d: d["device_bytes"].update({"cpu:1": "1024"}))
    with pytest.raises(PlanError, match=r"device_bytes\['cpu:1'\] must be a finite number"):
        Plan.load(path)
    still_usable(compiled, path)


def test_deeply_nested_plan_is_a_plan_error(compiled, tmp_path):
    path = tmp_path / "plan.json"
    path.write_text('{"order": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(PlanError, match="plan.json: not a JSON plan: nested deeper than"):
        Plan.load(path)
    with pytest.raises(PlanError, match="nested deeper than"):
        Plan.from_json("[" * 50 + "]" * 50)
    still_usable(compiled, path)


def written_mode(umask, save):
    old = os.umask(umask)
    try:
        save()
    finally:
        os.umask(old)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_plans_and_profiles_follow_the_umask(compiled, tmp_path, umask):
    plan = compiled.plan
    plan_path, profile_path = tmp_path / "plan.json", tmp_path / "profile.json"
    profile = Profile(
        devices=["cpu"],
        device_names={"cpu": "a CPU"},
        node_ms={node: {"cpu": 0.1} for node in plan.order},
        transfer={},
        graph_hash=plan.graph_hash,
        input_shapes=[list(x.shape) for x in compiled.inputs],
        torch_version=torch.__version__,
    )
    written_mode(umask, lambda: plan.save(plan_path))
    written_mode(umask, lambda: profile.save(profile_path))
    for path in (plan_path, profile_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert sorted(os.listdir(tmp_path)) == ["plan.json", "profile.json"]  # no temporary left
    still_usable(compiled, plan_path)


def test_cache_entries_follow_the_umask(tmp_path, monkeypatch):
    from torch_chrion import module as module_module

    monkeypatch.setattr(module_module, "_PLANS", {})
    torch.manual_seed(0)
    model = StackedLSTM().eval()
    inputs = model.example_inputs()
    settings = ChrionSettings(
        devices=("cpu",), profile_warmup=1, profile_repeats=3, cache_dir=str(tmp_path)
    )
    written_mode(0o022, lambda: torch_chrion.compile_graph(model, inputs, settings))
    (entry,) = tmp_path.glob("*.json")
    assert stat.S_IMODE(entry.stat().st_mode) == 0o644


def test_save_into_a_missing_folder_names_the_target(compiled, tmp_path):
    plan = compiled.plan
    target = tmp_path / "no-such-folder" / "model.plan.json"
    with pytest.raises(PlanError, match=f"cannot write the plan {target}: No such file") as info:
        plan.save(target)
    assert ".tmp" not in str(info.value)
    assert os.listdir(tmp_path) == []
    still_usable(compiled, tmp_path / "plan.json")
