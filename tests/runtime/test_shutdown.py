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
