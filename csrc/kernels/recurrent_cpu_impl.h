// The CPU recurrent time loop for one instruction set (Note [CPU recurrent kernel] in
// recurrent_cpu.h). Included once by each recurrent_cpu_<isa>.cpp, after it has set
// CPU_CAPABILITY (and the compiler target), so everything here lives in a namespace of its own
// per instruction set, as ATen's own at::vec does.
//
// The math follows ATen's CPU cells operation for operation (RNN.cpp: sigmoid as
// 1 / (1 + exp(-x)), GRU's h' = (h - n) * z + n with r applied after the hidden product), with
// exp / tanh within a few ulp (Note [Gate activations]), so float32 results match aten to
// rounding.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "recurrent_cpu.h"

#define CHRION_STRINGIZE_ISA_(x) #x
#define CHRION_STRINGIZE_ISA(x) CHRION_STRINGIZE_ISA_(x)

namespace chrion::recurrent::CPU_CAPABILITY {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();
// Batch rows sharing one pass over a weight panel of G vectors per column (a block's gates, or a
// plain RNN's four vectors of one gate, Note [RNN blocks]): 4 x 4 accumulators fill half of
// AVX-512's 32 registers. AVX2 (16 registers) and the portable build take 3 rows of LSTM, GRU or
// RNN (12 or 9 accumulators; recurrent_product keeps the rows' h and one weight vector at a
// time, 3 x 4 + 3 + 1): fewer weight loads per multiply-add and more independent chains than 2
// rows. Against onnxruntime at 2 threads, builds alternating, a 2-layer bi-LSTM 128 at batch 8
// went from 1.26-1.35x to 1.02-1.13x and the bi-GRUs' rows 5-10% down.
template <int G>
constexpr int kRows = kLanes >= 16 ? 4 : G >= 3 ? 3 : 2;

// vector registers of the instruction set
constexpr int kRegisters = kLanes >= 16 ? 32 : 16;

// Note [RNN blocks]
// A block's product loads its G*S weight vectors once per column k and multiplies each by every
// row of its group. With one vector per gate (S = 1), a plain RNN's block (G = 1) is one weight
// vector per k: each multiply-add then needs a load of its own (the row's h broadcast), so the
// product and the input projection were load-bound, at about half the multiply-add rate of an
// LSTM's. So a plain RNN's block spans S = kRnnVectors vectors of hidden units, laid out like
// an LSTM block's four gates: the same register blocking, three or four rows by four vectors.
// On one thread (AVX2, builds alternating) a bi-RNN 2x256 at batch 8 and 256 steps went from
// 42-50 to 27-30 ms, an RNN 256 at batch 32 from 6.2-7.2 to 4.05 ms, an RNN 128 at batch 1 from
// 0.107-0.111 to 0.085 ms.
constexpr int64_t kRnnVectors = 4;

constexpr int64_t vectors_per_gate(int64_t gates) { return gates == 1 ? kRnnVectors : 1; }

// weight vectors per column of a block's panel: its gates times their vectors
constexpr int panel_vectors(int64_t gates) {
  return static_cast<int>(gates * vectors_per_gate(gates));
}

int64_t block_units(int64_t gates) { return vectors_per_gate(gates) * kLanes; }

int64_t step_rows(int64_t gates) {
  return gates == 4 ? kRows<panel_vectors(4)> : gates == 3 ? kRows<panel_vectors(3)>
                                                           : kRows<panel_vectors(1)>;
}

inline int64_t hidden_blocks(int64_t gates, int64_t hidden) {
  return (hidden + block_units(gates) - 1) / block_units(gates);
}

int64_t packed_size(int64_t gates, int64_t hidden, int64_t columns) {
  return hidden_blocks(gates, hidden) * columns * panel_vectors(gates) * kLanes;
}

// panel[j][k][g][s][v] = weight[g*H + (j*S + s)*V + v, k] (Note [CPU recurrent kernel])
void pack(const float* weight, int64_t gates, int64_t hidden, int64_t columns, float* packed) {
  const int64_t S = vectors_per_gate(gates);
  for (int64_t j = 0; j < hidden_blocks(gates, hidden); ++j) {
    for (int64_t k = 0; k < columns; ++k) {
      for (int64_t g = 0; g < gates; ++g) {
        for (int64_t s = 0; s < S; ++s) {
          float* dst = packed + (((j * columns + k) * gates + g) * S + s) * kLanes;
          for (int64_t v = 0; v < kLanes; ++v) {
            const int64_t unit = (j * S + s) * kLanes + v;
            dst[v] = unit < hidden ? weight[(g * hidden + unit) * columns + k] : 0.0f;
          }
        }
      }
    }
  }
}

// Note [bf16 recurrent weights]
// With recurrent_dtype="bfloat16" (settings.py) W_hh arrives as bfloat16 and is packed in pairs
// of columns: pairs[j][k/2][g][s][v] = (W_hh[g*H + u, k], W_hh[g*H + u, k + 1]) for the unit
// u = (j*S + s)*V + v, one
// 32-bit lane per unit (AVX512-BF16's vdpbf16ps layout), so a step streams half the float32
// panel's bytes, which is what bounds a batch-1 step. A bfloat16 is the upper half of a float,
// so a shift and a mask widen a lane's two columns to floats exactly, and the products
// accumulate in float32 as before; the hidden state is rounded to bfloat16 (nearest even) for
// the product only. W_ih and the input projection, the biases, the gate activations, GRU's
// blend with h and the cell state stay float32. Widening runs on every build (AVX2, AVX-512,
// portable); its multiply-adds stay those of float32, which a batch-1 step has to spare, and a
// CPU with AVX512-BF16 does the batched products on vdpbf16ps (Note [bf16 dot products]).
void pack_pairs(const uint16_t* weight, int64_t gates, int64_t hidden, int64_t columns,
                uint16_t* packed) {
  const int64_t pairs = (columns + 1) / 2;
  const int64_t S = vectors_per_gate(gates);
  for (int64_t j = 0; j < hidden_blocks(gates, hidden); ++j) {
    for (int64_t p = 0; p < pairs; ++p) {
      for (int64_t g = 0; g < gates; ++g) {
        for (int64_t s = 0; s < S; ++s) {
          uint16_t* dst = packed + (((j * pairs + p) * gates + g) * S + s) * 2 * kLanes;
          for (int64_t v = 0; v < 2 * kLanes; ++v) {
            const int64_t unit = (j * S + s) * kLanes + v / 2;
            const int64_t k = 2 * p + v % 2;
            dst[v] =
                unit < hidden && k < columns ? weight[(g * hidden + unit) * columns + k] : 0;
          }
        }
      }
    }
  }
}

inline Vec load(const float* p, int64_t n) {
  return n == kLanes ? Vec::loadu(p) : Vec::loadu(p, n);
}

inline void store(const Vec& v, float* p, int64_t n) {
  if (n == kLanes) {
    v.store(p);
  } else {
    v.store(p, n);
  }
}

// Note [Gate activations]
// The gates' exp and tanh are the cell's second cost after the recurrent product (at batch 8,
// at::vec's Sleef tanh took a quarter of the time loop). These are cheaper and stay within a
// few ulp of the exact values, so the layer still equals aten's (which uses Sleef, 1 ulp) to
// rtol 1e-5 / atol 1e-6. sigmoid is 1 / (1 + exp(-x)), with exp by Cody-Waite reduction
// x = n ln2 + r and a degree-6 polynomial on |r| <= ln2/2 (the minimax coefficients Cephes'
// expf uses), scaled by 2^n: its relative error stays small where the gate is near 0, which
// scales the cell's input. tanh is a rational function x P(x^2) / Q(x^2) of degrees 13 and 6
// on |x| <= 9 (beyond, tanh rounds to +-1 in float32): 9 multiply-adds and one division, where
// 1 - 2 / (exp(2x) + 1) with a polynomial near 0 took twice the operations and a blend (LSTM
// 3x128 at batch 32 on one thread, -5%). Its coefficients were fitted here for the
// least maximum relative error on (0, 9] (2.1e-8, by linear programming on 3,000 points,
// reweighting by the denominator); evaluated in float32 its error is at most 4.9 ulp over
// every 7th float32 in [2^-20, 12], and the clamp keeps |tanh| <= 1 where rounding would pass
// it. The portable build keeps at::vec's exp and tanh.
// exp_gate's input bounds: inside them 2^n is a normal float; outside, sigmoid and tanh are
// flat anyway (and a softmax's exp below kExpLowest is 0, Note [Softmax rows])
constexpr float kExpLowest = -87.0f;
constexpr float kExpHighest = 88.0f;

inline Vec exp_gate(const Vec& x_in) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  const Vec x = at::vec::clamp(x_in, Vec(kExpLowest), Vec(kExpHighest));
  const Vec n = (x * Vec(1.44269504088896341f)).round();
  Vec r = at::vec::fmadd(n, Vec(-0.693359375f), x);  // ln2 = 0.693359375 - 2.12194440e-4
  r = at::vec::fmadd(n, Vec(2.12194440e-4f), r);
  Vec p(1.9875691500e-4f);
  p = at::vec::fmadd(p, r, Vec(1.3981999507e-3f));
  p = at::vec::fmadd(p, r, Vec(8.3334519073e-3f));
  p = at::vec::fmadd(p, r, Vec(4.1665795894e-2f));
  p = at::vec::fmadd(p, r, Vec(1.6666665459e-1f));
  p = at::vec::fmadd(p, r, Vec(5.0000001201e-1f));
  p = at::vec::fmadd(p, r * r, r + Vec(1.0f));
#if defined(CPU_CAPABILITY_AVX512)
  return Vec(_mm512_scalef_ps(p, n));
#else
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n),
                                                          _mm256_set1_epi32(127)), 23);
  return p * Vec(_mm256_castsi256_ps(bits));
#endif
#else
  return x_in.exp();
#endif
}

inline Vec sigmoid(const Vec& x) { return Vec(1.0f) / (Vec(1.0f) + exp_gate(x.neg())); }

inline Vec tanh_gate(const Vec& x_in) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  const Vec x = at::vec::clamp(x_in, Vec(-9.0f), Vec(9.0f));
  const Vec z = x * x;
  Vec p(-9.2324355e-14f);
  p = at::vec::fmadd(p, z, Vec(5.5973347e-11f));
  p = at::vec::fmadd(p, z, Vec(-2.095104e-08f));
  p = at::vec::fmadd(p, z, Vec(1.1346745e-05f));
  p = at::vec::fmadd(p, z, Vec(3.1231884e-03f));
  p = at::vec::fmadd(p, z, Vec(1.3101476e-01f));
  p = at::vec::fmadd(p, z, Vec(1.0f));
  Vec q(2.573649e-04f);
  q = at::vec::fmadd(q, z, Vec(2.4572559e-02f));
  q = at::vec::fmadd(q, z, Vec(4.643481e-01f));
  q = at::vec::fmadd(q, z, Vec(1.0f));
  return at::vec::clamp(x * p / q, Vec(-1.0f), Vec(1.0f));
#else
  return x_in.tanh();
#endif
}

// Keeps a loaded weight vector in a register: the compiler otherwise folds the load into each
// row's multiply-add (vfmadd231ps mem, ...), which loads the same weights once per batch row. On
// AVX2 (16 registers, hoisted gate constants) GCC did so for every row group, so a step's
// product issued 10 loads per 8 multiply-adds instead of 6 and was load-bound (batch 8-32:
// one-thread CPU time -12 to -17%, with the same change in the input projection).
inline void pin_register(Vec& v) {
#if defined(CPU_CAPABILITY_AVX512)
  __m512 x = v;
  asm("" : "+v"(x));
  v = Vec(x);
#elif defined(CPU_CAPABILITY_AVX2)
  __m256 x = v;
  asm("" : "+x"(x));
  v = Vec(x);
#else
  (void)v;  // the portable build leaves it to the compiler
#endif
}

// Independent accumulator chains per (row, gate): enough (>= 8) to hide the FMA latency when
// few rows and gates share a panel pass.
constexpr int unroll_for(int gates, int rows) {
  return gates * rows >= 8 ? 1 : (8 + gates * rows - 1) / (gates * rows);
}

// acc[r][g] = h_r · (the panel's g-th vector of weights, for every column) for the rows in `h`
// (R pointers to H floats): G vectors per column, a block's gates times its vectors per gate.
// U: the chains each sum is split into (the order of its additions, so its rounding)
template <int G, int R, int U = unroll_for(G, R)>
inline void recurrent_product(const float* panel, int64_t hidden, const float* const* h,
                              Vec (&acc)[R][G]) {
  Vec part[U][R][G];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < G; ++g) part[u][r][g] = Vec(0.0f);
  int64_t k = 0;
  for (; k + U <= hidden; k += U) {
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      const float* w = panel + (k + u) * G * kLanes;
      if constexpr (R * G + G + 1 > kRegisters) {
        // every row's h first, then one weight vector at a time: R * G accumulators + R + 1
        // registers, where the G weights of the other order would not fit
        Vec hv[R];
        for (int r = 0; r < R; ++r) hv[r] = Vec(h[r][k + u]);
        for (int g = 0; g < G; ++g) {
          Vec wv = Vec::loadu(w + g * kLanes);
          pin_register(wv);
          for (int r = 0; r < R; ++r) part[u][r][g] = at::vec::fmadd(wv, hv[r], part[u][r][g]);
        }
      } else {
        Vec wv[G];
        for (int g = 0; g < G; ++g) {
          wv[g] = Vec::loadu(w + g * kLanes);
          if constexpr (R > 1) pin_register(wv[g]);
        }
        for (int r = 0; r < R; ++r) {
          const Vec hv(h[r][k + u]);
          for (int g = 0; g < G; ++g) part[u][r][g] = at::vec::fmadd(wv[g], hv, part[u][r][g]);
        }
      }
    }
  }
  for (; k < hidden; ++k) {
    const float* w = panel + k * G * kLanes;
    for (int r = 0; r < R; ++r) {
      const Vec hv(h[r][k]);
      for (int g = 0; g < G; ++g)
        part[0][r][g] = at::vec::fmadd(Vec::loadu(w + g * kLanes), hv, part[0][r][g]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int g = 0; g < G; ++g) {
      acc[r][g] = part[0][r][g];
      for (int u = 1; u < U; ++u) acc[r][g] = acc[r][g] + part[u][r][g];
    }
  }
}

// the two columns of a pair-packed vector (Note [bf16 recurrent weights]) as floats
inline void widen_pairs(const uint16_t* p, Vec& even, Vec& odd) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m512i bits = _mm512_loadu_si512(p);
  even = Vec(_mm512_castsi512_ps(_mm512_slli_epi32(bits, 16)));
  odd = Vec(_mm512_castsi512_ps(_mm512_and_si512(bits, _mm512_set1_epi32(-65536))));
#elif defined(CPU_CAPABILITY_AVX2)
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  even = Vec(_mm256_castsi256_ps(_mm256_slli_epi32(bits, 16)));
  odd = Vec(_mm256_castsi256_ps(_mm256_and_si256(bits, _mm256_set1_epi32(-65536))));
#else
  float e[kLanes], o[kLanes];
  for (int64_t v = 0; v < kLanes; ++v) {
    e[v] = c10::detail::f32_from_bits(p[2 * v]);
    o[v] = c10::detail::f32_from_bits(p[2 * v + 1]);
  }
  even = Vec::loadu(e);
  odd = Vec::loadu(o);
#endif
}

// Calls f(i, u) for every i in [0, count): U at a time, the u-th of each group into the
// accumulators u (independent chains), the rest into the accumulators 0
template <int U, class F>
inline void unrolled(int64_t count, F&& f) {
  int64_t i = 0;
  for (; i + U <= count; i += U) {
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) f(i + u, u);
  }
  for (; i < count; ++i) f(i, 0);
}

// recurrent_product for pair-packed W_hh; `h` rows are rounded to bfloat16 and zero-padded to
// an even length
template <int G, int R>
inline void recurrent_product_pairs(const uint16_t* panel, int64_t hidden, const float* const* h,
                                    Vec (&acc)[R][G]) {
  constexpr int U = unroll_for(G, R);
  const int64_t pairs = (hidden + 1) / 2;
  Vec part[U][R][G];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < G; ++g) part[u][r][g] = Vec(0.0f);
  auto pair = [&](int64_t p, Vec(&sum)[R][G]) {
    Vec he[R], ho[R];
    for (int r = 0; r < R; ++r) {
      he[r] = Vec(h[r][2 * p]);
      ho[r] = Vec(h[r][2 * p + 1]);
    }
    for (int g = 0; g < G; ++g) {
      Vec even, odd;
      widen_pairs(panel + (p * G + g) * 2 * kLanes, even, odd);
      for (int r = 0; r < R; ++r)
        sum[r][g] = at::vec::fmadd(odd, ho[r], at::vec::fmadd(even, he[r], sum[r][g]));
    }
  };
  unrolled<U>(pairs, [&](int64_t p, int u) { pair(p, part[u]); });
  for (int r = 0; r < R; ++r) {
    for (int g = 0; g < G; ++g) {
      acc[r][g] = part[0][r][g];
      for (int u = 1; u < U; ++u) acc[r][g] = acc[r][g] + part[u][r][g];
    }
  }
}

// Note [bf16 dot products]
// On a CPU with AVX512-BF16, the product of pair-packed W_hh runs on vdpbf16ps instead of
// widening: one instruction multiplies each lane's two bfloat16 weights by the row's two
// bfloat16 h values and adds both products to the float32 accumulator, 32 products where an
// FMA does 16, at the same rate (one a cycle on a Zen 4 core: 3.67 G vdpbf16ps/s against 3.66 G
// vfmadd231ps/s). Each product of two bfloat16 values is exact in float32 either way; the sums
// round in another order than the widening path's two FMAs, and vdpbf16ps flushes denormal
// inputs and results to zero, so the two paths differ by float32 rounding, far inside the
// error recurrent_dtype="bfloat16" states. A CPU without the instruction (or any other build)
// takes the widening path; one process uses one path for every block, so results still do not
// depend on the thread count. The broadcast operand is a pair of h values as one 32-bit word,
// which is what the bfloat16 values of a row, in order, already are (state_words).
#if defined(CPU_CAPABILITY_AVX512)
inline bool has_bf16_dot() {
  static const bool yes = __builtin_cpu_supports("avx512bf16");
  return yes;
}

// GCC inlines a function only into one compiled for the same or a wider target, and a lambda
// does not take its enclosing function's target: the product's helpers carry the target
// themselves (a lambda here became a call per pair, the accumulators in memory).
#define CHRION_BF16_DOT_TARGET \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

// sum[r][g] += h_r's pair p · the panel's g-th vector of pairs p
template <int G, int R>
CHRION_BF16_DOT_TARGET inline void dot_pair(const uint16_t* panel, int64_t p,
                                            const uint32_t* const* h, __m512 (&sum)[R][G]) {
  __m512i hv[R];
  for (int r = 0; r < R; ++r) hv[r] = _mm512_set1_epi32(static_cast<int>(h[r][p]));
  for (int g = 0; g < G; ++g) {
    const __m512i w = _mm512_loadu_si512(panel + (p * G + g) * 2 * kLanes);
    for (int r = 0; r < R; ++r)
      sum[r][g] = _mm512_dpbf16_ps(sum[r][g], (__m512bh)w, (__m512bh)hv[r]);
  }
}

// recurrent_product_pairs on vdpbf16ps: `h` rows are the state_words of the rounded h
template <int G, int R>
CHRION_BF16_DOT_TARGET __attribute__((noinline)) void product_bf16_dot(
    const uint16_t* panel, int64_t pairs, const uint32_t* const* h, Vec (&acc)[R][G]) {
  constexpr int U = unroll_for(G, R);
  __m512 part[U][R][G];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < G; ++g) part[u][r][g] = _mm512_setzero_ps();
  int64_t p = 0;
  for (; p + U <= pairs; p += U) {
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) dot_pair<G, R>(panel, p + u, h, part[u]);
  }
  for (; p < pairs; ++p) dot_pair<G, R>(panel, p, h, part[0]);
  for (int r = 0; r < R; ++r) {
    for (int g = 0; g < G; ++g) {
      __m512 sum = part[0][r][g];
      for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, part[u][r][g]);
      acc[r][g] = Vec(sum);
    }
  }
}
#else
inline bool has_bf16_dot() { return false; }
#endif

// The product of a pair-packed panel: vdpbf16ps where the CPU has it (`words`, else null)
template <int G, int R>
inline void bf16_product(const uint16_t* panel, int64_t hidden, const float* const* h,
                         const uint32_t* const* words, Vec (&acc)[R][G]) {
#if defined(CPU_CAPABILITY_AVX512)
  if (words[0] != nullptr) return product_bf16_dot<G, R>(panel, (hidden + 1) / 2, words, acc);
#else
  (void)words;
#endif
  recurrent_product_pairs<G, R>(panel, hidden, h, acc);
}

// Each batch row's h_{t-1} rounded to bfloat16, [batch][hidden rounded up to even] floats in
// this thread's buffer: once per step and thread, not once per block.
inline const float* rounded_state(const Steps& s, int64_t t_prev, bool first) {
  thread_local std::vector<float> buffer;
  const int64_t H = s.hidden;
  const int64_t stride = H + H % 2;
  buffer.resize(s.batch * stride);
  for (int64_t b = 0; b < s.batch; ++b) {
    const float* h = first ? s.h0 + b * H : s.out + t_prev * s.out_t + b * s.out_b;
    float* dst = buffer.data() + b * stride;
    int64_t i = 0;
    for (; i + 2 * kLanes <= H; i += 2 * kLanes) {
      const auto bf16 = at::vec::convert_from_float<c10::BFloat16>(Vec::loadu(h + i),
                                                                   Vec::loadu(h + i + kLanes));
      const auto [lo, hi] = at::vec::convert_to_float<c10::BFloat16>(bf16);
      lo.store(dst + i);
      hi.store(dst + i + kLanes);
    }
    for (; i < H; ++i) dst[i] = static_cast<float>(c10::BFloat16(h[i]));
    if (H % 2 == 1) dst[H] = 0.0f;
  }
  return buffer.data();
}

// The rounded rows of rounded_state as bfloat16 values in order, [batch][hidden rounded up to
// even]: read as 32-bit words, word p of a row is the pair (h[2p], h[2p+1]) that vdpbf16ps
// takes (Note [bf16 dot products]). Exact: a rounded float's low 16 bits are zero.
inline const uint32_t* state_words(const Steps& s, const float* rounded) {
  thread_local std::vector<uint32_t> buffer;
  const int64_t values = s.batch * (s.hidden + s.hidden % 2);
  buffer.resize(values / 2);
  const auto* bits = reinterpret_cast<const uint32_t*>(rounded);
  auto* out = reinterpret_cast<uint16_t*>(buffer.data());
  for (int64_t i = 0; i < values; ++i) out[i] = static_cast<uint16_t>(bits[i] >> 16);
  return buffer.data();
}

// One block of V hidden units (offset `o`, `n` of them valid) of R batch rows: the recurrent
// product, then the cell on the accumulators.
// `pairs` (null for float32 W_hh) is the block's pair-packed panel and `h_dot` the rows it
// multiplies (Note [bf16 recurrent weights]), `h_words` the same as vdpbf16ps takes them, or
// null (Note [bf16 dot products]).
template <Cell C, int R>
inline void cell_block(const Steps& s, const float* panel, const uint16_t* pairs, int64_t o,
                       int64_t n, const float* const* h_prev, const float* const* h_dot,
                       const uint32_t* const* h_words, const float* const* gx,
                       float* const* h_out, float* const* c) {
  constexpr int64_t G = gate_count(C);
  constexpr int GS = panel_vectors(G);
  const int64_t H = s.hidden;
  Vec acc[R][GS];
  if (pairs != nullptr) {
    bf16_product<GS, R>(pairs, H, h_dot, h_words, acc);
  } else {
    recurrent_product<GS, R>(panel, H, h_prev, acc);
  }
  for (int r = 0; r < R; ++r) {
    if constexpr (C == Cell::lstm) {
      const Vec i = sigmoid(acc[r][0] + load(gx[r] + o, n));
      const Vec f = sigmoid(acc[r][1] + load(gx[r] + H + o, n));
      const Vec g = tanh_gate(acc[r][2] + load(gx[r] + 2 * H + o, n));
      const Vec og = sigmoid(acc[r][3] + load(gx[r] + 3 * H + o, n));
      const Vec cy = f * load(c[r] + o, n) + i * g;
      store(cy, c[r] + o, n);
      store(og * tanh_gate(cy), h_out[r] + o, n);
    } else if constexpr (C == Cell::gru) {
      const Vec rg = sigmoid(acc[r][0] + load(gx[r] + o, n));
      const Vec z = sigmoid(acc[r][1] + load(gx[r] + H + o, n));
      const Vec hn = s.hidden_bias != nullptr ? acc[r][2] + load(s.hidden_bias + o, n)
                                              : acc[r][2];
      const Vec ng = tanh_gate(load(gx[r] + 2 * H + o, n) + hn * rg);
      const Vec hp = load(h_prev[r] + o, n);
      store((hp - ng) * z + ng, h_out[r] + o, n);
    } else {
      for (int v = 0; v < GS && v * kLanes < n; ++v) {  // Note [RNN blocks]
        const int64_t at = o + v * kLanes;
        const int64_t valid = std::min(kLanes, n - v * kLanes);
        const Vec x = acc[r][v] + load(gx[r] + at, valid);
        store(C == Cell::rnn_tanh ? tanh_gate(x) : at::vec::maximum(x, Vec(0.0f)), h_out[r] + at,
              valid);
      }
    }
  }
}

// The rest of a row grouping: one group of `rest` (< R + 1) rows starting at `first`.
template <int R, class F>
inline void rest_group(int64_t rest, int64_t first, F& f) {
  if constexpr (R > 0) {
    if (rest == R) return f(std::integral_constant<int, R>{}, first);
    rest_group<R - 1>(rest, first, f);
  }
}

// Calls f(std::integral_constant<int, R>{}, first) for the rows [0, count) cut into groups of
// kMax rows and one group of the rest: each group is one pass over a weight panel, so the rest
// costs one pass, not one per leftover row (32 projection rows in groups of 6 streamed the
// panel 7 times, not 6; a batch of 3 three times, not once).
template <int kMax, class F>
inline void for_row_groups(int64_t count, F&& f) {
  int64_t first = 0;
  for (; first + kMax <= count; first += kMax) f(std::integral_constant<int, kMax>{}, first);
  rest_group<kMax - 1>(count - first, first, f);
}

template <Cell C, int R>
inline void row_group(const Steps& s, int64_t step, int64_t t, int64_t t_prev, int64_t b0,
                      const float* panel, const uint16_t* pairs, const float* rounded,
                      const uint32_t* words, int64_t o, int64_t n) {
  const float* h_prev[R];
  const float* h_dot[R];
  const uint32_t* h_words[R];
  const float* gx[R];
  float* h_out[R];
  float* c[R];
  for (int r = 0; r < R; ++r) {
    const int64_t b = b0 + r;
    h_prev[r] = step == 0 ? s.h0 + b * s.hidden : s.out + t_prev * s.out_t + b * s.out_b;
    h_dot[r] = rounded != nullptr ? rounded + b * (s.hidden + s.hidden % 2) : nullptr;
    h_words[r] = words != nullptr ? words + b * ((s.hidden + 1) / 2) : nullptr;
    gx[r] = s.gates_x + (step % s.chunk * s.batch + b) * gate_count(C) * s.hidden;
    h_out[r] = s.out + t * s.out_t + b * s.out_b;
    c[r] = s.c != nullptr ? s.c + b * s.hidden : nullptr;
  }
  cell_block<C, R>(s, panel, pairs, o, n, h_prev, h_dot, h_words, gx, h_out, c);
}

template <Cell C>
void step_cell(const Steps& s, int64_t step, int64_t j0, int64_t j1) {
  constexpr int64_t G = gate_count(C);
  constexpr int64_t GS = panel_vectors(G);
  const int64_t H = s.hidden;
  const int64_t t = s.reverse ? s.steps - 1 - step : step;
  const int64_t t_prev = s.reverse ? t + 1 : t - 1;
  const bool bf16 = s.packed_pairs != nullptr;
  const float* rounded = bf16 ? rounded_state(s, t_prev, step == 0) : nullptr;
  const uint32_t* words = bf16 && has_bf16_dot() ? state_words(s, rounded) : nullptr;
  // Odd steps run their blocks last to first: where a thread's share of W_hh outgrows its L2
  // (LSTM 512 at batch 1 on two threads: 2 MiB against 1 MiB), each step then starts on the
  // panels the step before ended with, still in L2. 2-5% faster there (LSTM 1x512, RNN 1x1024,
  // GRU 2x256 at batch 1), no change where the share fits. The arithmetic of a block does not
  // depend on when it runs.
  const bool backwards = step % 2 == 1;
  for (int64_t k = j0; k < j1; ++k) {
    const int64_t j = backwards ? j0 + j1 - 1 - k : k;
    const float* panel = bf16 ? nullptr : s.packed + j * H * GS * kLanes;
    const uint16_t* pairs = bf16 ? s.packed_pairs + j * (H + H % 2) * GS * kLanes : nullptr;
    const int64_t o = j * block_units(G);
    const int64_t n = std::min(block_units(G), H - o);
    for_row_groups<kRows<GS>>(s.batch, [&](auto rows, int64_t b) {
      row_group<C, decltype(rows)::value>(s, step, t, t_prev, b, panel, pairs, rounded,
                                          words, o, n);
    });
  }
}

void step(const Steps& s, int64_t step, int64_t j0, int64_t j1) {
  switch (s.cell) {
    case Cell::lstm:
      return step_cell<Cell::lstm>(s, step, j0, j1);
    case Cell::gru:
      return step_cell<Cell::gru>(s, step, j0, j1);
    case Cell::rnn_tanh:
      return step_cell<Cell::rnn_tanh>(s, step, j0, j1);
    case Cell::rnn_relu:
      return step_cell<Cell::rnn_relu>(s, step, j0, j1);
  }
}

// Rows of the input projection sharing one pass over a W_ih panel: more than the time loop's
// (the panel is reused by every row, and the accumulators still fit the registers).
template <int G>
constexpr int kProjectRows = kLanes >= 16 ? 6 : kRows<G>;

// the input of row `row` of the chunk that starts at step `first_step`
inline const float* input_row(const Projection& p, int64_t first_step, int64_t row) {
  const int64_t step = first_step + row / p.batch;
  const int64_t t = p.reverse ? p.steps - 1 - step : step;
  return p.x + t * p.x_t + row % p.batch * p.x_b;
}

// `o` and `n`: the block's first hidden unit and how many of its units there are
template <int G, int R>
inline void project_rows(const Projection& p, const float* panel, int64_t first_step,
                         int64_t row, int64_t o, int64_t n) {
  constexpr int S = static_cast<int>(vectors_per_gate(G));
  const int64_t H = p.hidden;
  const float* x[R];
  for (int r = 0; r < R; ++r) x[r] = input_row(p, first_step, row + r);
  Vec acc[R][panel_vectors(G)];
  // a full group's chains in the rest's group too: a row's gates do not depend on how the rows
  // were grouped (the chunk's length, a part of the batch: recurrent.cpp)
  constexpr int GS = panel_vectors(G);
  recurrent_product<GS, R, unroll_for(GS, kProjectRows<GS>)>(panel, p.features, x, acc);
  for (int g = 0; g < G; ++g) {
    for (int v = 0; v < S && v * kLanes < n; ++v) {
      const int64_t at = g * H + o + v * kLanes;  // the vector's first column of the gates
      const int64_t valid = std::min(kLanes, n - v * kLanes);
      Vec bias(0.0f);
      if (p.bias_ih != nullptr) {
        bias = load(p.bias_ih + at, valid);
        // GRU: b_hn is applied by the time loop, inside r * (W_hn h + b_hn)
        if (p.bias_hh != nullptr && !(p.cell == Cell::gru && g == 2)) {
          bias = bias + load(p.bias_hh + at, valid);
        }
      }
      for (int r = 0; r < R; ++r) {
        store(acc[r][g * S + v] + bias, p.gates + (row + r) * G * H + at, valid);
      }
    }
  }
}

template <int G>
void project_gates(const Projection& p, int64_t first_step, int64_t j0, int64_t j1) {
  constexpr int GS = panel_vectors(G);
  const int64_t rows = std::min(p.chunk, p.steps - first_step) * p.batch;
  for (int64_t row0 = 0; row0 < rows; row0 += kChunkRows) {
    const int64_t row1 = std::min(rows, row0 + kChunkRows);
    for (int64_t j = j0; j < j1; ++j) {
      const float* panel = p.packed + j * p.features * GS * kLanes;
      const int64_t o = j * block_units(G);
      const int64_t n = std::min(block_units(G), p.hidden - o);
      for_row_groups<kProjectRows<GS>>(row1 - row0, [&](auto group, int64_t row) {
        project_rows<G, decltype(group)::value>(p, panel, first_step, row0 + row, o, n);
      });
    }
  }
}

void project(const Projection& p, int64_t first_step, int64_t j0, int64_t j1) {
  switch (gate_count(p.cell)) {
    case 4:
      return project_gates<4>(p, first_step, j0, j1);
    case 3:
      return project_gates<3>(p, first_step, j0, j1);
    default:
      return project_gates<1>(p, first_step, j0, j1);
  }
}

}  // namespace chrion::recurrent::CPU_CAPABILITY

#include "softmax_cpu_impl.h"

namespace chrion::recurrent::CPU_CAPABILITY {

const CpuKernels kKernels{CHRION_STRINGIZE_ISA(CPU_CAPABILITY),
                          &block_units,
                          &step_rows,
                          &packed_size,
                          &pack,
                          &pack_pairs,
                          &project,
                          &step,
                          &has_bf16_dot,
                          &softmax_rows};

}  // namespace chrion::recurrent::CPU_CAPABILITY
