// chrion::lstm / gru / rnn: recurrent layers as single dispatcher operators.
//
// Why custom operators: make_fx and torch.export keep a custom op as one node, so a recurrent
// layer stays one schedulable, one-kernel node (aten.lstm would be recorded as the CPU-only
// mkldnn_rnn_layer on CPU, or unrolled by decompositions). The executor calls them without the
// GIL.
//
// Kernels: float32 on CPU runs chrion's own (Note [CPU recurrent kernel] in recurrent_cpu.h);
// every other device and dtype runs PyTorch's recurrent kernel through the
// CompositeExplicitAutograd registration (cuDNN on CUDA, oneDNN/native for CPU float64/bf16).
// Both check their arguments' sizes first (check_arguments), so a model fed the wrong number of
// features gets an error naming it, not NaNs.
//
// `reverse` runs one direction backwards in time (what one half of a bidirectional layer is once
// the layer is split by direction); it cannot be combined with `bidirectional`.

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <optional>
#include <string>
#include <tuple>

#include "packed_weights.h"
#include "recurrent_cpu.h"

namespace chrion {
namespace {

using recurrent::Cell;

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

std::tuple<at::Tensor, at::Tensor, at::Tensor> aten_lstm(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0, at::TensorList params,
    bool has_biases, int64_t num_layers, bool bidirectional, bool batch_first, bool reverse) {
  check_arguments(Cell::lstm, input, h0, &c0, params, has_biases, num_layers, bidirectional,
                  batch_first, reverse);
  auto [out, hn, cn] =
      at::lstm(maybe_flip(input, reverse, batch_first), {h0, c0}, params, has_biases,
               num_layers, /*dropout=*/0.0, /*train=*/false, bidirectional, batch_first);
  return {as_output(out, reverse, batch_first), hn, cn};
}

std::tuple<at::Tensor, at::Tensor> aten_gru(const at::Tensor& input, const at::Tensor& h0,
                                            at::TensorList params, bool has_biases,
                                            int64_t num_layers, bool bidirectional,
                                            bool batch_first, bool reverse) {
  check_arguments(Cell::gru, input, h0, nullptr, params, has_biases, num_layers, bidirectional,
                  batch_first, reverse);
  auto [out, hn] = at::gru(maybe_flip(input, reverse, batch_first), h0, params, has_biases,
                           num_layers, 0.0, false, bidirectional, batch_first);
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
  auto [out, hn] = cell == Cell::rnn_tanh
                       ? at::rnn_tanh(x, h0, params, has_biases, num_layers, 0.0, false,
                                      bidirectional, batch_first)
                       : at::rnn_relu(x, h0, params, has_biases, num_layers, 0.0, false,
                                      bidirectional, batch_first);
  return {as_output(out, reverse, batch_first), hn};
}

// ---- chrion's CPU kernels (float32) ----

bool runs_chrion_kernel(const at::Tensor& input, const at::Tensor& h0, const at::Tensor* c0,
                        at::TensorList params) {
  auto f32_cpu = [](const at::Tensor& t) {
    return t.scalar_type() == at::kFloat && t.device().is_cpu() && t.layout() == at::kStrided;
  };
  if (!f32_cpu(input) || !f32_cpu(h0) || (c0 != nullptr && !f32_cpu(*c0))) return false;
  for (const auto& p : params) {
    if (!f32_cpu(p)) return false;
  }
  return true;
}

struct LayerBiases {
  at::Tensor gates_x;  // folded into the input projection (undefined: no biases)
  at::Tensor hidden;   // GRU's b_hn, applied inside r * (W_hn h + b_hn) (undefined otherwise)
};

LayerBiases layer_biases(Cell cell, at::TensorList p, bool has_biases, int64_t hidden) {
  if (!has_biases) return {};
  const at::Tensor& b_ih = p[2];
  const at::Tensor& b_hh = p[3];
  if (cell != Cell::gru) return {b_ih + b_hh, {}};
  const int64_t rz = 2 * hidden;
  return {at::cat({b_ih.narrow(0, 0, rz) + b_hh.narrow(0, 0, rz), b_ih.narrow(0, rz, hidden)}),
          b_hh.narrow(0, rz, hidden).contiguous()};
}

// Threads of the calling thread's intra-op budget (a lane's cpu_threads; torch's threads in
// eager) that split each step's hidden units. A barrier per step costs about a microsecond, so a
// step of fewer than ~128K multiply-adds (under ~2 us on one core) stays on one thread.
int recurrent_threads(int64_t batch, int64_t gates, int64_t hidden) {
  constexpr int64_t kMinStepFmas = 128 * 1024;
  const int threads = at::get_num_threads();
  if (threads <= 1 || batch * gates * hidden * hidden < kMinStepFmas) return 1;
  return threads;
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
    const int step_threads = recurrent_threads(batch, gates, hidden);
    // row (t, b) of a [T*B, n] view of a sequence: time-major t*B + b, batch-first b*T + t
    const int64_t row_t = bf ? 1 : batch;
    const int64_t row_b = bf ? steps : 1;
    at::Tensor gates_x = at::empty({steps * batch, gates * hidden}, x.options());
    at::Tensor layer_buffers[2];
    at::Tensor layer_in = x.view({steps * batch, x.size(-1)});
    for (int64_t layer = 0; layer < num_layers; ++layer) {
      at::Tensor layer_out = out;
      if (layer + 1 < num_layers) {
        at::Tensor& buffer = layer_buffers[layer % 2];
        if (!buffer.defined()) buffer = at::empty(seq_shape, x.options());
        layer_out = buffer;
      }
      for (int64_t d = 0; d < dirs; ++d) {
        const int64_t index = layer * dirs + d;
        const at::TensorList p = params.slice(index * per_layer, per_layer);
        const LayerBiases biases = layer_biases(cell, p, has_biases, hidden);
        if (biases.gates_x.defined()) {
          at::addmm_out(gates_x, biases.gates_x, layer_in, p[0].t());
        } else {
          at::mm_out(gates_x, layer_in, p[0].t());
        }
        const at::Tensor packed = recurrent::packed_recurrent_weights(p[1], gates, kernels);
        recurrent::Steps s{};
        s.cell = cell;
        s.steps = steps;
        s.batch = batch;
        s.hidden = hidden;
        s.gates_x = gates_x.data_ptr<float>();
        s.gates_t = row_t * gates * hidden;
        s.gates_b = row_b * gates * hidden;
        s.h0 = h_init.data_ptr<float>() + index * batch * hidden;
        s.c = cn.defined() ? cn.data_ptr<float>() + index * batch * hidden : nullptr;
        s.out = layer_out.data_ptr<float>() + d * hidden;
        s.out_t = row_t * dirs * hidden;
        s.out_b = row_b * dirs * hidden;
        s.packed = packed.data_ptr<float>();
        s.hidden_bias = biases.hidden.defined() ? biases.hidden.data_ptr<float>() : nullptr;
        s.reverse = reverse || d == 1;
        s.threads = step_threads;
        kernels.run(s);
        const int64_t last = s.reverse ? 0 : steps - 1;
        hn[index].copy_(layer_out.select(bf ? 1 : 0, last).narrow(-1, d * hidden, hidden));
      }
      layer_in = layer_out.view({steps * batch, dirs * hidden});
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
  if (!runs_chrion_kernel(input, h0, &c0, params)) {
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
  if (!runs_chrion_kernel(input, h0, nullptr, params)) {
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
  if (!runs_chrion_kernel(input, h0, nullptr, params)) {
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
