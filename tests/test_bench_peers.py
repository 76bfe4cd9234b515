"""The peers' timing protocol: interleaved rounds, a settled untimed block before each engine's
timed calls (so no engine is timed while another's threads still spin)."""

from __future__ import annotations

from torch_chrion.bench_peers import Engine, time_engines


def test_each_round_gives_every_engine_an_untimed_call_then_its_timed_calls() -> None:
    order: list[str] = []
    engines = [Engine(name, lambda n=name: order.append(n), ()) for name in ("a", "b")]
    medians = time_engines(engines, repeats=3, warmup=1, settle_ms=0.0, calls=2)
    assert set(medians) == {"a", "b"}
    # (warmup + repeats) rounds; in each, a's block (1 untimed + 2 timed) then b's
    assert order == (["a"] * 3 + ["b"] * 3) * 4


def test_the_settled_block_lasts_at_least_settle_ms() -> None:
    calls: list[int] = []
    engine = Engine("a", lambda: calls.append(1), ())
    time_engines([engine], repeats=1, warmup=0, settle_ms=5.0, calls=1)
    # a call takes far less than 5 ms, so the block repeats it until 5 ms have passed
    assert len(calls) > 2


def test_a_peer_backend_on_own_code_leaves_the_chrion_compiled_forward_in_chrion() -> None:
    """A backend that stops at nn.GRU (Dynamo's default, here "eager") marks the forward it
    compiles skipped for every backend: on the model's own forward it makes chrion's compiled
    model run eagerly; on ``own_code(model)`` chrion keeps serving every call."""
    import torch
    import torch._dynamo
    from torch import nn

    import torch_chrion.dynamo as chrion_dynamo
    from torch_chrion.bench_peers import own_code

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(4, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x)[0]

    def chrion_calls(peer: nn.Module) -> int:
        torch._dynamo.reset()
        x = torch.randn(5, 1, 4)
        chrion = torch.compile(model, backend="chrion")
        with torch.no_grad():
            chrion(x)
            module = chrion_dynamo.compiled_modules()[-1]
            torch.testing.assert_close(torch.compile(peer, backend="eager")(x), model(x))
            torch.testing.assert_close(chrion(x), model(x))
        return module.stats["calls"]

    torch.manual_seed(0)
    model = Net().eval()
    assert chrion_calls(own_code(model)) == 2
    assert chrion_calls(model) == 1  # the shared forward: the second call ran eagerly


def test_time_rounds_keeps_each_engines_blocks_in_round_order() -> None:
    from torch_chrion.bench_peers import time_rounds

    calls = {"a": 0, "b": 0}

    def count(name: str) -> None:
        calls[name] += 1

    engines = [Engine(name, lambda n=name: count(n), ()) for name in ("a", "b")]
    rounds = time_rounds(engines, repeats=4, warmup=1, settle_ms=0.0, calls=2)
    assert {name: [len(block) for block in blocks] for name, blocks in rounds.items()} == {
        "a": [2, 2, 2, 2],
        "b": [2, 2, 2, 2],
    }
    assert calls == {"a": 15, "b": 15}  # 5 rounds of 1 untimed + 2 timed calls
    assert time_engines(engines, repeats=2, warmup=0, settle_ms=0.0, calls=1).keys() == {"a", "b"}
