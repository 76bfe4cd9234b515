"""Intra-op thread counts: each CPU lane runs with its own, and the caller's stay as they were.

A Python step runs on its lane's thread, so torch.get_num_threads() inside one reports that
lane's OpenMP thread count (ATen's OpenMP backend keeps it per thread)."""

import threading

import torch

from torch_chrion.runtime import PlacedGraph


def lane_threads(x):
    return torch.full((1,), float(torch.get_num_threads()))


def graph_reading_thread_counts():
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    a = graph.call_function(lane_threads, (x,))
    b = graph.call_function(lane_threads, (x,))
    graph.output((a, b))
    return torch.fx.GraphModule(torch.nn.Module(), graph), a.name, b.name


def test_each_cpu_lane_has_its_own_thread_count_and_the_callers_is_kept():
    before = torch.get_num_threads()
    gm, a, b = graph_reading_thread_counts()
    module = PlacedGraph(gm, {a: "cpu:0", b: "cpu:1"}, cpu_threads=3)
    assert [t.item() for t in module(torch.zeros(1))] == [3.0, 3.0]
    assert torch.get_num_threads() == before  # the caller's count is untouched

    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert seen == [before]  # and threads started later inherit the caller's, not a lane's

    single = PlacedGraph(gm, {a: "cpu", b: "cpu"}, cpu_threads=1)
    assert [t.item() for t in single(torch.zeros(1))] == [1.0, 1.0]
    assert torch.get_num_threads() == before


def test_default_is_one_thread_per_cpu_lane():
    gm, a, b = graph_reading_thread_counts()
    module = PlacedGraph(gm, {a: "cpu:0", b: "cpu:1"})
    expected = 1
    assert [t.item() for t in module(torch.zeros(1))] == [expected, expected]


SHAPES = """
import os, sys, torch
sys.path.insert(0, {tests!r})
from models import StackedLSTM
from torch_chrion.module import compile_graph
from torch_chrion.settings import ChrionSettings

def name(task):  # None for a thread that ended since the listing (the planner ends when idle)
    try:
        with open(f"/proc/self/task/{{task}}/comm") as comm:
            return comm.read().strip()
    except FileNotFoundError:
        return None

def threads():  # the lanes' OS threads (named chrion:<lane>), wherever they came from
    names = [n for n in map(name, os.listdir("/proc/self/task")) if n is not None]
    lanes = [name for name in names if name.startswith("chrion:")]
    # a plan with a wide node adds the process's one wide lane (cpu:0+cpu:1), once
    assert sum("+" in name for name in lanes) <= 1, lanes
    return sorted(name for name in lanes if "+" not in name)

torch.manual_seed(0)
model = StackedLSTM(features=4, hidden=8, layers=1, classes=3).eval()
settings = ChrionSettings(devices=("cpu:0", "cpu:1"), profile_warmup=0, profile_repeats=1)
compiled = compile_graph(model, model.example_inputs(seq=1, batch=1), settings)
# a new shape's bucket is profiled in the background: the planner's Python thread runs while
# there is work, and its profiling lane stops once the profile is taken
compiled(*model.example_inputs(seq=2, batch=1))
assert compiled.wait_for_plans(timeout=120)
before = threads()
for seq in range(3, 23):
    x = model.example_inputs(seq=seq, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(compiled(*x), model(*x))
    assert compiled.wait_for_plans(timeout=120)
    assert threads() == before, (seq, before, threads())
print(len(before), "lane threads", flush=True)
"""


def test_thread_count_stays_constant_over_20_sequence_lengths():
    """Every shape gets its own executable, and all of them share the process's lanes: the
    lane threads stay the same two, and at most one wide lane (in a child process: other
    tests' lanes would be counted here). The module's own background planner may start a Python thread of its own."""
    import subprocess
    import sys
    from pathlib import Path

    tests = str(Path(__file__).resolve().parent.parent)
    result = subprocess.run(
        [sys.executable, "-c", SHAPES.format(tests=tests)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "2 lane threads"
