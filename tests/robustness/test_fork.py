"""os.fork() after a model is built: the child has none of the parent's lane threads. A child
that calls the model gets the right result (new lanes, started on its first call); a child that
never touches it exits normally. Neither may hang (preforking servers, DataLoader workers)."""

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import os, pickle, sys, time
    import torch
    sys.path[:0] = [{tests!r}]
    from models import StackedLSTM
    from torch_chrion.module import compile_graph
    from torch_chrion.settings import ChrionSettings

    torch.manual_seed(0)
    model = StackedLSTM(features=4, hidden=8, layers=2, classes=3).eval()
    x = model.example_inputs(seq=5, batch=1)
    settings = ChrionSettings(devices=("cpu:0", "cpu:1"), profile_warmup=0, profile_repeats=1)
    compiled = compile_graph(model, x, settings)
    with torch.no_grad():
        expected = model(*x)
    torch.testing.assert_close(compiled(*x), expected)  # the parent's lanes are running

    def fork(child):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            child(write)
            sys.exit(0)  # a normal exit: finalizers and atexit run, as in a real worker
        os.close(write)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                with os.fdopen(read, "rb") as f:
                    data = f.read()
                return os.waitstatus_to_exitcode(status), data
            time.sleep(0.02)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        return "hang", b""

    def calls_the_model(fd):
        torch.set_num_threads(1)  # the caller's own OpenMP pool is the parent's (gone)
        out = compiled(*x)
        with os.fdopen(fd, "wb") as f:
            f.write(pickle.dumps(out))

    def never_touches_it(fd):
        os.close(fd)

    code, data = fork(calls_the_model)
    print("call", code, flush=True)
    if code == 0:
        torch.testing.assert_close(pickle.loads(data), expected)
        print("same as eager", flush=True)
    code, _ = fork(never_touches_it)
    print("exit", code, flush=True)
    torch.testing.assert_close(compiled(*x), expected)  # the parent is unaffected
    print("parent ok", flush=True)
    """
)


def test_forked_children_call_the_model_or_exit_without_hanging():
    tests = str(Path(__file__).resolve().parent.parent)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(tests=tests)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.split("\n")[:4] == ["call 0", "same as eager", "exit 0", "parent ok"]
