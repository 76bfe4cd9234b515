// CPU kernels of chrion::lstm / gru / rnn: the per-instruction-set part.
//
// Note [CPU recurrent kernel]
// A layer direction runs in two phases (recurrent.cpp drives them):
//  1. the input projection of every time step, X·W_ihᵀ + biases, as ONE GEMM before the time
//     loop, against W_ih packed in the same panels as W_hh (below), register-blocked over 4 or
//     more input rows, with the biases folded in;
//  2. the time loop, here: per step, per block of V hidden units (V = one SIMD vector of
//     floats), the recurrent product h_{t-1}·W_hhᵀ for the G gates of those units, then the gate
//     activations and the cell update on the accumulators while they are still in registers, and
//     h_t written straight into the layer's output sequence. No gate buffer, no allocation.
// The recurrent weights are packed once per weight tensor (packed_weights.h) into panels, one
// per block of S*V hidden units (S = 1; a plain RNN's S is in Note [RNN blocks]):
// panel[j][k][g][s][0..V) = W_hh[g*H + (j*S + s)*V + v, k], zero-padded past H, so each step
// streams the weights contiguously and reuses each loaded vector for every batch row in a
// group. At batch 1 a step is matrix-vector bound (DESIGN.md, CPU recurrent
// kernels): the weights' trip through the cache is the cost, so nothing else is read twice.
//
// Threads: the input projection and each time step are cut into slices of hidden-unit blocks
// that the calling thread and its helpers compute (Note [Recurrent schedule]); a block is computed
// by the same code whichever thread runs it, so the results do not depend on the thread count.
//
// Each instruction set (AVX-512, AVX2, portable) compiles the same code
// (recurrent_cpu_impl.h) with its own at::vec::Vectorized<float> in its own translation unit;
// `cpu_kernels()` picks the one ATen itself dispatches to (at::get_cpu_capability, which
// honours ATEN_CPU_CAPABILITY), so results do not depend on which ISA the build machine had.
#pragma once

#include <cstdint>

namespace chrion::recurrent {

enum class Cell { lstm, gru, rnn_tanh, rnn_relu };

/// Gates per hidden unit: 4 (i, f, g, o) for LSTM, 3 (r, z, n) for GRU, 1 for a plain RNN.
constexpr int64_t gate_count(Cell cell) {
  return cell == Cell::lstm ? 4 : cell == Cell::gru ? 3 : 1;
}

/// The input projection of one layer direction: gates[row] = x[row]·W_ihᵀ + biases, for every
/// input row (time step and batch entry) at once.
struct Projection {
  Cell cell;
  int64_t rows;      ///< T*B
  int64_t features;  ///< input features (columns of W_ih)
  int64_t hidden;    ///< H
  const float* x;    ///< [rows, features] contiguous
  const float* packed;  ///< W_ih packed by `pack` for this instruction set
  /// b_ih and b_hh [G*H], or null (no biases). GRU: b_hh's n part is left out (the time loop
  /// applies it inside r * (W_hn h + b_hn)).
  const float* bias_ih;
  const float* bias_hh;
  float* gates;  ///< [rows, G*H] out
};

/// One direction of one layer, time loop. Strides are in floats.
struct Steps {
  Cell cell;
  int64_t steps;   ///< T
  int64_t batch;   ///< B
  int64_t hidden;  ///< H
  /// input projection plus folded biases, G*H floats per (t, b), at t*gates_t + b*gates_b.
  /// LSTM / RNN: both biases. GRU: r and z both biases, n only b_in (b_hn is hidden_bias).
  const float* gates_x;
  int64_t gates_t, gates_b;
  const float* h0;           ///< [B, H] contiguous
  float* c;                  ///< LSTM: [B, H] contiguous, c0 in, c_T out (updated in place)
  float* out;                ///< h_t written at out + t*out_t + b*out_b (H floats)
  int64_t out_t, out_b;
  const float* packed;       ///< W_hh packed by `pack` for this instruction set, or null
  /// W_hh given as bfloat16, packed by `pack_pairs` (Note [bf16 recurrent weights]), or null
  const uint16_t* packed_pairs;
  const float* hidden_bias;  ///< GRU: b_hn [H] (inside r * (W_hn h + b_hn)), or null
  bool reverse;              ///< run t = T-1 .. 0
};

/// The kernels of one instruction set. Hidden units are computed in blocks of
/// `block_units(G)` units (one SIMD vector of floats; a plain RNN's, several: Note [RNN
/// blocks] in recurrent_cpu_impl.h); `project` and `step` take a range of blocks [first, end).
struct CpuKernels {
  const char* name;  ///< "AVX512", "AVX2" or "DEFAULT", as at::get_cpu_capability() names it
  /// hidden units per block of a cell with `gates` gates
  int64_t (*block_units)(int64_t gates);
  /// floats in the packed form of a [G*H, columns] weight
  int64_t (*packed_size)(int64_t gates, int64_t hidden, int64_t columns);
  /// pack a contiguous [G*H, columns] weight (W_ih or W_hh) into `packed`
  void (*pack)(const float* weight, int64_t gates, int64_t hidden, int64_t columns,
               float* packed);
  /// pack a contiguous bfloat16 [G*H, columns] W_hh into pairs of columns: packed_size(G, H,
  /// columns rounded up to even) bfloat16 values (Note [bf16 recurrent weights])
  void (*pack_pairs)(const uint16_t* weight, int64_t gates, int64_t hidden, int64_t columns,
                     uint16_t* packed);
  /// the input projection of the blocks [first, end) for every row
  void (*project)(const Projection& p, int64_t first, int64_t end);
  /// time step number `step` (0 = the first one run, t = T-1 when reverse) of the blocks
  /// [first, end) for every batch entry
  void (*step)(const Steps& s, int64_t step, int64_t first, int64_t end);
  /// whether bfloat16 W_hh is multiplied with vdpbf16ps (else widened to float32), Note [bf16
  /// dot products] in recurrent_cpu_impl.h
  bool (*bf16_dot)();
};

/// Kernels compiled for each instruction set; null where this build or compiler has none.
const CpuKernels* cpu_kernels_avx512();
const CpuKernels* cpu_kernels_avx2();
const CpuKernels* cpu_kernels_default();

/// The kernels for this CPU: the instruction set ATen dispatches its own kernels to.
const CpuKernels& cpu_kernels();

}  // namespace chrion::recurrent
