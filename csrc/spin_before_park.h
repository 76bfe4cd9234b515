// How long an idle thread polls for work before it parks: the executor's lanes and waiting
// callers (Note [Chrion spin before park] in executor/lane.h) start from this default.
//
// 300 us: a thread parked on the benchmark VM, whose idle cores halt, took ~45 us to run again
// (bench/predict.py's calibration), and 50 us let a batch-1 model's lanes and caller park
// between back-to-back calls (cpu_rnn's batch-1 rows 3-10% slower than at 300 us).
// Peers poll far longer: libgomp's pool for milliseconds, onnxruntime's ~60 ms after a run
// (Note [Settled blocks] in torch_chrion/bench_peers.py).
#pragma once

#include <cstdint>

namespace chrion {
constexpr int64_t kSpinBeforeParkNs = 300'000;
}  // namespace chrion
