"""chrion's CPU recurrent kernels on several threads (csrc/kernels/recurrent_schedule.h): with
N intra-op threads on the calling thread, a layer's hidden units are split over the caller and
N-1 helpers, the other threads of its OpenMP team (a bidirectional layer by direction, a
one-direction layer of a batch of two or more row groups by parts of the batch: Note [Batch
parts] in recurrent.cpp). Each block of hidden units is computed by the same code whichever
thread runs it, and a part of the batch groups its rows as the whole batch does, so every thread
count gives the one-thread result bit for bit, and that result equals aten's to float32
tolerance.
"""

from __future__ import annotations

import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from fresh_process import run_script
from process_threads import os_thread_ids
from recurrent_reference import (
    TOL,
    assert_reverse_matches_flipped_reference,
    make_module,
    ran_chrion_kernel,
    run_chrion,
    run_reference,
)
from torch import Tensor


@contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _inputs(kind: str, module: torch.nn.Module, batch: int, steps: int) -> tuple:
    dirs = 2 if module.bidirectional else 1
    x = torch.randn(steps, batch, module.input_size)
    h0 = torch.randn(module.num_layers * dirs, batch, module.hidden_size)
    c0 = (
        torch.randn(module.num_layers * dirs, batch, module.hidden_size) if kind == "lstm" else None
    )
    return x, h0, c0


# every case is big enough for the kernels to use 3 threads (a time step of >= 3 x 32K
# multiply-adds, or >= 2 x 32K in a bidirectional layer of >= 1M per direction), so 2 and 3
# threads really split it; hidden sizes that are not a multiple of the 16-float block (40, 100,
# 161) give ragged slices
SPLIT_CASES = [
    # kind, features, hidden, layers, bidirectional, batch, steps
    ("lstm", 24, 256, 2, False, 1, 9),  # batch 1, row split
    ("lstm", 12, 40, 2, True, 16, 5),  # by direction, and rows inside a direction at 3 threads
    ("gru", 20, 100, 3, False, 7, 6),
    ("gru", 16, 64, 2, True, 8, 40),
    ("rnn_tanh", 10, 161, 1, True, 3, 30),
    ("rnn_relu", 8, 256, 2, False, 2, 7),
    # parts of the batch: 8 + 5 rows at 2 threads, 4 + 4 + 5 at 3 (groups of 4 rows on
    # AVX-512, of 3 on AVX2), each layer's part after the same part of the layer below
    ("lstm", 16, 64, 2, False, 13, 11),
    ("rnn_tanh", 12, 48, 3, False, 9, 8),
]


@pytest.mark.parametrize("kind,features,hidden,layers,bidirectional,batch,steps", SPLIT_CASES)
def test_every_thread_count_gives_the_one_thread_result(
    kind: str,
    features: int,
    hidden: int,
    layers: int,
    bidirectional: bool,
    batch: int,
    steps: int,
) -> None:
    torch.manual_seed(hash((kind, hidden, batch)) % 2**31)
    module = make_module(kind, features, hidden, layers, bidirectional)
    x, h0, c0 = _inputs(kind, module, batch, steps)
    results = {}
    for n in (1, 2, 3):
        with intra_op_threads(n), torch.no_grad():
            results[n] = run_chrion(kind, module, x, h0, c0, batch_first=False)
    assert ran_chrion_kernel(module)
    for n in (2, 3):
        for one, many in zip(results[1], results[n], strict=True):
            assert torch.equal(one, many), f"{n} threads differ from one"
    with torch.no_grad():
        want = run_reference(kind, module, x, h0, c0)
    for got, ref in zip(results[1], want, strict=True):
        torch.testing.assert_close(got, ref, **TOL)


def test_helpers_joining_late_give_the_one_thread_result() -> None:
    """Calls spaced so that the helpers have parked (each call starts with its helpers away and
    the caller taking their slices at once until they join), and three threads on this
    two-core machine (one of them is often descheduled mid-call): the result is still the
    one-thread result, bit for bit, whoever ran which slices."""
    torch.manual_seed(16)
    module = make_module("lstm", 16, 256, 2, False)
    x, h0, c0 = _inputs("lstm", module, 1, 24)
    with intra_op_threads(1), torch.no_grad():
        want = run_chrion("lstm", module, x, h0, c0, batch_first=False)
    with intra_op_threads(3), torch.no_grad():
        for call in range(24):
            time.sleep((0.0, 1e-4, 2e-3)[call % 3])  # the helpers poll 300 us, then park
            got = run_chrion("lstm", module, x, h0, c0, batch_first=False)
            for g, w in zip(got, want, strict=True):
                assert torch.equal(g, w), f"call {call} differs from one thread"


def test_batch_first_and_reverse_on_two_threads() -> None:
    torch.manual_seed(11)
    module = make_module("lstm", 16, 128, 1, False)
    # a batch of two row groups: parts of the batch read and write batch-first rows
    x, h0, c0 = torch.randn(6, 12, 16), torch.randn(1, 6, 128), torch.randn(1, 6, 128)
    with intra_op_threads(2):
        assert_reverse_matches_flipped_reference("lstm", module, x, h0, c0, batch_first=True)


def test_threads_are_reused_across_calls() -> None:
    """Twenty two-thread calls start no thread: they run on the caller's OpenMP team (Note
    [Recurrent threads are the caller's team])."""
    torch.manual_seed(12)
    module = make_module("gru", 8, 128, 2, False)
    x, h0, _ = _inputs("gru", module, 4, 6)
    with intra_op_threads(2), torch.no_grad():
        run_chrion("gru", module, x, h0, None, batch_first=False)
        threads = os_thread_ids()
        for _ in range(20):
            run_chrion("gru", module, x, h0, None, batch_first=False)
        assert os_thread_ids() <= threads  # none started (one may have ended: os_thread_ids)


# In a fresh process (no OpenMP team grown yet): the threads one call starts.
_THREADS_SCRIPT = textwrap.dedent(
    """
    import torch
    from process_threads import os_threads
    from torch_chrion.ops import ensure_loaded
    ensure_loaded()
    torch.set_num_threads(8)
    torch.manual_seed(15)
    m = torch.nn.GRU(8, 32, bidirectional=True)
    x, h0 = torch.randn(400, 2, 8), torch.randn(2, 2, 32)
    params = [w.detach() for w in m._flat_weights]
    before = os_threads()
    torch.ops.chrion.gru(x, h0, params, True, 1, True, False, False)
    print(os_threads() - before)
    """
)


def test_no_more_helpers_than_slices() -> None:
    """Eight intra-op threads on a layer worth two (a bidirectional layer whose steps are too
    small to split by rows): the call's team is the caller and one helper, not seven helpers
    that would only spin; and the result is still aten's."""
    result = run_script(_THREADS_SCRIPT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) == 1
    torch.manual_seed(15)
    module = make_module("gru", 8, 32, 1, True)
    x, h0, _ = _inputs("gru", module, 2, 400)  # a step of 6K multiply-adds, 2.4M per direction
    with intra_op_threads(8), torch.no_grad():
        got = run_chrion("gru", module, x, h0, None, batch_first=False)
        want = run_reference("gru", module, x, h0, None)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


def test_concurrent_callers_each_get_their_own_result() -> None:
    """Two threads calling at once, each with two intra-op threads (two executor lanes running
    recurrent nodes side by side): neither sees the other's helpers or data."""
    torch.manual_seed(13)
    cases = [
        ("lstm", make_module("lstm", 12, 96, 2, True)),
        ("gru", make_module("gru", 8, 160, 2, False)),
    ]
    inputs = [_inputs(kind, module, 3, 20) for kind, module in cases]
    with torch.no_grad():
        expected = [
            run_reference(kind, module, *args)
            for (kind, module), args in zip(cases, inputs, strict=True)
        ]
    failures: list[str] = []
    start = threading.Barrier(len(cases))

    def caller(index: int) -> None:
        kind, module = cases[index]
        try:
            torch.set_num_threads(2)  # this thread's intra-op threads
            start.wait()
            for _ in range(15):
                with torch.no_grad():
                    got = run_chrion(kind, module, *inputs[index], batch_first=False)
                for g, w in zip(got, expected[index], strict=True):
                    torch.testing.assert_close(g, w, **TOL)
        except Exception as exc:  # reported on the test's thread below
            failures.append(f"{kind}: {exc}")

    threads_before = torch.get_num_threads()
    workers = [threading.Thread(target=caller, args=(i,)) for i in range(len(cases))]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
    finally:
        torch.set_num_threads(threads_before)
    assert not any(worker.is_alive() for worker in workers)
    assert not failures, failures


def _state_after(kind: str, module: torch.nn.Module, x: Tensor, h0: Tensor) -> Tensor:
    with torch.no_grad():
        return run_chrion(kind, module, x, h0, None, batch_first=False)[1]


def test_packed_weights_follow_load_state_dict_on_two_threads() -> None:
    torch.manual_seed(14)
    module, other = make_module("gru", 8, 128, 2, False), make_module("gru", 8, 128, 2, False)
    x, h0, _ = _inputs("gru", module, 2, 5)
    with intra_op_threads(2):
        before = _state_after("gru", module, x, h0)
        module.load_state_dict(other.state_dict())
        after = _state_after("gru", module, x, h0)
    with torch.no_grad():
        torch.testing.assert_close(after, other(x, h0)[1], **TOL)
    assert not torch.allclose(before, after)
