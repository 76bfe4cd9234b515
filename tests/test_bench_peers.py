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
