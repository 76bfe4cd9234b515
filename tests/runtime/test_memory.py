"""Repeated calls do not leak: RSS grows less than 2% over 2,000 calls."""

import gc

import psutil
import torch
from models import StackedLSTM
from runtime_helpers import aten_graph, random_placement

from torch_chrion.runtime import PlacedGraph


def test_rss_grows_less_than_two_percent_over_2000_calls():
    torch.manual_seed(0)
    model = StackedLSTM(features=8, hidden=16, layers=2, classes=4).eval()
    gm = aten_graph(model, *model.example_inputs(seq=4, batch=2))
    module = PlacedGraph(gm, random_placement(gm, ["cpu:0", "cpu:1"], 3))
    module.enable_trace()  # the trace buffer must not grow either
    x = model.example_inputs(seq=4, batch=2)
    for _ in range(200):  # warm up allocator caches
        module(*x)
    gc.collect()
    process = psutil.Process()
    before = process.memory_info().rss
    for _ in range(2000):
        module(*x)
    gc.collect()
    after = process.memory_info().rss
    assert after < before * 1.02, f"RSS grew from {before} to {after} bytes"
