"""Schedule quality: solve() and HEFT against the exact MILP on seeded random small DAGs.

Graphs follow the HEFT paper's generator (Topcuoglu et al. 2002): v tasks (5..12 here), shape
α ∈ {0.5, 1, 2}, out-degree ∈ {1..5, v}, CCR ∈ {0.1, 0.5, 1, 5, 10}, heterogeneity
β ∈ {0.1, 0.25, 0.5, 0.75, 1}, mean cost 10, on ("cpu", "cuda:0") or ("cpu:0", "cpu:1",
"cuda:0") (CPU lanes share memory, so transfers between them are free); the accelerator runs
2x faster on average. Half the tasks hold weights (mean 1 MiB), every task outputs mean 256 KiB.

Latency: makespan of HEFT and solve() over the MILP optimum (all scored by the simulator).
Memory: SLO = f x the MILP latency optimum, f ∈ {1.1, 1.25, 1.5}; solve(objective="memory")
bytes (simulator measure) over the MILP's optimum. The MILP minimises accelerator weights plus
the largest working set (output + inputs) of a task placed there: a lower bound of the
simulator's peak-activation measure, so "solve / MILP value" overstates the true gap; the
MILP's own schedule re-scored by the simulator is shown too.

    python bench/schedule_quality.py [--graphs 200] [--seed 0] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from torch_chrion.schedule import heft, milp_schedule, random_task_graph, simulate, solve

RESULTS = Path(__file__).resolve().parent / "results" / "schedule_quality.md"
DEVICE_SETS = (("cpu", "cuda:0"), ("cpu:0", "cpu:1", "cuda:0"))


def draw_graph(seed: int):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 13))
    devices = DEVICE_SETS[int(rng.integers(0, 2))]
    params = dict(
        alpha=float(rng.choice([0.5, 1.0, 2.0])),
        out_degree=int(rng.choice([1, 2, 3, 4, 5, n])),
        ccr=float(rng.choice([0.1, 0.5, 1.0, 5.0, 10.0])),
        beta=float(rng.choice([0.1, 0.25, 0.5, 0.75, 1.0])),
    )
    speed = [2.0 if d.startswith("cuda") else 1.0 for d in devices]
    graph = random_task_graph(rng, n, devices=devices, speed=speed, **params)
    return graph, params, float(rng.choice([1.1, 1.25, 1.5]))


def ratio(a: float, b: float) -> float:
    """a / b with 0 / 0 = 1 (both keep nothing on the accelerator)."""
    if b == 0:
        return 1.0 if a == 0 else float("inf")
    return a / b


def run(graphs: int, seed: int) -> str:
    rows = []
    for k in tqdm(range(graphs), desc="graphs", file=sys.stderr):
        graph, params, slo_factor = draw_graph(seed + k)
        plain = heft(graph)
        t0 = time.perf_counter()
        best = solve(graph)
        solve_s = time.perf_counter() - t0
        exact = milp_schedule(graph, "latency")
        assert simulate(graph, best).makespan == best.makespan
        slo = slo_factor * exact.value
        t0 = time.perf_counter()
        lean = solve(graph, "memory", slo=slo)
        mem_solve_s = time.perf_counter() - t0
        exact_mem = milp_schedule(graph, "memory", slo=slo)
        rows.append(
            dict(
                n=graph.n,
                m=graph.m,
                ccr=params["ccr"],
                heft=plain.makespan,
                solve=best.makespan,
                opt=exact.value,
                opt_proven=exact.optimal,
                solve_s=solve_s,
                milp_s=exact.seconds,
                slo=slo,
                slo_factor=slo_factor,
                mem_met=bool(lean.slo_met),
                mem_makespan=lean.makespan,
                mem=lean.accelerator_bytes,
                mem_opt=exact_mem.value,
                mem_opt_sim=exact_mem.schedule.accelerator_bytes,
                mem_proven=exact_mem.optimal,
                mem_solve_s=mem_solve_s,
                mem_milp_s=exact_mem.seconds,
            )
        )
    return report(rows, graphs, seed)


def report(rows: list[dict], graphs: int, seed: int) -> str:
    def mean(xs) -> float:
        return statistics.fmean(xs) if xs else float("nan")

    lines = [
        "# Schedule quality: solve() and HEFT vs the exact MILP",
        "",
        f"`python bench/schedule_quality.py --graphs {graphs} --seed {seed} --write`: {len(rows)} seeded",
        "random DAGs of 5-12 tasks (HEFT-paper generator: CCR, shape α, out-degree, β), 2 or 3",
        "lanes (cpu + cuda:0, or cpu:0 + cpu:1 + cuda:0), accelerator 2x faster on average.",
        "Every schedule is scored by the same simulator.",
        "",
        "## Latency (makespan / MILP optimum)",
        "",
        "| CCR | graphs | HEFT mean | HEFT max | solve mean | solve max | solve > HEFT |",
        "|---|---|---|---|---|---|---|",
    ]
    for ccr in sorted({r["ccr"] for r in rows}) + ["all"]:
        sel = [r for r in rows if ccr == "all" or r["ccr"] == ccr]
        h = [r["heft"] / r["opt"] for r in sel]
        s = [r["solve"] / r["opt"] for r in sel]
        worse = sum(r["solve"] > r["heft"] for r in sel)
        lines.append(
            f"| {ccr} | {len(sel)} | {mean(h):.4f} | {max(h):.4f} | {mean(s):.4f} |"
            f" {max(s):.4f} | {worse} |"
        )
    proven = sum(r["opt_proven"] for r in rows)
    lines += [
        "",
        f"MILP proven optimal on {proven}/{len(rows)} graphs; mean MILP time"
        f" {mean([r['milp_s'] for r in rows]):.3f} s, mean solve() time"
        f" {mean([r['solve_s'] for r in rows]):.3f} s.",
        "",
        "## Memory (accelerator bytes within SLO = f x latency optimum, f in {1.1, 1.25, 1.5})",
        "",
        "The MILP minimises accelerator weights + the largest working set (output + inputs) of a",
        "task placed there: a lower bound of the simulator's measure (weights + peak live",
        "activations). `solve / MILP value` compares solve() (simulator) with that bound;",
        "`solve / MILP schedule` compares it with the MILP's own schedule re-scored by the",
        "simulator. 0 / 0 counts as 1.",
        "",
    ]
    met = [r for r in rows if r["mem_met"]]
    over = sum(r["mem_makespan"] > r["slo"] for r in met)
    zero = [r for r in met if r["mem_opt"] == 0]
    positive = [r for r in met if r["mem_opt"] > 0]
    lb = [r["mem"] / r["mem_opt"] for r in positive]
    sim = [ratio(r["mem"], r["mem_opt_sim"]) for r in positive]
    total_lb = sum(r["mem"] for r in met) / max(1e-9, sum(r["mem_opt"] for r in met))
    total_sim = sum(r["mem"] for r in met) / max(1e-9, sum(r["mem_opt_sim"] for r in met))
    lines += [
        "| measure | value |",
        "|---|---|",
        f"| graphs where solve() reports the SLO met | {len(met)}/{len(rows)} |",
        f"| ... of which its makespan exceeds the SLO | {over} |",
        f"| graphs where the MILP keeps nothing on the accelerator | {len(zero)} |",
        f"| ... of which solve() keeps something there | {sum(r['mem'] > 0 for r in zero)} |",
        f"| mean solve / MILP value (the {len(positive)} others) | {mean(lb):.4f} |",
        f"| median solve / MILP value | {statistics.median(lb) if lb else float('nan'):.4f} |",
        f"| max solve / MILP value | {max(lb, default=float('nan')):.4f} |",
        f"| mean solve / MILP schedule (simulated) | {mean(sim):.4f} |",
        f"| total solve bytes / total MILP value | {total_lb:.4f} |",
        f"| total solve bytes / total MILP schedule bytes (simulated) | {total_sim:.4f} |",
        f"| total MILP schedule bytes (simulated) / total MILP value | {total_lb / total_sim:.4f} |",
        f"| MILP proven optimal | {sum(r['mem_proven'] for r in rows)}/{len(rows)} |",
        f"| mean MILP time / solve() time (s) | {mean([r['mem_milp_s'] for r in rows]):.3f} /"
        f" {mean([r['mem_solve_s'] for r in rows]):.3f} |",
        "",
        "By SLO factor (graphs where solve() met the SLO and the MILP value is > 0):",
        "",
        "| f | graphs | mean solve / MILP value | mean solve / MILP schedule |",
        "|---|---|---|---|",
    ]
    for f in sorted({r["slo_factor"] for r in rows}):
        sel = [r for r in met if r["slo_factor"] == f and r["mem_opt"] > 0]
        lines.append(
            f"| {f} | {len(sel)} | {mean([ratio(r['mem'], r['mem_opt']) for r in sel]):.4f} |"
            f" {mean([ratio(r['mem'], r['mem_opt_sim']) for r in sel]):.4f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--write", action="store_true", help="save bench/results/schedule_quality.md"
    )
    args = parser.parse_args()
    table = run(args.graphs, args.seed)
    print(table)
    if args.write:
        RESULTS.write_text(table)


if __name__ == "__main__":
    main()
