// CPU kernels of chrion::lstm / gru / rnn: the per-instruction-set part.
//
// Note [CPU recurrent kernel]
// A layer direction runs in chunks of time steps (recurrent.cpp drives them). At a chunk's first
// step, for the block of hidden units being computed:
//  1. the input projection of the chunk's steps, X·W_ihᵀ + biases, as one GEMM over its rows
//     (about 48: steps x batch), against W_ih packed in the same panels as W_hh (below),
//     register-blocked over 4 or more input rows, with the biases folded in;
// then at every step:
//  2. the time loop, here: per block of V hidden units (V = one SIMD vector of floats), the
//     recurrent product h_{t-1}·W_hhᵀ for the G gates of those units, then the gate
//     activations and the cell update on the accumulators while they are still in registers, and
//     h_t written straight into the layer's output sequence. No allocation.
// Chunks rather than the whole sequence at once: the chunk's gates are still in L2 when its
// steps read them, and a GEMM of a few dozen rows runs at 100+ GF/s on one core here where one
// of 4,096 rows ran at 86 (its gates, 8 MiB, went out to L3 and came back for the time loop).
// Measured on LSTM 3x128, batch 32, 128 steps (the projection half of the FLOPs), together with
// the rational tanh of Note [Gate activations] (-5% alone): 37.5 -> 30.9 ms on one thread, 22.1
// -> 19.0 on two; bidirectional GRU 512 at batch 32 -6%; batch 1, where a chunk is the 48
// steps it was, unchanged. Every row still goes through one GEMM pass of a chunk, never a
// product per step, and the gate buffer is a chunk long, not T.
// The recurrent weights are packed once per weight tensor (packed_weights.h) into panels, one
// per block of S*V hidden units (S = 1; a plain RNN's S is in Note [RNN blocks]):
// panel[j][k][g][s][0..V) = W_hh[g*H + (j*S + s)*V + v, k], zero-padded past H, so each step
// streams the weights contiguously and reuses each loaded vector for every batch row in a
// group. At batch 1 a step is matrix-vector bound (DESIGN.md, CPU recurrent
// kernels): the weights' trip through the cache is the cost, so nothing else is read twice.
//
// Threads: each time step (with its chunk's projection) is cut into slices of hidden-unit blocks
// that the calling thread and its helpers compute (Note [Recurrent schedule]), or a batch into
// parts that each run alone (Note [Batch parts] in recurrent.cpp); a block is computed by the same
// code whichever thread runs it, and a row by the same arithmetic in any part, so the results do
// not depend on the thread count.
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

/// Input rows (steps x batch) that share one pass over a W_ih panel: a chunk of a layer's
/// projection is ceil(kChunkRows / batch) steps (at least one), and the projection of a chunk
/// holding more rows (a batch above this) passes each panel once per kChunkRows of them. The
/// rows' inputs stay in L1/L2 while every block of the slice passes, and their gates in L2 until
/// the time loop reads them.
constexpr int64_t kChunkRows = 48;

/// The input projection of one layer direction, one chunk of time steps at a time (Note [CPU
/// recurrent kernel]): for the chunk's k-th step (t = its time) and batch entry b, row k*B + b
/// of `gates` is x(t, b)·W_ihᵀ + biases.
struct Projection {
  Cell cell;
  int64_t steps;     ///< T
  int64_t batch;     ///< B
  int64_t chunk;     ///< steps per chunk (Steps::chunk)
  int64_t features;  ///< input features (columns of W_ih)
  int64_t hidden;    ///< H
  const float* x;    ///< x(t, b): `features` contiguous floats at x + t*x_t + b*x_b
  int64_t x_t, x_b;
  bool reverse;         ///< step k is t = T-1-k
  const float* packed;  ///< W_ih packed by `pack` for this instruction set
  /// b_ih and b_hh [G*H], or null (no biases; b_hh alone null: one bias, as chrion::dense
  /// passes). GRU: b_hh's n part is left out (the time loop applies it inside
  /// r * (W_hn h + b_hn)).
  const float* bias_ih;
  const float* bias_hh;
  float* gates;  ///< [chunk*B, G*H] out
};

/// One direction of one layer, time loop. Strides are in floats.
struct Steps {
  Cell cell;
  int64_t steps;   ///< T
  int64_t batch;   ///< B
  int64_t hidden;  ///< H
  /// the input projection of step `step`'s chunk (Projection::gates) plus folded biases, G*H
  /// floats per batch entry b, at ((step % chunk)*B + b)*G*H. LSTM / RNN: both biases. GRU: r
  /// and z both biases, n only b_in (b_hn is hidden_bias).
  const float* gates_x;
  int64_t chunk;
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
  /// batch rows of a cell with `gates` gates that share one pass over a block's W_hh panel in
  /// `step`, which groups the batch so from its first row (the rest in one group): a part of
  /// the batch cut at multiples of it groups its rows as the whole batch does, so computes them
  /// alike
  int64_t (*step_rows)(int64_t gates);
  /// floats in the packed form of a [G*H, columns] weight
  int64_t (*packed_size)(int64_t gates, int64_t hidden, int64_t columns);
  /// pack a contiguous [G*H, columns] weight (W_ih or W_hh) into `packed`
  void (*pack)(const float* weight, int64_t gates, int64_t hidden, int64_t columns,
               float* packed);
  /// pack a contiguous bfloat16 [G*H, columns] W_hh into pairs of columns: packed_size(G, H,
  /// columns rounded up to even) bfloat16 values (Note [bf16 recurrent weights])
  void (*pack_pairs)(const uint16_t* weight, int64_t gates, int64_t hidden, int64_t columns,
                     uint16_t* packed);
  /// the input projection of the blocks [first, end) for every row of the chunk of steps that
  /// starts at `first_step` (a multiple of the chunk)
  void (*project)(const Projection& p, int64_t first_step, int64_t first, int64_t end);
  /// time step number `step` (0 = the first one run, t = T-1 when reverse) of the blocks
  /// [first, end) for every batch entry
  void (*step)(const Steps& s, int64_t step, int64_t first, int64_t end);
  /// whether bfloat16 W_hh is multiplied with vdpbf16ps (else widened to float32), Note [bf16
  /// dot products] in recurrent_cpu_impl.h
  bool (*bf16_dot)();
  /// softmax (log_softmax where `log`) of the rows [first, end) of `in`, each `columns`
  /// contiguous floats, into the same rows of `out` (Note [Softmax rows] in
  /// softmax_cpu_impl.h)
  void (*softmax_rows)(const float* in, float* out, int64_t columns, int64_t first, int64_t end,
                       bool log);
};

/// Kernels compiled for each instruction set; null where this build or compiler has none.
const CpuKernels* cpu_kernels_avx512();
const CpuKernels* cpu_kernels_avx2();
const CpuKernels* cpu_kernels_default();

/// The kernels for this CPU: the instruction set ATen dispatches its own kernels to.
const CpuKernels& cpu_kernels();

}  // namespace chrion::recurrent
