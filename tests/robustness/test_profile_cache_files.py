"""A damaged profile-cache entry costs one re-measurement, never a failed load (issue #19).

Each case: load a model (which caches its CPU profile), damage the entry, load again. Reading the
damaged file directly is a PlanError; the load measures again, gives exactly the first load's
outputs (which match eager) and leaves a good entry in place of the damaged one.
"""

import json
import math
import os

import pytest
import torch
from models import StackedLSTM

import torch_chrion
from torch_chrion import module as module_module
from torch_chrion.errors import PlanError
from torch_chrion.profile import Profile
from torch_chrion.profile import profiler as profiler_module
from torch_chrion.settings import ChrionSettings


def settings(cache_dir):
    return ChrionSettings(
        devices=("cpu",),
        cpu_threads=1,
        profile_warmup=1,
        profile_repeats=3,
        profile_budget_s=3,
        cache_dir=str(cache_dir),
    )


@pytest.fixture
def measurements(monkeypatch):
    """Counts CPU measurements, and forgets the plans this process made, so that each load
    consults the profile cache."""
    calls = []
    real = profiler_module.measure_on_cpu_lane

    def counting(*args):
        calls.append(args[2])
        return real(*args)

    monkeypatch.setattr(profiler_module, "measure_on_cpu_lane", counting)
    monkeypatch.setattr(module_module, "_PLANS", {})
    # a readable entry is kept: the re-time that re-measures one cached under a load burst
    # (tests/profile) would, on this shared machine, make the counts below depend on the load
    monkeypatch.setattr(profiler_module, "cached_profile_holds", lambda *args: True)
    return calls


def load(cache_dir):
    torch.manual_seed(0)
    model = StackedLSTM().eval()
    inputs = model.example_inputs()
    with torch.no_grad():
        expected = model(*inputs)
        got = torch_chrion.compile_graph(model, inputs, settings(cache_dir))(*inputs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    return got


def damage_and_reload(tmp_path, measurements, monkeypatch, damage, readable=False):
    """Load, ``damage(entry, data)`` the cached entry, load again; ``readable``: the damaged
    entry is still a well-formed Profile, wrong only for this graph and device."""
    first = load(tmp_path)
    (entry,) = tmp_path.glob("*.json")
    good = json.loads(entry.read_text())
    damage(entry, json.loads(entry.read_text()))
    if not readable:
        with pytest.raises(PlanError, match=entry.name):
            Profile.load(entry)
    monkeypatch.setattr(module_module, "_PLANS", {})
    before = len(measurements)
    assert torch.equal(load(tmp_path), first)
    assert len(measurements) == before + 1  # measured again
    rewritten = Profile.load(entry)  # a regular file, well-formed again
    assert sorted(rewritten.node_ms) == sorted(good["node_ms"])
    assert all(math.isfinite(c["cpu"]) for c in rewritten.node_ms.values())
    # and the good entry is then used: a third load measures nothing
    monkeypatch.setattr(module_module, "_PLANS", {})
    assert torch.equal(load(tmp_path), first)
    assert len(measurements) == before + 1


def rewrite(entry, data):
    entry.write_text(json.dumps(data))


def test_entry_missing_a_node_is_measured_again(tmp_path, measurements, monkeypatch):
    def damage(entry, data):
        data["node_ms"].pop(sorted(data["node_ms"])[0])
        rewrite(entry, data)

    damage_and_reload(tmp_path, measurements, monkeypatch, damage, readable=True)


def test_entry_with_null_costs_is_measured_again(tmp_path, measurements, monkeypatch):
    def damage(entry, data):
        rewrite(entry, {**data, "node_ms": {n: {"cpu": None} for n in data["node_ms"]}})

    damage_and_reload(tmp_path, measurements, monkeypatch, damage, readable=True)


def test_entry_with_empty_device_names_is_measured_again(tmp_path, measurements, monkeypatch):
    def damage(entry, data):
        rewrite(entry, {**data, "device_names": {}})

    damage_and_reload(tmp_path, measurements, monkeypatch, damage)


def test_entry_with_costs_of_1e308_is_measured_again(tmp_path, measurements, monkeypatch):
    def damage(entry, data):
        rewrite(entry, {**data, "node_ms": {n: {"cpu": 1e308} for n in data["node_ms"]}})

    damage_and_reload(tmp_path, measurements, monkeypatch, damage)


def test_entry_of_non_utf8_bytes_is_measured_again(tmp_path, measurements, monkeypatch):
    def damage(entry, data):
        entry.write_bytes(json.dumps(data).encode()[:-40] + b"\xff\xfe\xc3(" + b"}")

    damage_and_reload(tmp_path, measurements, monkeypatch, damage)


def test_deeply_nested_entry_is_measured_again(tmp_path, measurements, monkeypatch):
    def damage(entry, data):
        entry.write_text('{"node_ms": ' + "[" * 100_000 + "]" * 100_000 + "}")

    damage_and_reload(tmp_path, measurements, monkeypatch, damage)


def test_fifo_at_the_entry_path_is_never_opened(tmp_path, measurements, monkeypatch):
    def damage(entry, data):
        entry.unlink()
        os.mkfifo(entry)  # opening it for reading would block until a writer came

    damage_and_reload(tmp_path, measurements, monkeypatch, damage)
