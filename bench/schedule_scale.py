"""Schedule scale: time to schedule 1k, 10k and 50k-task random DAGs on 2 devices.

HEFT-paper generator (shape α = 1, out-degree ≤ 3, CCR = 1, β = 0.5) on ("cpu", "cuda:0").
Times HEFT (target: 10k tasks in at most 1 s), solve() with its default budget (candidates
plus local search cut by a budget that grows with the graph, at most 2 s), solve() for the
memory objective with an SLO of 1.2 x the latency plan's makespan, and the simulator
replaying the HEFT schedule, all in the same run; best of ``--repeats`` for HEFT and the
simulator.

    python bench/schedule_scale.py [--sizes 1000 10000 50000] [--repeats 3] [--write]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from torch_chrion.schedule import heft, random_task_graph, simulate, solve

RESULTS = Path(__file__).resolve().parent / "results" / "schedule_scale.md"
HEFT_10K_TARGET_S = 1.0


def best_time(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(sizes: list[int], repeats: int) -> str:
    lines = [
        "# Schedule scale: time to schedule large DAGs on 2 devices (cpu, cuda:0)",
        "",
        f"`python bench/schedule_scale.py --sizes {' '.join(map(str, sizes))} --repeats"
        f" {repeats} --write` on {platform.processor() or platform.machine()}, pure Python + numpy.",
        "",
        "| tasks | edges | build TaskGraph s | HEFT s | solve() s | solve / HEFT time |"
        " solve / HEFT makespan | solve(memory) s | memory / latency-plan bytes | simulate s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdict = []
    for n in sizes:
        rng = np.random.default_rng(n)
        t0 = time.perf_counter()
        graph = random_task_graph(rng, n, devices=("cpu", "cuda:0"), alpha=1.0, out_degree=3)
        build_s = time.perf_counter() - t0
        heft_s, plain = best_time(lambda g=graph: heft(g), repeats)
        t0 = time.perf_counter()
        best = solve(graph)
        solve_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        lean = solve(graph, "memory", slo=1.2 * best.makespan)
        memory_s = time.perf_counter() - t0
        sim_s, sim = best_time(lambda g=graph, s=plain: simulate(g, s), repeats)
        assert sim.makespan == plain.makespan and best.makespan <= plain.makespan
        assert lean.slo_met and lean.makespan <= 1.2 * best.makespan
        lines.append(
            f"| {n} | {len(graph.edges)} | {build_s:.3f} | {heft_s:.3f} | {solve_s:.3f} |"
            f" {solve_s / heft_s:.1f} | {best.makespan / plain.makespan:.4f} | {memory_s:.3f} |"
            f" {lean.accelerator_bytes / max(1.0, best.accelerator_bytes):.3f} | {sim_s:.3f} |"
        )
        if n == 10000:
            ok = heft_s <= HEFT_10K_TARGET_S
            verdict.append(
                f"HEFT on 10k tasks: {heft_s:.3f} s (target <= {HEFT_10K_TARGET_S:g} s):"
                f" {'met' if ok else 'NOT met'}."
            )
    lines += ["", *verdict]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="save bench/results/schedule_scale.md")
    args = parser.parse_args()
    table = run(args.sizes, args.repeats)
    print(table)
    if args.write:
        RESULTS.write_text(table)


if __name__ == "__main__":
    main()
