"""INFO logs through `logging` for what a user otherwise cannot see: profile-cache hits and
misses, a new shape bucket profiled, a plan reused for a new shape (issue #20)."""

import logging

import torch
from models import StackedLSTM

import torch_chrion
from torch_chrion import module as module_module
from torch_chrion.settings import ChrionSettings


def test_cache_and_plan_reuse_are_logged_at_info(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(module_module, "_PLANS", {})
    torch.manual_seed(0)
    model = StackedLSTM().eval()
    settings = ChrionSettings(
        devices=("cpu",),
        cpu_threads=1,
        profile_warmup=1,
        profile_repeats=3,
        profile_budget_s=3,
        cache_dir=str(tmp_path),
    )
    inputs = model.example_inputs(seq=8)
    with caplog.at_level(logging.INFO, logger="torch_chrion"):
        module = torch_chrion.compile_graph(model, inputs, settings)
    assert "has no plan yet: profiling and planning" in caplog.text
    assert "profile cache miss for cpu" in caplog.text
    assert "profile cache hit" not in caplog.text

    caplog.clear()
    monkeypatch.setattr(module_module, "_PLANS", {})
    with caplog.at_level(logging.INFO, logger="torch_chrion"):
        torch_chrion.compile_graph(model, inputs, settings)
    assert f"profile cache hit for cpu: {tmp_path}" in caplog.text

    caplog.clear()
    longer = model.example_inputs(seq=7)  # the same power-of-two bucket as 8
    with caplog.at_level(logging.INFO, logger="torch_chrion"), torch.no_grad():
        torch.testing.assert_close(module(*longer), model(*longer), rtol=1e-5, atol=1e-5)
    assert "reusing the plan of input shape bucket" in caplog.text
    assert "profile cache" not in caplog.text
