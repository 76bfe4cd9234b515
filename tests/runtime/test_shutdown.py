"""No hang at interpreter exit: lanes of modules still alive at exit are stopped and joined."""

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import sys, threading, torch
    sys.path[:0] = [{helpers!r}]
    from runtime_helpers import aten_graph, schedulable
    from torch_chrion.runtime import PlacedGraph

    def f(x):
        return torch.sin(x) @ torch.cos(x).T
    x = torch.randn(64, 64)
    gm = aten_graph(f, x)
    kept = PlacedGraph(gm, {{n.name: "cpu:" + str(i % 2) for i, n in enumerate(schedulable(gm))}})
    kept(x)
    # a daemon thread still calling at exit
    threading.Thread(target=lambda: [kept(x) for _ in range(10**6)], daemon=True).start()
    print("ok", flush=True)
    """
)


def test_interpreter_exits_with_lanes_running():
    script = SCRIPT.format(helpers=str(Path(__file__).resolve().parent))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


STUCK = textwrap.dedent(
    """
    import gc, os, sys, threading, time, torch
    from torch_chrion.errors import ExecutionError
    from torch_chrion.runtime import PlacedGraph

    def os_threads():
        return len(os.listdir("/proc/self/task"))

    entered = threading.Event()

    def stuck(x):
        entered.set()
        time.sleep(1.5)  # an operator that outlives the stop timeout
        return x * 2

    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    a = graph.call_function(stuck, (x,))
    b = graph.call_function(torch.ops.aten.neg.default, (a,))
    graph.output(b)
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    base = os_threads()
    module = PlacedGraph(gm, {a.name: "cpu:0", b.name: "cpu:1"})
    outcome = []

    def call():
        try:
            outcome.append(module(torch.ones(3)))
        except ExecutionError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert entered.wait(30)
    assert module.stop(timeout_s=0.1) is False  # the step is still running
    del module, gm  # frees everything the stuck lane thread does not hold itself
    gc.collect()
    caller.join(30)
    assert isinstance(outcome[0], ExecutionError) and "stopped" in str(outcome[0]), outcome
    deadline = time.monotonic() + 10
    while os_threads() > base and time.monotonic() < deadline:
        time.sleep(0.05)
    print("threads", os_threads() - base, flush=True)
    """
)


def test_a_stop_timeout_leaves_no_thread_behind_and_frees_nothing_in_use():
    """The lane stuck in a step past stop()'s timeout is detached, finishes its step on memory
    it still owns (a use-after-free would crash this child), and then exits."""
    result = subprocess.run(
        [sys.executable, "-c", STUCK], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "threads 0"


PLANNER_AT_EXIT = textwrap.dedent(
    """
    import time, torch
    from torch_chrion import module

    a = torch.randn(384, 384)
    def job():  # background planning: lull checks between ATen calls that release the GIL
        while True:
            module._TRAFFIC.wait()
            torch.mm(a, a)
    module._PLANNER.submit(job)
    time.sleep(0.3)
    print("ok", flush=True)
    """
)


def test_exit_while_background_planning_runs_does_not_abort():
    # Note [Planner at exit]: a daemon planner inside an ATen call at finalization aborted the
    # process ("terminate called without an active exception")
    for _ in range(3):
        result = subprocess.run(
            [sys.executable, "-c", PLANNER_AT_EXIT], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() == "ok"
        assert "terminate called" not in result.stderr
