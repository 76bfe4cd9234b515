// chrion::lstm / gru / rnn: recurrent layers as single dispatcher operators.
//
// Why custom operators: make_fx and torch.export keep a custom op as one node, so a recurrent
// layer stays one schedulable, one-kernel node (aten.lstm would be recorded as the CPU-only
// mkldnn_rnn_layer on CPU, or unrolled by decompositions). The kernels are registered for
// CompositeExplicitAutograd, so each device runs PyTorch's own recurrent kernel for it (cuDNN on
// CUDA, oneDNN/native on CPU), and the executor calls them without the GIL.
//
// `reverse` runs one direction backwards in time (what one half of a bidirectional layer is once
// the layer is split by direction); it cannot be combined with `bidirectional`.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

namespace chrion {
namespace {

int64_t time_dim(bool batch_first) { return batch_first ? 1 : 0; }

at::Tensor maybe_flip(const at::Tensor& t, bool reverse, bool batch_first) {
  return reverse ? t.flip({time_dim(batch_first)}) : t;
}

void check_direction(bool bidirectional, bool reverse, const char* op) {
  TORCH_CHECK_VALUE(!(bidirectional && reverse), "chrion::", op,
                    ": reverse=True needs bidirectional=False (split directions first)");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0, at::TensorList params,
    bool has_biases, int64_t num_layers, bool bidirectional, bool batch_first, bool reverse) {
  check_direction(bidirectional, reverse, "lstm");
  auto [out, hn, cn] =
      at::lstm(maybe_flip(input, reverse, batch_first), {h0, c0}, params, has_biases,
               num_layers, /*dropout=*/0.0, /*train=*/false, bidirectional, batch_first);
  return {maybe_flip(out, reverse, batch_first), hn, cn};
}

std::tuple<at::Tensor, at::Tensor> gru(const at::Tensor& input, const at::Tensor& h0,
                                       at::TensorList params, bool has_biases, int64_t num_layers,
                                       bool bidirectional, bool batch_first, bool reverse) {
  check_direction(bidirectional, reverse, "gru");
  auto [out, hn] = at::gru(maybe_flip(input, reverse, batch_first), h0, params, has_biases,
                           num_layers, 0.0, false, bidirectional, batch_first);
  return {maybe_flip(out, reverse, batch_first), hn};
}

std::tuple<at::Tensor, at::Tensor> rnn(const at::Tensor& input, const at::Tensor& h0,
                                       at::TensorList params, bool has_biases, int64_t num_layers,
                                       bool bidirectional, bool batch_first, bool reverse,
                                       c10::string_view nonlinearity) {
  check_direction(bidirectional, reverse, "rnn");
  TORCH_CHECK_VALUE(nonlinearity == "tanh" || nonlinearity == "relu",
                    "chrion::rnn: nonlinearity must be 'tanh' or 'relu', got '", nonlinearity, "'");
  auto x = maybe_flip(input, reverse, batch_first);
  auto [out, hn] = nonlinearity == "tanh"
                       ? at::rnn_tanh(x, h0, params, has_biases, num_layers, 0.0, false,
                                      bidirectional, batch_first)
                       : at::rnn_relu(x, h0, params, has_biases, num_layers, 0.0, false,
                                      bidirectional, batch_first);
  return {maybe_flip(out, reverse, batch_first), hn};
}

}  // namespace

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
  m.impl("lstm", lstm);
  m.impl("gru", gru);
  m.impl("rnn", rnn);
}

}  // namespace chrion
