// softmax and log_softmax over contiguous rows, for one instruction set: included by
// recurrent_cpu_impl.h, whose exp_gate (Note [Gate activations]) it shares, and reached through
// CpuKernels::softmax_rows (csrc/kernels/softmax.cpp is the operator).
//
// Note [Softmax rows]
// ATen's CPU softmax exponentiates with Sleef's expf (1 ulp): 1.4 M floats (the LSTM language
// model's 140 x 10000 scores) took 840-1260 us for log_softmax on one thread of the benchmark
// VM and 530-600 on two, where onnxruntime's took 468-498 on two. exp_gate's Cody-Waite
// reduction and degree-6 polynomial stay within a few ulp of exp on the range a softmax feeds it
// (x - max <= 0), so each row is, in three passes over it while it sits in L1/L2:
//  1. its maximum m (NaN-propagating: a row with a NaN, or whose maximum is +-inf, is NaN
//     throughout, as ATen's is: x - m is NaN somewhere and the sum with it);
//  2. s = sum of exp(x - m), each exp stored as softmax's output on the way;
//  3. softmax: exp(x - m) * (1 / s); log_softmax: (x - m) - log(s),
// ATen's operations in ATen's order, the sums of every 16th element first (so rounding alone
// separates the two). exp of x - m below -87 (where exp_gate clamps, near float32's smallest
// normal) is 0: the true value is a denormal at most, and a masked score (-inf) gets exactly 0.
// A thread's log_softmax output larger than its L2 is stored non-temporally (past the caches,
// where the row is 64-byte aligned): the scores of a vocabulary are the model's output, read
// next by the caller, and its lines need not be read in for ownership first. On one thread
// that took the language model's log_softmax from 906-1221 to 689-734 us; a softmax's rows,
// which pass 3 reads back from L2, were slower streamed (690-765 -> 935-1004) and are not.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

namespace chrion::recurrent::CPU_CAPABILITY {

// log_softmax rows of more bytes than this (a core's L2) are written past the caches
constexpr int64_t kStreamBytes = int64_t{1} << 20;

// exp(x) for x <= 0: 0 below exp_gate's lowest input, where exp(x) is under float32's smallest
// normal
inline Vec exp_nonpositive(const Vec& x) {
  return Vec::blendv(exp_gate(x), Vec(0.0f), x < Vec(kExpLowest));
}

// x[i, i + count) as a vector, -inf past its end
inline Vec load_part(const float* x, int64_t count) {
  return Vec::set(Vec(-std::numeric_limits<float>::infinity()), Vec::loadu(x, count), count);
}

// v's first `count` floats to y; `stream`: past the caches where y is aligned (non-temporal)
inline void store_out(const Vec& v, float* y, int64_t count, bool stream) {
#if defined(CPU_CAPABILITY_AVX512)
  if (stream && count == kLanes && reinterpret_cast<uintptr_t>(y) % 64 == 0) {
    _mm512_stream_ps(y, v);
    return;
  }
#endif
  v.store(y, count);
}

// `stream`: log_softmax's output goes past the caches (Note [Softmax rows])
inline void softmax_row(const float* x, float* y, int64_t n, bool log, bool stream) {
  const int64_t whole = n - n % kLanes, rest = n - whole;
  Vec top = load_part(x + whole, rest);
  for (int64_t i = 0; i < whole; i += kLanes) top = at::vec::maximum(top, Vec::loadu(x + i));
  const float m = at::vec::vec_reduce_all<float>(
      [](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, top);
  if (!std::isfinite(m)) {
    std::fill(y, y + n, std::numeric_limits<float>::quiet_NaN());
    return;
  }
  const Vec mv(m);
  Vec sum(0.0f);
  for (int64_t i = 0; i < whole; i += kLanes) {
    const Vec e = exp_nonpositive(Vec::loadu(x + i) - mv);
    if (!log) e.store(y + i);
    sum = sum + e;
  }
  if (rest > 0) {
    const Vec e = exp_nonpositive(load_part(x + whole, rest) - mv);
    if (!log) e.store(y + whole, rest);
    sum = sum + e;
  }
  const float s = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, sum);
  if (log) {
    const Vec log_sum(std::log(s));
    for (int64_t i = 0; i < n; i += kLanes) {
      const int64_t count = std::min<int64_t>(kLanes, n - i);
      store_out(Vec::loadu(x + i, count) - mv - log_sum, y + i, count, stream);
    }
  } else {
    const Vec scale(1.0f / s);
    for (int64_t i = 0; i < n; i += kLanes) {
      const int64_t count = std::min<int64_t>(kLanes, n - i);
      (Vec::loadu(y + i, count) * scale).store(y + i, count);
    }
  }
}

// rows [first, end) of `columns` contiguous floats each
void softmax_rows(const float* in, float* out, int64_t columns, int64_t first, int64_t end,
                  bool log) {
  const bool stream =
      log && (end - first) * columns * int64_t{sizeof(float)} > kStreamBytes;
  for (int64_t r = first; r < end; ++r) {
    softmax_row(in + r * columns, out + r * columns, columns, log, stream);
  }
#if defined(CPU_CAPABILITY_AVX512)
  if (stream) _mm_sfence();
#endif
}

}  // namespace chrion::recurrent::CPU_CAPABILITY
