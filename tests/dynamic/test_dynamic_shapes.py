"""torch.compile(model, backend="chrion") with Dynamo's default (dynamic) shapes: one chrion
graph serves every length and batch size, exact to eager, with no Dynamo recompile per length,
no call outside chrion, and no capture or profiling on the request path."""

import logging
import os
import threading
import time

import pytest
import torch
import torch._dynamo
from models import SpeechBiLSTM
from process_threads import os_thread_ids
from torch import nn
from torch._dynamo.utils import counters

import torch_chrion.dynamo as chrion_dynamo
from torch_chrion.errors import ModelError

LENGTHS = (9, 11, 13, 16, 17, 20, 23, 26, 29, 31, 32, 12)  # 12 lengths, buckets 16 and 32
BATCHES = (2, 3, 5)  # changes with the length from the second call: one dynamic graph


def reset_dynamo():
    """torch._dynamo.reset() as a fresh process (which imports torch_chrion.dynamo again)."""
    torch._dynamo.reset()
    chrion_dynamo.install_compile_hooks()
    counters.clear()


class Recurrent(nn.Module):
    def __init__(self, kind: type[nn.RNNBase], bidirectional: bool = False) -> None:
        super().__init__()
        self.rnn = kind(12, 16, num_layers=2, bidirectional=bidirectional, batch_first=True)
        self.head = nn.Linear(16 * (2 if bidirectional else 1), 5)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


@pytest.mark.parametrize(
    "model",
    [
        Recurrent(nn.LSTM),
        Recurrent(nn.GRU),
        Recurrent(nn.RNN),
        Recurrent(nn.LSTM, bidirectional=True),
    ],
    ids=["lstm", "gru", "rnn", "bilstm"],
)
def test_default_compile_serves_every_length_and_batch_in_chrion(model):
    torch.manual_seed(0)
    model = model.eval()
    reset_dynamo()
    compiled = torch.compile(model, backend="chrion")
    # every (length, batch) pair once; length and batch both change at the second call, so
    # Dynamo's automatic dynamic shapes make both symbolic in its second (and last) graph
    pairs = [(LENGTHS[k % 12], BATCHES[(k + k // 12) % 3]) for k in range(36)]
    assert len(set(pairs)) == 36
    with torch.no_grad():
        for length, batch in pairs:
            x = torch.randn(batch, length, 12)
            torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=1e-5)
    calls = len(pairs)
    assert counters["stats"]["unique_graphs"] <= 2
    assert sum(counters["graph_break"].values()) == 0
    modules = chrion_dynamo.compiled_modules()[-counters["stats"]["unique_graphs"] :]
    # every call ran in chrion: no eager fallback, no Dynamo recompile past the dynamic graph
    assert sum(m.stats["calls"] for m in modules) == calls
    generic = modules[-1]
    assert generic.stats["captures"] == 1  # one shape-generic capture at compile time ...
    assert generic.stats["profiles"] == 0  # ... and no profile on the request path:
    assert generic.stats["borrowed_plans"] >= 1  # new buckets ran on borrowed plans ...
    # ... lent by planned buckets: the scheduler ran for none of them on the request path (its
    # first plan, at compile time, is scheduled from the static graph's profile)
    assert generic.stats["derived_plans"] <= 1


def _speech_model_compiled(frames: int, classes: int = 32):
    """SpeechBiLSTM, compiled shape-generic (``dynamic=True``) and called once with ``frames``
    frames (not 40: Dynamo would duck-size it as the features): model, compiled, its module."""
    torch.manual_seed(0)
    model = SpeechBiLSTM(classes=classes).eval()
    reset_dynamo()
    compiled = torch.compile(model, backend="chrion", dynamic=True)
    with torch.no_grad():
        compiled(torch.randn(1, frames, 40))
    return model, compiled, chrion_dynamo.compiled_modules()[-1]


def test_new_lengths_reuse_one_executable_per_plan(caplog):
    with caplog.at_level(logging.INFO, logger="torch_chrion"):
        model, compiled, module = _speech_model_compiled(24)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="torch_chrion"):
        module.wait_for_plans(timeout=120)
        built = module.stats["executables_built"]
        for length in range(33, 64, 3):  # one bucket (64), its plan borrowed then swapped
            x = torch.randn(1, length, 40)
            torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=1e-5)
        # the borrowed plan shares the example bucket's executable; its own plan's executable
        # is built (and run once) by the background planner
        assert module.stats["executables_built"] - built <= 1
        assert module.wait_for_plans(timeout=120)  # its INFO lines logged inside at_level
    assert counters["stats"]["unique_graphs"] == 1
    assert module.stats["captures"] == 1 and module.stats["profiles"] == 1  # compile time
    assert module.stats["background_profiles"] == module.stats["borrowed_plans"] == 1
    assert module.stats["plan_swaps"] == 1
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "new input shape bucket" in messages and "has no plan yet" in messages
    assert "now runs on its own plan" in messages


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_background_planning_leaves_no_thread_behind():
    """The planner thread ends when its queue drains, and with it the OpenMP team that running
    wide steps opened on it (Note [Planner ends when idle]): the process keeps the threads it
    had, so libgomp does not go on throttling every team's spin-wait (the user's eager code ran
    ~2x slower for the rest of the process)."""
    # 28 classes: a structure no other test plans (the process shares plans by structure)
    model, compiled, module = _speech_model_compiled(24, classes=28)
    with torch.no_grad():
        assert module.wait_for_plans(timeout=120)
        before = os_thread_ids()
        x = torch.randn(1, 50, 40)  # bucket 64: borrowed, then planned in the background
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=1e-5)
        assert module.wait_for_plans(timeout=120)
    assert module.stats["background_profiles"] == 1
    deadline = time.monotonic() + 10  # the thread ends just after its last job is counted
    while time.monotonic() < deadline and (
        not os_thread_ids() <= before
        or any(t.name == "chrion-planner" for t in threading.enumerate())
    ):
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate() if t.name == "chrion-planner"]
    assert os_thread_ids() <= before  # the planner's thread ended (and no other started)
    with torch.no_grad():  # the next bucket starts a planner again
        y = torch.randn(1, 100, 40)
        torch.testing.assert_close(compiled(y), model(y), rtol=0, atol=1e-5)
        assert module.wait_for_plans(timeout=120)
    assert module.stats["background_profiles"] == 2


def test_a_shape_arriving_while_its_bucket_is_planned_moves_to_the_new_plan():
    from torch_chrion.module import _single_lane_plan

    # 24 classes: a structure no other test plans (the process shares plans by structure)
    model, compiled, module = _speech_model_compiled(24, classes=24)
    with torch.no_grad():
        module.wait_for_plans(timeout=120)
        build, plan_for = module._executable, module._profile_and_plan
        arrived: list[torch.Tensor] = []
        once = [True]
        arriving = torch.randn(1, 50, 40)  # bucket 64 too, new while the planner builds

        def own_plan(graph, inputs, bucket):  # unlike the borrowed two-lane plan
            plan_for(graph, inputs, bucket)
            return _single_lane_plan(graph, "cpu:0", module.settings)

        def build_then_serve(*args, **kwargs):  # the planner's build, then at once a request
            executable = build(*args, **kwargs)
            if threading.current_thread().name == "chrion-planner" and once:
                once.clear()  # the request's own build comes back here
                arrived.append(module(50, arriving)[0])
            return executable

        module._profile_and_plan, module._executable = own_plan, build_then_serve
        compiled(torch.randn(1, 40, 40))  # bucket 64: runs on a borrowed plan, its own queued
        assert module.wait_for_plans(timeout=120)
        built = module.stats["executables_built"]
        for length in (44, 50, 61):  # new shapes and the arrived one: on the bucket's own plan
            x = torch.randn(1, length, 40)
            torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=1e-5)
    torch.testing.assert_close(arrived[0], model(arriving), rtol=0, atol=1e-5)
    assert module.stats["plan_swaps"] == 1
    assert module.stats["executables_built"] == built  # the own plan's one executable serves all
    bucket = module._entries[((int, 61), ((1, 61, 40), torch.float32))].bucket
    in_bucket = [e.executable for e in module._entries.values() if e.bucket == bucket]
    assert len(in_bucket) == 4 and all(ex is module._last for ex in in_bucket)  # 40 44 50 61
    assert module._last.lanes == ["cpu:0"]


def test_a_bucket_whose_own_plan_is_the_borrowed_one_builds_nothing():
    # 20 classes: a structure no other test plans (the process shares plans by structure)
    model, compiled, module = _speech_model_compiled(24, classes=20)
    with torch.no_grad():
        module.wait_for_plans(timeout=120)
        built = module.stats["executables_built"]
        # its own plan places and orders every node as the plan it borrowed (common: a
        # neighbouring bucket's profile scaled), so its executable is the one already running
        module._profile_and_plan = lambda graph, inputs, bucket: module.plans[bucket]
        for length in (40, 44, 50):  # bucket 64: borrowed, then its own plan swapped in
            x = torch.randn(1, length, 40)
            torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=1e-5)
        assert module.wait_for_plans(timeout=120)
    assert module.stats["plan_swaps"] == 1
    assert module.stats["executables_built"] == built  # none built, on or off the request path


def test_warmup_prepares_buckets_ahead_of_traffic():
    model, compiled, module = _speech_model_compiled(20)
    with torch.no_grad():
        before = module.stats["profiles"]  # 0 if an earlier test planned this bucket
        module.warmup([[100, (1, 100, 40)]])  # the SymInt length, then the tensor
        assert module.stats["profiles"] == before + 1  # bucket 128, planned by warmup
        x = torch.randn(1, 90, 40)
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=1e-5)
    assert module.stats["profiles"] == before + 1 and module.stats["borrowed_plans"] == 0


def test_training_mode_is_a_clear_error():
    model = SpeechBiLSTM().train()
    reset_dynamo()
    compiled = torch.compile(model, backend="chrion")
    with pytest.raises(Exception) as info:
        compiled(torch.randn(1, 20, 40))
    cause = _cause(info.value, ModelError)
    assert cause is not None and "model.eval()" in str(cause)


def test_inputs_requiring_grad_are_a_clear_error():
    model = SpeechBiLSTM().eval()
    reset_dynamo()
    compiled = torch.compile(model, backend="chrion")
    with pytest.raises(Exception) as info:
        compiled(torch.randn(1, 20, 40, requires_grad=True))
    cause = _cause(info.value, ModelError)
    assert cause is not None and "torch.no_grad()" in str(cause)


@pytest.mark.parametrize("before", [False, True])
def test_allow_rnn_is_left_as_it_was(before):
    model = SpeechBiLSTM().eval()
    reset_dynamo()
    with torch._dynamo.config.patch(allow_rnn=before):
        compiled = torch.compile(model, backend="chrion")
        with torch.no_grad():
            compiled(torch.randn(1, 20, 40))
        assert torch._dynamo.config.allow_rnn is before
    assert sum(counters["graph_break"].values()) == 0  # chrion's compile had it on


class ScaledLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 8, batch_first=True)

    def forward(self, x):
        return self.lstm(x)[0]


def _recorded_targets():
    targets = []

    def recording(gm, example_inputs):
        targets.extend(n.target for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    with torch.no_grad():
        torch.compile(ScaledLSTM().eval(), backend=recording)(torch.randn(1, 5, 4))
    return targets


def test_other_backends_do_not_see_allow_rnn():
    reset_dynamo()
    with torch.no_grad():
        torch.compile(ScaledLSTM().eval(), backend="chrion")(torch.randn(1, 5, 4))
    # another backend's compile leaves the LSTM to eager, as Dynamo does by default ...
    assert torch.lstm not in _recorded_targets()
    # ... and would have it in its graph with allow_rnn on (so the check above can fail)
    reset_dynamo()
    with torch._dynamo.config.patch(allow_rnn=True):
        assert torch.lstm in _recorded_targets()


def _cause(error, kind):
    while error is not None and not isinstance(error, kind):
        error = error.__cause__ or error.__context__
    return error


def test_background_work_waits_for_a_lull_between_requests():
    from torch_chrion.module import _Traffic

    traffic = _Traffic()
    tokens = []
    with traffic:  # a request runs
        waiter = threading.Thread(target=lambda: tokens.append(traffic.wait()))
        waiter.start()
        waiter.join(timeout=0.2)
        assert waiter.is_alive() and not tokens  # background work waits for it ...
    waiter.join(timeout=10)
    assert len(tokens) == 1  # ... and starts once it is over
    assert not traffic.disturbed(tokens[0])
    with traffic:
        pass
    assert traffic.disturbed(tokens[0])  # a run that a request overlapped is not counted
