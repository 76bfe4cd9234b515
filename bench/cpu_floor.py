"""How fast this CPU can go at all on the batch-1 rows of bench/cpu_rnn.py: the floor that the
cache bandwidth and the multiply-add rate put under a float32 recurrent layer, against what
torch_chrion's kernel and onnxruntime take.

At batch 1 each time step multiplies h_{t-1} by the whole of W_hh, so a step streams W_hh through
the core once (a quarter of a multiply-add per byte): it is bound by how fast the weights come
from the cache that holds them, L2 when each core's share fits its L2, L3 otherwise. The input
projection (every step's W_ih product, one GEMM) is bound by the multiply-add rate. This script
measures both on the machine it runs on, with a small C++ probe built by
``torch.utils.cpp_extension.load_inline`` (g++, -O3, the host's own instruction set):

- read bandwidth: each of ``--threads`` threads (one per core) sums its own buffer of a core's
  share of W_hh with 512-bit (or 256-bit) loads, all at once, best of many passes;
- multiply-add rate: independent vector multiply-adds on registers, on one core.

The floor of a row on two cores is then: steps x (W_hh bytes / 2) / bandwidth per core, plus the
projection's multiply-adds / (2 x the rate per core). Nothing else is counted (no gate math, no
synchronisation between the cores at each step, no call overhead), so no engine can beat it;
the table shows each engine's time over the floor, and the time 0.8x onnxruntime's best would
be (issue #15's target at batch 1).

A second table times chrion's kernel alone on each row's first layer: microseconds per time
step (calls of the row's steps against calls of one step, interleaved, so a call's fixed costs
drop out; a step's share of the projection stays in), and the W_hh bytes each core streams per
step over that time, against the probe's read bandwidth for a share of that size: how close the
time loop comes to the cache it reads from.

    python bench/cpu_floor.py [--repeats 15] [--write]

``--write`` saves the table to bench/results/cpu_floor.md; nothing is written otherwise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import cpu_rnn  # noqa: E402

from torch_chrion.bench_peers import time_engines  # noqa: E402
from torch_chrion.onnx.converters.rnn_weights import GATE_COUNT  # noqa: E402
from torch_chrion.ops import ensure_loaded  # noqa: E402

_PROBE = r"""
#include <chrono>
#include <cstdlib>
#include <thread>
#include <vector>

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// 64 bytes of floats: one zmm register with AVX-512, two ymm with AVX2 (-march=native)
typedef float V __attribute__((vector_size(64)));
constexpr int kFloats = 16;
inline V zero() { return V{}; }
inline V load(const float* p) { return *reinterpret_cast<const V*>(p); }
inline V add(V a, V b) { return a + b; }
inline V fma(V a, V b, V c) { return a * b + c; }
inline V splat(float x) { return V{} + x; }
inline float first(V v) { return v[0]; }

// best seconds of one pass over `floats` floats (8 independent sums: not latency-bound)
double read_pass(const float* a, int64_t floats, int passes, float* sink) {
  double best = 1e30;
  V s[8];
  for (auto& v : s) v = zero();
  for (int pass = 0; pass < passes; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i + 8 * kFloats <= floats; i += 8 * kFloats)
      for (int k = 0; k < 8; ++k) s[k] = add(s[k], load(a + i + k * kFloats));
    best = std::min(best, seconds_since(t0));
  }
  V total = s[0];
  for (int k = 1; k < 8; ++k) total = add(total, s[k]);
  *sink = first(total);
  return best;
}
}  // namespace

// bytes per second per thread, `threads` threads each reading its own `bytes` at once
double read_bandwidth(int64_t bytes, int threads, int passes) {
  const int64_t floats = bytes / 4 / (8 * kFloats) * (8 * kFloats);
  std::vector<double> best(threads);
  std::vector<float> sink(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      float* a = static_cast<float*>(std::aligned_alloc(64, floats * 4));
      for (int64_t i = 0; i < floats; ++i) a[i] = 1e-3f * static_cast<float>(i % 7);
      best[t] = read_pass(a, floats, passes, &sink[t]);
      std::free(a);
    });
  }
  for (auto& th : pool) th.join();
  double worst = 0;
  for (double b : best) worst = std::max(worst, b);
  return floats * 4 / worst;
}

// float32 multiply-adds per second on the calling thread: 12 independent chains in registers
// (named, not an array, which the compiler may keep in memory)
double fma_rate(int64_t iterations) {
  const V x = splat(0.999f), y = splat(1e-6f);
  V a0 = splat(0), a1 = splat(1), a2 = splat(2), a3 = splat(3), a4 = splat(4), a5 = splat(5);
  V a6 = splat(6), a7 = splat(7), a8 = splat(8), a9 = splat(9), a10 = splat(10), a11 = splat(11);
  double best = 1e30;
  for (int pass = 0; pass < 5; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < iterations; ++i) {
      a0 = fma(a0, x, y), a1 = fma(a1, x, y), a2 = fma(a2, x, y), a3 = fma(a3, x, y);
      a4 = fma(a4, x, y), a5 = fma(a5, x, y), a6 = fma(a6, x, y), a7 = fma(a7, x, y);
      a8 = fma(a8, x, y), a9 = fma(a9, x, y), a10 = fma(a10, x, y), a11 = fma(a11, x, y);
    }
    best = std::min(best, seconds_since(t0));
  }
  const V sum = add(add(add(add(a0, a1), add(a2, a3)), add(add(a4, a5), add(a6, a7))),
                    add(add(a8, a9), add(a10, a11)));
  volatile float keep = first(sum);
  (void)keep;
  return iterations * 12.0 * kFloats / best;
}
"""


def probe():
    """The C++ probe, built once into torch_chrion's cache folder."""
    from torch.utils.cpp_extension import load_inline

    from torch_chrion._extension import cache_root

    folder = cache_root() / "extensions" / "cpu_floor_probe"
    folder.mkdir(parents=True, exist_ok=True)
    return load_inline(
        name="chrion_cpu_floor_probe",
        cpp_sources=_PROBE,
        functions=["read_bandwidth", "fma_rate"],
        extra_cflags=["-O3", "-march=native", "-ffp-contract=fast"],
        extra_ldflags=["-lpthread"],
        build_directory=str(folder),
        verbose=False,
    )


def floor_ms(row: cpu_rnn.Row, probe_module, threads: int, fma_per_s: float) -> float:
    """Streaming each layer's W_hh share per step plus the projections at the FMA rate."""
    gates = GATE_COUNT[row.kind]
    dirs = 2 if row.bidirectional else 1
    total = 0.0
    for layer in range(row.layers):
        features = cpu_rnn.FEATURES if layer == 0 else dirs * row.hidden
        w_hh = gates * row.hidden * row.hidden * 4 * dirs  # bytes, every direction
        share = w_hh / threads
        per_core = probe_module.read_bandwidth(int(share), threads, 200)
        total += row.steps * share / per_core
        projection = dirs * row.steps * row.batch * gates * row.hidden * features
        total += projection / (threads * fma_per_s)
    return total * 1e3


def kernel_step_us(row: cpu_rnn.Row, rounds: int, calls: int = 20) -> float:
    """Microseconds per time step of ``row``'s first layer through chrion's CPU kernel alone:
    the median over ``rounds`` of (a call of row.steps steps - a call of one) / (steps - 1),
    each the median of ``calls`` calls, the two lengths alternating."""
    ensure_loaded()
    layer = cpu_rnn.MODULES[row.kind](cpu_rnn.FEATURES, row.hidden)
    params = [p.detach() for p in layer.parameters()]  # w_ih, w_hh, b_ih, b_hh
    h0 = torch.zeros(1, row.batch, row.hidden)
    op = getattr(torch.ops.chrion, row.kind.lower())
    states = (h0, h0) if row.kind == "LSTM" else (h0,)
    extra = ("tanh",) if row.kind == "RNN" else ()

    def median_us(x: torch.Tensor) -> float:
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            op(x, *states, params, True, 1, False, False, False, *extra)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e6

    long, short = (torch.randn(t, row.batch, cpu_rnn.FEATURES) for t in (row.steps, 1))
    median_us(long)  # packs the weights, warms the caches
    per_step = [(median_us(long) - median_us(short)) / (row.steps - 1) for _ in range(rounds)]
    return statistics.median(per_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--write", action="store_true", help="save bench/results/cpu_floor.md")
    args = parser.parse_args()
    module = probe()
    fma = module.fma_rate(20_000_000)
    sizes = [("256 KiB", 256 << 10), ("512 KiB", 512 << 10), ("2 MiB", 2 << 20), ("6 MiB", 6 << 20)]
    bandwidth = [(name, module.read_bandwidth(b, args.threads, 300) / 1e9) for name, b in sizes]
    lines = [
        f"Multiply-adds: {fma / 1e9:.2f} G float32 per second on one core. Read bandwidth per "
        f"core, {args.threads} cores reading at once: "
        + ", ".join(f"{name} {gbs:.0f} GB/s" for name, gbs in bandwidth)
        + ".",
        "",
        "| model (batch, seq) | floor (ms) | chrion onnx | ort best | 0.8x ort best "
        "| chrion / floor | ort best / floor | 0.8x ort best / floor |",
        "|---" + "|---:" * 7 + "|",
    ]
    print(lines[0], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for row in [r for r in cpu_rnn.ROWS if r.batch == 1]:
            floor = floor_ms(row, module, args.threads, fma)
            engines, _ = cpu_rnn.engines_for(row, Path(tmp), {"chrion onnx", "ort 1t", "ort 2t"})
            ms = time_engines(engines, args.repeats)
            ort = min(ms["ort 1t"], ms["ort 2t"])
            chrion = ms["chrion onnx"]
            line = (
                f"| {row.name} | {floor:.2f} | {chrion:.2f} | {ort:.2f} | {0.8 * ort:.2f} "
                f"| {chrion / floor:.2f}x | {ort / floor:.2f}x | {0.8 * ort / floor:.2f}x |"
            )
            lines.append(line)
            print(line, flush=True)
    lines += [
        "",
        "Kernel alone, first layer of each row, two lengths alternating (module docstring):",
        "",
        "| model (batch, seq) | W_hh per core | kernel us / step | W_hh per core / step "
        "| probe, that size | kernel / probe |",
        "|---" + "|---:" * 5 + "|",
    ]
    torch.set_num_threads(args.threads)
    for row in [r for r in cpu_rnn.ROWS if r.batch == 1]:
        share = GATE_COUNT[row.kind] * row.hidden * row.hidden * 4 / args.threads
        step_us = kernel_step_us(row, args.repeats)
        probe_gbs = module.read_bandwidth(int(share), args.threads, 200) / 1e9
        kernel_gbs = share / step_us / 1e3
        line = (
            f"| {row.name} | {share / 1024:.0f} KiB | {step_us:.2f} | {kernel_gbs:.0f} GB/s "
            f"| {probe_gbs:.0f} GB/s | {kernel_gbs / probe_gbs:.2f} |"
        )
        lines.append(line)
        print(line, flush=True)
    if args.write:
        text = [
            "# The floor under the batch-1 CPU rows",
            "",
            f"CPU: {cpu_rnn.cpu_name()}, {torch.backends.cpu.get_cpu_capability()}, "
            f"{args.threads} cores. Command: `python bench/cpu_floor.py "
            f"{' '.join(sys.argv[1:])}`; engines: median of {args.repeats} interleaved rounds. "
            "Floor: each layer's W_hh share per core streamed once per step at the measured "
            "read bandwidth for that share's size, plus the input projections at the measured "
            "multiply-add rate on every core; no gate math, synchronisation or call overhead. "
            f"Load average when written: {cpu_rnn.load_average()}.",
            "",
            *lines,
            "",
        ]
        out = ROOT / "bench" / "results" / "cpu_floor.md"
        out.write_text("\n".join(text))
        print(f"-> {out}")


if __name__ == "__main__":
    main()
