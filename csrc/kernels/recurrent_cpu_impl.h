// The CPU recurrent time loop for one instruction set (Note [CPU recurrent kernel] in
// recurrent_cpu.h). Included once by each recurrent_cpu_<isa>.cpp, after it has set
// CPU_CAPABILITY (and the compiler target), so everything here lives in a namespace of its own
// per instruction set, as ATen's own at::vec does.
//
// The math follows ATen's CPU cells operation for operation (RNN.cpp: sigmoid as
// 1 / (1 + exp(-x)), GRU's h' = (h - n) * z + n with r applied after the hidden product), with
// at::vec's exp / tanh (Sleef, 1 ulp), so float32 results match aten to rounding.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <cstdint>

#include "recurrent_cpu.h"

#define CHRION_STRINGIZE_ISA_(x) #x
#define CHRION_STRINGIZE_ISA(x) CHRION_STRINGIZE_ISA_(x)

namespace chrion::recurrent::CPU_CAPABILITY {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();
// batch rows sharing one pass over a weight panel: 4 x 4 gate accumulators fill half of
// AVX-512's 32 registers; AVX2 (16 registers) and the portable build take 2
constexpr int kRows = kLanes >= 16 ? 4 : 2;

inline int64_t hidden_blocks(int64_t hidden) { return (hidden + kLanes - 1) / kLanes; }

int64_t packed_size(int64_t gates, int64_t hidden) {
  return hidden_blocks(hidden) * hidden * gates * kLanes;
}

void pack(const float* w_hh, int64_t gates, int64_t hidden, float* packed) {
  for (int64_t j = 0; j < hidden_blocks(hidden); ++j) {
    for (int64_t k = 0; k < hidden; ++k) {
      for (int64_t g = 0; g < gates; ++g) {
        float* dst = packed + ((j * hidden + k) * gates + g) * kLanes;
        for (int64_t v = 0; v < kLanes; ++v) {
          const int64_t unit = j * kLanes + v;
          dst[v] = unit < hidden ? w_hh[(g * hidden + unit) * hidden + k] : 0.0f;
        }
      }
    }
  }
}

inline Vec load(const float* p, int64_t n) { return n == kLanes ? Vec::loadu(p) : Vec::loadu(p, n); }

inline void store(const Vec& v, float* p, int64_t n) {
  if (n == kLanes) {
    v.store(p);
  } else {
    v.store(p, n);
  }
}

inline Vec sigmoid(const Vec& x) { return Vec(1.0f) / (Vec(1.0f) + x.neg().exp()); }

// Independent accumulator chains per (row, gate): enough (>= 8) to hide the FMA latency when
// few rows and gates share a panel pass.
constexpr int unroll_for(int gates, int rows) {
  return gates * rows >= 8 ? 1 : (8 + gates * rows - 1) / (gates * rows);
}

// acc[r][g] = h_r · W_hh[g*H + j*V .. +V, :] for the rows in `h` (R pointers to H floats)
template <int G, int R>
inline void recurrent_product(const float* panel, int64_t hidden, const float* const* h,
                              Vec (&acc)[R][G]) {
  constexpr int U = unroll_for(G, R);
  Vec part[U][R][G];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < G; ++g) part[u][r][g] = Vec(0.0f);
  int64_t k = 0;
  for (; k + U <= hidden; k += U) {
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      const float* w = panel + (k + u) * G * kLanes;
      Vec wv[G];
      for (int g = 0; g < G; ++g) wv[g] = Vec::loadu(w + g * kLanes);
      for (int r = 0; r < R; ++r) {
        const Vec hv(h[r][k + u]);
        for (int g = 0; g < G; ++g) part[u][r][g] = at::vec::fmadd(wv[g], hv, part[u][r][g]);
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

// One block of V hidden units (offset `o`, `n` of them valid) of R batch rows: the recurrent
// product, then the cell on the accumulators.
template <Cell C, int R>
inline void cell_block(const Steps& s, const float* panel, int64_t o, int64_t n,
                       const float* const* h_prev, const float* const* gx, float* const* h_out,
                       float* const* c) {
  constexpr int G = static_cast<int>(gate_count(C));
  const int64_t H = s.hidden;
  Vec acc[R][G];
  recurrent_product<G, R>(panel, H, h_prev, acc);
  for (int r = 0; r < R; ++r) {
    if constexpr (C == Cell::lstm) {
      const Vec i = sigmoid(acc[r][0] + load(gx[r] + o, n));
      const Vec f = sigmoid(acc[r][1] + load(gx[r] + H + o, n));
      const Vec g = (acc[r][2] + load(gx[r] + 2 * H + o, n)).tanh();
      const Vec og = sigmoid(acc[r][3] + load(gx[r] + 3 * H + o, n));
      const Vec cy = f * load(c[r] + o, n) + i * g;
      store(cy, c[r] + o, n);
      store(og * cy.tanh(), h_out[r] + o, n);
    } else if constexpr (C == Cell::gru) {
      const Vec rg = sigmoid(acc[r][0] + load(gx[r] + o, n));
      const Vec z = sigmoid(acc[r][1] + load(gx[r] + H + o, n));
      const Vec hn = s.hidden_bias != nullptr ? acc[r][2] + load(s.hidden_bias + o, n)
                                              : acc[r][2];
      const Vec ng = (load(gx[r] + 2 * H + o, n) + hn * rg).tanh();
      const Vec hp = load(h_prev[r] + o, n);
      store((hp - ng) * z + ng, h_out[r] + o, n);
    } else if constexpr (C == Cell::rnn_tanh) {
      store((acc[r][0] + load(gx[r] + o, n)).tanh(), h_out[r] + o, n);
    } else {
      store(at::vec::maximum(acc[r][0] + load(gx[r] + o, n), Vec(0.0f)), h_out[r] + o, n);
    }
  }
}

template <Cell C, int R>
inline void row_group(const Steps& s, int64_t t, int64_t t_prev, bool first, int64_t b0,
                      const float* panel, int64_t o, int64_t n) {
  const float* h_prev[R];
  const float* gx[R];
  float* h_out[R];
  float* c[R];
  for (int r = 0; r < R; ++r) {
    const int64_t b = b0 + r;
    h_prev[r] = first ? s.h0 + b * s.hidden : s.out + t_prev * s.out_t + b * s.out_b;
    gx[r] = s.gates_x + t * s.gates_t + b * s.gates_b;
    h_out[r] = s.out + t * s.out_t + b * s.out_b;
    c[r] = s.c != nullptr ? s.c + b * s.hidden : nullptr;
  }
  cell_block<C, R>(s, panel, o, n, h_prev, gx, h_out, c);
}

// Steps over the hidden blocks [j0, j1); `sync` runs after each step (a barrier, or nothing).
template <Cell C, typename Sync>
void run_blocks(const Steps& s, int64_t j0, int64_t j1, Sync sync) {
  constexpr int64_t G = gate_count(C);
  const int64_t H = s.hidden;
  for (int64_t step = 0; step < s.steps; ++step) {
    const int64_t t = s.reverse ? s.steps - 1 - step : step;
    const int64_t t_prev = s.reverse ? t + 1 : t - 1;
    for (int64_t j = j0; j < j1; ++j) {
      const float* panel = s.packed + j * H * G * kLanes;
      const int64_t o = j * kLanes;
      const int64_t n = std::min(kLanes, H - o);
      int64_t b = 0;
      for (; b + kRows <= s.batch; b += kRows)
        row_group<C, kRows>(s, t, t_prev, step == 0, b, panel, o, n);
      for (; b < s.batch; ++b) row_group<C, 1>(s, t, t_prev, step == 0, b, panel, o, n);
    }
    sync();
  }
}

template <Cell C>
void run_cell(const Steps& s) {
  const int64_t blocks = hidden_blocks(s.hidden);
#ifdef _OPENMP
  if (s.threads > 1 && blocks > 1) {
#pragma omp parallel num_threads(s.threads)
    {
      const int64_t parts = std::min<int64_t>(omp_get_num_threads(), blocks);
      const int64_t part = omp_get_thread_num();
      // every thread runs every step (so every thread meets every barrier); one past `parts`
      // owns no blocks
      const int64_t j0 = part < parts ? blocks * part / parts : blocks;
      const int64_t j1 = part < parts ? blocks * (part + 1) / parts : blocks;
      run_blocks<C>(s, j0, j1, [] {
#pragma omp barrier
      });
    }
    return;
  }
#endif
  run_blocks<C>(s, 0, blocks, [] {});
}

void run(const Steps& s) {
  switch (s.cell) {
    case Cell::lstm:
      return run_cell<Cell::lstm>(s);
    case Cell::gru:
      return run_cell<Cell::gru>(s);
    case Cell::rnn_tanh:
      return run_cell<Cell::rnn_tanh>(s);
    case Cell::rnn_relu:
      return run_cell<Cell::rnn_relu>(s);
  }
}

const CpuKernels kKernels{CHRION_STRINGIZE_ISA(CPU_CAPABILITY), &packed_size, &pack, &run};

}  // namespace chrion::recurrent::CPU_CAPABILITY
