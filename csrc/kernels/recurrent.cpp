// chrion::lstm / gru / rnn: recurrent layers as single dispatcher operators.
//
// Why custom operators: make_fx and torch.export keep a custom op as one node, so a recurrent
// layer stays one schedulable, one-kernel node (aten.lstm would be recorded as the CPU-only
// mkldnn_rnn_layer on CPU, or unrolled by decompositions). The executor calls them without the
// GIL.
//
// Kernels: float32 on CPU runs chrion's own (Note [CPU recurrent kernel] in recurrent_cpu.h),
// also with bfloat16 W_hh (recurrent_dtype="bfloat16", Note [bf16 recurrent weights] in
// recurrent_cpu_impl.h); every other device and dtype runs PyTorch's recurrent kernel through
// the CompositeExplicitAutograd registration (cuDNN on CUDA, oneDNN/native for CPU float64/bf16).
// Both check their arguments' sizes first (check_arguments), so a model fed the wrong number of
// features gets an error naming it, not NaNs.
//
// `reverse` runs one direction backwards in time (what one half of a bidirectional layer is once
// the layer is split by direction); it cannot be combined with `bidirectional`.

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "packed_weights.h"
#include "recurrent_cpu.h"
#include "recurrent_schedule.h"

namespace chrion {
namespace {

using recurrent::Cell;

at::Tensor pack_gate_weights(const at::Tensor& weight, int64_t gates,
                             const recurrent::CpuKernels& kernels) {
  const int64_t hidden = weight.size(0) / gates;
  const int64_t columns = weight.size(1);
  const at::Tensor w = weight.contiguous();
  if (w.scalar_type() == at::kBFloat16) {  // W_hh (Note [bf16 recurrent weights])
    at::Tensor pairs =
        at::empty({kernels.packed_size(gates, hidden, columns + columns % 2)}, w.options());
    kernels.pack_pairs(static_cast<const uint16_t*>(w.const_data_ptr()), gates, hidden, columns,
                       static_cast<uint16_t*>(pairs.data_ptr()));
    return pairs;
  }
  at::Tensor packed = at::empty({kernels.packed_size(gates, hidden, columns)}, w.options());
  kernels.pack(w.data_ptr<float>(), gates, hidden, columns, packed.data_ptr<float>());
  return packed;
}

// The packed form of a layer weight (W_ih [gates*H, features] or W_hh [gates*H, H], float32; a
// bfloat16 W_hh is packed in pairs of columns, Note [bf16 recurrent weights]) for `kernels`,
// packed once per weight (Note [Packed weights follow the model] in packed_weights.h).
at::Tensor packed_gate_weights(const at::Tensor& weight, int64_t gates,
                               const recurrent::CpuKernels& kernels) {
  return packed_weight(weight, PackingKey{&kernels, gates},
                       [&](const at::Tensor& w) { return pack_gate_weights(w, gates, kernels); });
}

const char* op_name(Cell cell) {
  return cell == Cell::lstm ? "lstm" : cell == Cell::gru ? "gru" : "rnn";
}

void check_direction(bool bidirectional, bool reverse, const char* op) {
  TORCH_CHECK_VALUE(!(bidirectional && reverse), "chrion::", op,
                    ": reverse=True needs bidirectional=False (split directions first)");
}

// The sizes every argument must have, from the weights: an input with the wrong feature count
// or a state of the wrong shape is an error naming the argument (issue #19: an LSTM fed 41
// features instead of 40 returned NaNs).
void check_arguments(Cell cell, const at::Tensor& input, const at::Tensor& h0,
                     const at::Tensor* c0, at::TensorList params, bool has_biases,
                     int64_t num_layers, bool bidirectional, bool batch_first, bool reverse) {
  const char* op = op_name(cell);
  check_direction(bidirectional, reverse, op);
  const int64_t gates = recurrent::gate_count(cell);
  const int64_t dirs = bidirectional ? 2 : 1;
  const int64_t per_layer = has_biases ? 4 : 2;
  TORCH_CHECK_VALUE(num_layers >= 1, "chrion::", op, ": num_layers must be >= 1, got ",
                    num_layers);
  TORCH_CHECK_VALUE(input.dim() == 2 || input.dim() == 3, "chrion::", op,
                    ": input must be 3-D (sequence, batch, features) or 2-D (unbatched), got ",
                    input.sizes());
  TORCH_CHECK_VALUE(static_cast<int64_t>(params.size()) == num_layers * dirs * per_layer,
                    "chrion::", op, ": expected ", num_layers * dirs * per_layer,
                    " weight tensors for num_layers=", num_layers,
                    ", bidirectional=", bidirectional, ", has_biases=", has_biases, ", got ",
                    params.size());
  const at::Tensor& w_hh0 = params[1];
  TORCH_CHECK_VALUE(w_hh0.dim() == 2 && w_hh0.size(0) == gates * w_hh0.size(1), "chrion::", op,
                    ": weight_hh_l0 must be [", gates, " * hidden, hidden], got ",
                    w_hh0.sizes());
  const int64_t hidden = w_hh0.size(1);
  const bool batched = input.dim() == 3;
  const int64_t batch = batched ? input.size(batch_first ? 0 : 1) : 1;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    const int64_t features = layer == 0 ? input.size(-1) : dirs * hidden;
    for (int64_t d = 0; d < dirs; ++d) {
      const std::string name = "_l" + std::to_string(layer) + (d == 1 ? "_reverse" : "");
      const at::TensorList p = params.slice((layer * dirs + d) * per_layer, per_layer);
      TORCH_CHECK_VALUE(p[0].dim() == 2 && p[0].size(0) == gates * hidden, "chrion::", op,
                        ": weight_ih", name, " must have ", gates * hidden, " rows, got ",
                        p[0].sizes());
      TORCH_CHECK_VALUE(p[0].size(1) == features, "chrion::", op, ": ",
                        layer == 0 ? "input has " : "layer input has ", features,
                        " features but weight_ih", name, " expects ", p[0].size(1), " (it is ",
                        p[0].sizes(), ")");
      TORCH_CHECK_VALUE(p[1].sizes() == w_hh0.sizes(), "chrion::", op, ": weight_hh", name,
                        " must be ", w_hh0.sizes(), ", got ", p[1].sizes());
      for (int64_t b = 2; b < per_layer; ++b) {
        TORCH_CHECK_VALUE(p[b].dim() == 1 && p[b].size(0) == gates * hidden, "chrion::", op,
                          ": bias_", b == 2 ? "ih" : "hh", name, " must be [", gates * hidden,
                          "], got ", p[b].sizes());
      }
    }
  }
  const std::vector<int64_t> state = batched
                                         ? std::vector<int64_t>{num_layers * dirs, batch, hidden}
                                         : std::vector<int64_t>{num_layers * dirs, hidden};
  TORCH_CHECK_VALUE(h0.sizes() == at::IntArrayRef(state), "chrion::", op, ": h0 must be ",
                    at::IntArrayRef(state), " (num_layers * directions, ",
                    batched ? "batch, " : "", "hidden), got ", h0.sizes());
  if (c0 != nullptr) {
    TORCH_CHECK_VALUE(c0->sizes() == at::IntArrayRef(state), "chrion::", op, ": c0 must be ",
                      at::IntArrayRef(state), ", got ", c0->sizes());
  }
}

// ---- PyTorch's kernels (every device; CPU dtypes other than float32) ----

int64_t time_dim(bool batch_first) { return batch_first ? 1 : 0; }

at::Tensor maybe_flip(const at::Tensor& t, bool reverse, bool batch_first) {
  return reverse ? t.flip({time_dim(batch_first)}) : t;
}

// PyTorch's batch_first output is a transposed time-major tensor; chrion's CPU kernel writes a
// contiguous one. Every device must return the same strides (the fake kernel's), or a view that
// a graph traced on one device records is invalid on another.
at::Tensor as_output(const at::Tensor& out, bool reverse, bool batch_first) {
  return maybe_flip(out, reverse, batch_first).contiguous();
}

// recurrent_dtype="bfloat16" hands W_hh over as bfloat16; PyTorch's kernels (a CUDA lane) take
// those weights widened to the input's floating dtype: the same rounded weights, products at the
// input's precision.
std::vector<at::Tensor> params_for(const at::Tensor& input, at::TensorList params) {
  std::vector<at::Tensor> out(params.begin(), params.end());
  for (auto& p : out) {
    if (p.scalar_type() == at::kBFloat16 && input.is_floating_point()) {
      p = p.to(input.scalar_type());
    }
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> aten_lstm(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0, at::TensorList params,
    bool has_biases, int64_t num_layers, bool bidirectional, bool batch_first, bool reverse) {
  check_arguments(Cell::lstm, input, h0, &c0, params, has_biases, num_layers, bidirectional,
                  batch_first, reverse);
  auto [out, hn, cn] =
      at::lstm(maybe_flip(input, reverse, batch_first), {h0, c0}, params_for(input, params),
               has_biases, num_layers, /*dropout=*/0.0, /*train=*/false, bidirectional,
               batch_first);
  return {as_output(out, reverse, batch_first), hn, cn};
}

std::tuple<at::Tensor, at::Tensor> aten_gru(const at::Tensor& input, const at::Tensor& h0,
                                            at::TensorList params, bool has_biases,
                                            int64_t num_layers, bool bidirectional,
                                            bool batch_first, bool reverse) {
  check_arguments(Cell::gru, input, h0, nullptr, params, has_biases, num_layers, bidirectional,
                  batch_first, reverse);
  auto [out, hn] = at::gru(maybe_flip(input, reverse, batch_first), h0, params_for(input, params),
                           has_biases, num_layers, 0.0, false, bidirectional, batch_first);
  return {as_output(out, reverse, batch_first), hn};
}

Cell rnn_cell(c10::string_view nonlinearity) {
  TORCH_CHECK_VALUE(nonlinearity == "tanh" || nonlinearity == "relu",
                    "chrion::rnn: nonlinearity must be 'tanh' or 'relu', got '", nonlinearity, "'");
  return nonlinearity == "tanh" ? Cell::rnn_tanh : Cell::rnn_relu;
}

std::tuple<at::Tensor, at::Tensor> aten_rnn(const at::Tensor& input, const at::Tensor& h0,
                                            at::TensorList params, bool has_biases,
                                            int64_t num_layers, bool bidirectional,
                                            bool batch_first, bool reverse,
                                            c10::string_view nonlinearity) {
  const Cell cell = rnn_cell(nonlinearity);
  check_arguments(cell, input, h0, nullptr, params, has_biases, num_layers, bidirectional,
                  batch_first, reverse);
  auto x = maybe_flip(input, reverse, batch_first);
  const std::vector<at::Tensor> p = params_for(input, params);
  auto [out, hn] = cell == Cell::rnn_tanh
                       ? at::rnn_tanh(x, h0, p, has_biases, num_layers, 0.0, false,
                                      bidirectional, batch_first)
                       : at::rnn_relu(x, h0, p, has_biases, num_layers, 0.0, false,
                                      bidirectional, batch_first);
  return {as_output(out, reverse, batch_first), hn};
}

// ---- chrion's CPU kernels (float32, W_hh float32 or bfloat16) ----

bool runs_chrion_kernel(const at::Tensor& input, const at::Tensor& h0, const at::Tensor* c0,
                        at::TensorList params, bool has_biases) {
  auto cpu_of = [](const at::Tensor& t, bool bf16_too) {
    const bool dtype = t.scalar_type() == at::kFloat ||
                       (bf16_too && t.scalar_type() == at::kBFloat16);
    return dtype && t.device().is_cpu() && t.layout() == at::kStrided;
  };
  if (!cpu_of(input, false) || !cpu_of(h0, false) || (c0 != nullptr && !cpu_of(*c0, false))) {
    return false;
  }
  const size_t per_layer = has_biases ? 4 : 2;
  for (size_t i = 0; i < params.size(); ++i) {
    if (!cpu_of(params[i], /*bf16_too=*/i % per_layer == 1)) return false;
  }
  return true;
}

// Threads of the calling thread's intra-op budget (a lane's cpu_threads, raised by the executor
// for a "wide" step; torch's threads in eager) that share the layer. A time step is split into
// slices of at least ~32K multiply-adds (about a microsecond on one core, against a few hundred
// nanoseconds for the per-step synchronisation between cores), at most one per block of hidden
// units; a bidirectional layer doubles that by splitting directions, which needs no per-step
// synchronisation, once a direction's time loop has ~1M multiply-adds. More threads than that
// would only spin.
int recurrent_threads(int64_t steps, int64_t batch, int64_t gates, int64_t hidden, int64_t dirs,
                      int64_t blocks) {
  constexpr int64_t kMinSliceFmas = 32 * 1024;
  constexpr int64_t kMinDirectionFmas = 1024 * 1024;
  const int threads = at::get_num_threads();
  if (threads <= 1) return 1;
  const int64_t step_fmas = batch * gates * hidden * hidden;
  int64_t useful = std::clamp<int64_t>(step_fmas / kMinSliceFmas, 1, blocks);
  if (dirs == 2 && steps * step_fmas >= kMinDirectionFmas) useful *= 2;
  return static_cast<int>(std::min<int64_t>(threads, useful));
}

// A layer's chains are balanced (Note [Two-ended slices] in recurrent_schedule.cpp) from this
// batch on, where a step uses each weight for enough rows that a block whose weights come from
// another core's cache costs little; or where each direction has one thread (a bidirectional
// layer on two), since a thread then takes blocks only of the other's direction, once its own
// is done.
constexpr int64_t kBalancedBatch = 4;

// Note [Batch parts]
// A one-direction layer on two or more threads is cut by batch rows rather than hidden units
// once each thread gets a whole group of rows (CpuKernels::step_rows): each part of the batch is
// a chain of its own, so a thread runs its part from the first step to the last and no step
// waits for another core. Cut by hidden units, both threads meet at every step, and a core that
// another process slows sets both threads' pace: with a busy process beside them on the two
// cores here, parts took 0.55-0.8x the time of the cut by units (op level, alternating
// processes: LSTM 3x128 batch 32, LSTM 2x256 batch 8 and 32, GRU 512 batch 32, LSTM 512 batch
// 16, RNN 2x256 batch 16); on quiet cores they tie where W_hh fits a core's L2 and parts take
// 1.03x where it does not (LSTM 512 and GRU 1024 at batch 8: a part streams all of W_hh from L3
// at every step, not its share). Parts are cut at multiples of a group, so every row is computed
// as in the whole batch and the results do not depend on the thread count.
std::vector<int64_t> batch_parts(int64_t batch, int64_t dirs, int threads, int64_t group) {
  const int64_t groups = (batch + group - 1) / group;
  const int64_t parts = dirs == 1 ? std::clamp<int64_t>(groups, 1, threads) : 1;
  std::vector<int64_t> first_row(parts + 1);
  for (int64_t k = 0; k <= parts; ++k) {
    first_row[k] = std::min(batch, group * (groups * k / parts));
  }
  return first_row;
}

// One chain of one layer (a direction, or a part of the batch): what its projection and time loop
// read and write. The chains of the schedule point here, so it stays put (and its tensors alive)
// until the call ends.
struct ChainWork {
  const recurrent::CpuKernels* kernels;
  recurrent::Projection projection;
  recurrent::Steps steps;
  at::Tensor packed_ih, packed_hh, bias_ih, bias_hh;
};

// Stage `step` of a layer's chain: the input projection of the blocks' next chunk of
// steps when one starts here (Note [CPU recurrent kernel]), then the step.
void run_stage(const void* work, int64_t step, int64_t first, int64_t end) {
  const auto& w = *static_cast<const ChainWork*>(work);
  if (step % w.steps.chunk == 0) w.kernels->project(w.projection, step, first, end);
  w.kernels->step(w.steps, step, first, end);
}

// The calling thread's scratch memory for a call's gate projections and inner layers' outputs,
// kept from call to call: a fresh buffer of a few hundred kilobytes or more is fresh pages from
// the kernel every call (mmap, then a zeroing page fault per 4 KiB: ~10% of a call measured).
// A thread holds the largest it has needed; nothing returned to the caller lives in it.
float* thread_scratch(int64_t floats) {
  thread_local at::Tensor buffer;
  if (!buffer.defined() || buffer.numel() < floats) {
    buffer = at::Tensor();  // free the old one first
    buffer = at::empty({floats}, at::TensorOptions().dtype(at::kFloat));
  }
  return buffer.data_ptr<float>();
}

const float* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<float>() : nullptr;
}

// Returns (output, h_n, c_n); c_n is undefined for GRU / RNN.
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_cpu(Cell cell, const at::Tensor& input,
                                                       const at::Tensor& h0,
                                                       const at::Tensor* c0,
                                                       at::TensorList params, bool has_biases,
                                                       int64_t num_layers, bool bidirectional,
                                                       bool batch_first, bool reverse) {
  const recurrent::CpuKernels& kernels = recurrent::cpu_kernels();
  const bool batched = input.dim() == 3;
  const bool bf = batched && batch_first;
  const at::Tensor x = (batched ? input : input.unsqueeze(1)).contiguous();
  const int64_t steps = x.size(bf ? 1 : 0);
  const int64_t batch = x.size(bf ? 0 : 1);
  const int64_t gates = recurrent::gate_count(cell);
  const int64_t hidden = params[1].size(1);
  const int64_t dirs = bidirectional ? 2 : 1;
  const int64_t per_layer = has_biases ? 4 : 2;
  const at::Tensor h_init = (batched ? h0 : h0.unsqueeze(1)).contiguous();

  const auto seq_shape = bf ? std::vector<int64_t>{batch, steps, dirs * hidden}
                            : std::vector<int64_t>{steps, batch, dirs * hidden};
  at::Tensor out = at::empty(seq_shape, x.options());
  at::Tensor hn = at::empty({num_layers * dirs, batch, hidden}, x.options());
  at::Tensor cn;
  if (c0 != nullptr) cn = (batched ? *c0 : c0->unsqueeze(1)).contiguous().clone();

  if (steps > 0 && batch > 0) {
    const int64_t rows = steps * batch;
    // row (t, b) of a [T*B, n] view of a sequence: time-major t*B + b, batch-first b*T + t
    const int64_t row_t = bf ? 1 : batch;
    const int64_t row_b = bf ? steps : 1;
    const int64_t block = kernels.block_units(gates);
    const int64_t blocks = (hidden + block - 1) / block;
    const int threads = recurrent_threads(steps, batch, gates, hidden, dirs, blocks);
    // the first row of each part of the batch, and its end (Note [Batch parts])
    const std::vector<int64_t> first_row =
        batch_parts(batch, dirs, threads, kernels.step_rows(gates));
    const int64_t parts = static_cast<int64_t>(first_row.size()) - 1;
    // the batch rows of chain k of a layer (its part's; every row for a direction)
    const auto rows_of = [&](int64_t k) { return first_row[k / dirs + 1] - first_row[k / dirs]; };
    const bool balanced = batch >= kBalancedBatch || threads <= dirs * parts;
    // a chain per direction, or per part of the batch (one of them is 1)
    const int64_t layer_chains = dirs * parts;
    // scratch: the gate projections of each chain's chunk, then each inner layer's output (its
    // own, so that h_n can be read off it after the call)
    std::vector<int64_t> chunk(layer_chains), gates_at(layer_chains + 1, 0);
    for (int64_t k = 0; k < layer_chains; ++k) {
      const int64_t rows_k = rows_of(k);
      chunk[k] = std::clamp<int64_t>((recurrent::kChunkRows + rows_k - 1) / rows_k, 1, steps);
      gates_at[k + 1] = gates_at[k] + chunk[k] * rows_k * gates * hidden;
    }
    const int64_t seq_floats = rows * dirs * hidden;
    float* scratch = thread_scratch(gates_at[layer_chains] + (num_layers - 1) * seq_floats);
    std::vector<at::Tensor> layer_out(num_layers);
    std::vector<ChainWork> work(num_layers * layer_chains);
    std::vector<recurrent::Chain> chains;
    chains.reserve(num_layers * layer_chains);
    for (int64_t layer = 0; layer < num_layers; ++layer) {
      layer_out[layer] =
          layer + 1 < num_layers
              ? at::from_blob(scratch + gates_at[layer_chains] + layer * seq_floats, seq_shape,
                              x.options())
              : out;
      const at::Tensor& layer_in = layer == 0 ? x : layer_out[layer - 1];
      const int first_chain = static_cast<int>(chains.size());
      for (int64_t k = 0; k < layer_chains; ++k) {
        const int64_t d = k % dirs;
        const int64_t b0 = first_row[k / dirs];
        const int64_t rows_k = rows_of(k);
        const int64_t index = layer * dirs + d;
        const at::TensorList p = params.slice(index * per_layer, per_layer);
        ChainWork& w = work[layer * layer_chains + k];
        w.kernels = &kernels;
        if (k < dirs) {
          w.packed_ih = packed_gate_weights(p[0], gates, kernels);
          w.packed_hh = packed_gate_weights(p[1], gates, kernels);
          if (has_biases) {
            w.bias_ih = p[2].contiguous();
            w.bias_hh = p[3].contiguous();
          }
        } else {  // a later part of the batch: its direction's weights, packed once per call
          const ChainWork& first = work[layer * layer_chains + d];
          w.packed_ih = first.packed_ih;
          w.packed_hh = first.packed_hh;
          w.bias_ih = first.bias_ih;
          w.bias_hh = first.bias_hh;
        }
        float* gx = scratch + gates_at[k];
        const int64_t features = layer_in.size(-1);
        const bool backward = reverse || d == 1;
        w.projection = recurrent::Projection{cell,
                                             steps,
                                             rows_k,
                                             chunk[k],
                                             features,
                                             hidden,
                                             layer_in.data_ptr<float>() + b0 * row_b * features,
                                             row_t * features,
                                             row_b * features,
                                             backward,
                                             w.packed_ih.data_ptr<float>(),
                                             data_or_null(w.bias_ih),
                                             data_or_null(w.bias_hh),
                                             gx};
        recurrent::Steps& s = w.steps;
        s.cell = cell;
        s.steps = steps;
        s.batch = rows_k;
        s.hidden = hidden;
        s.gates_x = gx;
        s.chunk = chunk[k];
        s.h0 = h_init.data_ptr<float>() + (index * batch + b0) * hidden;
        s.c = cn.defined() ? cn.data_ptr<float>() + (index * batch + b0) * hidden : nullptr;
        s.out_t = row_t * dirs * hidden;
        s.out_b = row_b * dirs * hidden;
        s.out = layer_out[layer].data_ptr<float>() + d * hidden + b0 * s.out_b;
        const bool pairs = w.packed_hh.scalar_type() == at::kBFloat16;
        s.packed = pairs ? nullptr : w.packed_hh.data_ptr<float>();
        s.packed_pairs =
            pairs ? static_cast<const uint16_t*>(w.packed_hh.const_data_ptr()) : nullptr;
        // GRU: b_hn, applied inside r * (W_hn h + b_hn)
        s.hidden_bias = cell == Cell::gru && has_biases ? data_or_null(w.bias_hh) + 2 * hidden
                                                        : nullptr;
        s.reverse = backward;

        recurrent::Chain loop;
        loop.stages = steps;
        loop.blocks = blocks;
        loop.home = static_cast<int>(k);
        if (layer > 0) {  // after both directions of the layer below, or its same part
          loop.after[0] = first_chain - static_cast<int>(layer_chains) + (dirs == 2 ? 0 : k);
          loop.after[1] = dirs == 2 ? first_chain - 1 : -1;
        }
        loop.balanced = balanced;
        loop.run = &run_stage;
        loop.context = &w;
        chains.push_back(loop);
      }
    }
    recurrent::run_chains(chains, threads, static_cast<int>(layer_chains));
    for (int64_t layer = 0; layer < num_layers; ++layer) {
      for (int64_t d = 0; d < dirs; ++d) {
        const int64_t last = reverse || d == 1 ? 0 : steps - 1;
        hn[layer * dirs + d].copy_(
            layer_out[layer].select(bf ? 1 : 0, last).narrow(-1, d * hidden, hidden));
      }
    }
  } else {
    hn.copy_(h_init);
  }
  if (!batched) {
    return {out.squeeze(1), hn.squeeze(1), cn.defined() ? cn.squeeze(1) : cn};
  }
  return {out, hn, cn};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cpu_lstm(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0, at::TensorList params,
    bool has_biases, int64_t num_layers, bool bidirectional, bool batch_first, bool reverse) {
  if (!runs_chrion_kernel(input, h0, &c0, params, has_biases)) {
    return aten_lstm(input, h0, c0, params, has_biases, num_layers, bidirectional, batch_first,
                     reverse);
  }
  check_arguments(Cell::lstm, input, h0, &c0, params, has_biases, num_layers, bidirectional,
                  batch_first, reverse);
  return run_cpu(Cell::lstm, input, h0, &c0, params, has_biases, num_layers, bidirectional,
                 batch_first, reverse);
}

std::tuple<at::Tensor, at::Tensor> cpu_gru(const at::Tensor& input, const at::Tensor& h0,
                                           at::TensorList params, bool has_biases,
                                           int64_t num_layers, bool bidirectional,
                                           bool batch_first, bool reverse) {
  if (!runs_chrion_kernel(input, h0, nullptr, params, has_biases)) {
    return aten_gru(input, h0, params, has_biases, num_layers, bidirectional, batch_first,
                    reverse);
  }
  check_arguments(Cell::gru, input, h0, nullptr, params, has_biases, num_layers, bidirectional,
                  batch_first, reverse);
  auto [out, hn, cn] = run_cpu(Cell::gru, input, h0, nullptr, params, has_biases, num_layers,
                               bidirectional, batch_first, reverse);
  return {out, hn};
}

std::tuple<at::Tensor, at::Tensor> cpu_rnn(const at::Tensor& input, const at::Tensor& h0,
                                           at::TensorList params, bool has_biases,
                                           int64_t num_layers, bool bidirectional,
                                           bool batch_first, bool reverse,
                                           c10::string_view nonlinearity) {
  if (!runs_chrion_kernel(input, h0, nullptr, params, has_biases)) {
    return aten_rnn(input, h0, params, has_biases, num_layers, bidirectional, batch_first,
                    reverse, nonlinearity);
  }
  const Cell cell = rnn_cell(nonlinearity);
  check_arguments(cell, input, h0, nullptr, params, has_biases, num_layers, bidirectional,
                  batch_first, reverse);
  auto [out, hn, cn] = run_cpu(cell, input, h0, nullptr, params, has_biases, num_layers,
                               bidirectional, batch_first, reverse);
  return {out, hn};
}

}  // namespace

namespace recurrent {

const CpuKernels& cpu_kernels() {
  static const CpuKernels* chosen = [] {
    const std::string capability = at::get_cpu_capability();
    const CpuKernels* avx512 = cpu_kernels_avx512();
    const CpuKernels* avx2 = cpu_kernels_avx2();
    if (capability == "AVX512" && avx512 != nullptr) return avx512;
    if ((capability == "AVX512" || capability == "AVX2") && avx2 != nullptr) return avx2;
    return cpu_kernels_default();
  }();
  return *chosen;
}

}  // namespace recurrent

TORCH_LIBRARY(chrion, m) {
  m.def(
      "lstm(Tensor input, Tensor h0, Tensor c0, Tensor[] params, bool has_biases, int num_layers, "
      "bool bidirectional, bool batch_first, bool reverse) -> (Tensor, Tensor, Tensor)");
  m.def(
      "gru(Tensor input, Tensor h0, Tensor[] params, bool has_biases, int num_layers, "
      "bool bidirectional, bool batch_first, bool reverse) -> (Tensor, Tensor)");
  m.def(
      "rnn(Tensor input, Tensor h0, Tensor[] params, bool has_biases, int num_layers, "
      "bool bidirectional, bool batch_first, bool reverse, str nonlinearity) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(chrion, CompositeExplicitAutograd, m) {
  m.impl("lstm", aten_lstm);
  m.impl("gru", aten_gru);
  m.impl("rnn", aten_rnn);
}

TORCH_LIBRARY_IMPL(chrion, CPU, m) {
  m.impl("lstm", cpu_lstm);
  m.impl("gru", cpu_gru);
  m.impl("rnn", cpu_rnn);
}

}  // namespace chrion
