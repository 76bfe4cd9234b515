"""The CPU recurrent kernels' schedule (csrc/kernels/recurrent_schedule.h) on synthetic chains
whose blocks only spin (``probe_schedule``): every block of every stage runs once, after the
whole stage before it, and in a balanced chain a faster thread takes blocks from a slower one
(Note [Two-ended slices])."""

from __future__ import annotations

import statistics
from collections import defaultdict

import pytest

from torch_chrion._extension import load

Claim = tuple[int, int, int, int, bool, int, int]  # chain, stage, first, end, by_caller, start, end


def _probe(**kwargs: object) -> list[Claim]:
    return load("kernels").probe_schedule(**kwargs)


@pytest.mark.parametrize("balanced", [False, True])
@pytest.mark.parametrize("threads,directions", [(1, 1), (2, 1), (2, 2), (3, 1), (3, 2)])
def test_every_block_runs_once_after_the_stage_before(
    threads: int, directions: int, balanced: bool
) -> None:
    stages, blocks = 30, 13
    claims = _probe(
        stages=stages,
        blocks=blocks,
        threads=threads,
        directions=directions,
        balanced=balanced,
        caller_us=3.0,
        helper_us=1.0,
    )
    covered: dict[tuple[int, int], list[int]] = defaultdict(list)
    starts: dict[tuple[int, int], list[int]] = defaultdict(list)
    ends: dict[tuple[int, int], list[int]] = defaultdict(list)
    for chain, stage, first, end, _, start, finish in claims:
        covered[chain, stage] += range(first, end)
        starts[chain, stage].append(start)
        ends[chain, stage].append(finish)
    assert sorted(covered) == [(c, s) for c in range(directions) for s in range(stages)]
    for key, units in covered.items():
        assert sorted(units) == list(range(blocks)), f"chain {key[0]} stage {key[1]}"
    for chain in range(directions):
        for stage in range(1, stages):
            assert min(starts[chain, stage]) > max(ends[chain, stage - 1]), (chain, stage)


def _helper_share_per_stage(claims: list[Claim], chain: int, blocks: int) -> list[float]:
    helper: dict[int, int] = defaultdict(int)
    for c, stage, first, end, by_caller, _, _ in claims:
        if c == chain and not by_caller:
            helper[stage] += end - first
    stages = {stage for c, stage, *_ in claims if c == chain}
    return [helper[stage] / blocks for stage in sorted(stages)]


def _shares(balanced: bool, directions: int, chain: int, blocks: int = 16) -> list[float]:
    """The helper's share of each stage of ``chain`` (0: the caller's direction), the caller's
    blocks 4x slower than the helper's."""
    claims = _probe(
        stages=40,
        blocks=blocks,
        threads=2,
        directions=directions,
        balanced=balanced,
        caller_us=40.0,
        helper_us=10.0,
    )
    return _helper_share_per_stage(claims, chain, blocks)


# The shares need the helper to have its core: on this shared machine a run can lose it for
# milliseconds (the caller then takes the helper's blocks, as it must). So the median over the
# stages, up to three tries, and a try counts only where the unbalanced run shows the helper
# doing its own share; none of them counting means the machine is too busy to tell.
ATTEMPTS = 3


def test_a_faster_helper_takes_blocks_of_a_slower_callers_steps() -> None:
    """One direction on two threads: unbalanced, the helper does its half of each step; in a
    balanced chain it then takes the slower caller's last blocks too."""
    medians = []
    for _ in range(ATTEMPTS):
        if statistics.median(_shares(balanced=False, directions=1, chain=0)) != 0.5:
            continue  # the helper lost its core
        medians.append(statistics.median(_shares(balanced=True, directions=1, chain=0)))
        if medians[-1] >= 0.625:
            return
    if not medians:
        pytest.skip("the helper thread did not keep a core in any try: too busy to tell")
    pytest.fail(f"the helper's median share of a step stayed at {medians} (0.5: no balancing)")


def test_a_finished_direction_helps_the_other() -> None:
    """Two directions on two threads: unbalanced, the helper runs its own direction and none
    of the caller's; balanced, once its own is done, it takes blocks of the caller's steps."""
    means = []
    for _ in range(ATTEMPTS):
        if statistics.median(_shares(balanced=False, directions=2, chain=1)) != 1.0:
            continue  # the helper lost its core
        assert statistics.median(_shares(balanced=False, directions=2, chain=0)) == 0.0
        shares = _shares(balanced=True, directions=2, chain=0)
        means.append(sum(shares) / len(shares))
        if means[-1] >= 0.25:
            return
    if not means:
        pytest.skip("the helper thread did not keep a core in any try: too busy to tell")
    pytest.fail(f"the helper took {means} of the caller's direction (0: no balancing)")
