// chrion::dense: `input [..., K] @ weight [K, N] (+ bias [N])`, the product of an activation and
// a constant weight (graph/passes/dense_products.py makes these from aten.mm / addmm nodes).
//
// Note [CPU dense products]
// ATen multiplies float32 matrices on the CPU with MKL, which on the AMD EPYC (Zen 4) benchmark
// VM runs its generic code ("def" kernels): a 1x512x500 product (a decoder step's output
// layer) took 23 us where streaming its 1 MB weight takes about 10. So on CPU the product runs
// the recurrent kernels' input projection (Note [CPU recurrent kernel] in recurrent_cpu.h): the
// weight packed once into panels of one-gate blocks (cached per weight tensor and following
// in-place writes, Note [Packed weights follow the model] in packed_weights.h), each panel
// streamed once per chunk of up to 48 input rows, the bias added on the way out.
// bench/dense.py, two threads, MxKxN, microseconds, addmm / oneDNN against a once-reordered
// weight (what this kernel ran before for large products) / panels: 1x512x500 23 / 27 / 11;
// 8x512x500 69 / 57 / 30; 1x1024x1024 87 / 52 / 30; 64x1024x1024 872 / 614 / 613;
// 128x512x10000 (a vocabulary projection) 9891 / 6633 / 6822 (onnxruntime 6783); scratch runs
// on one thread: 1x512x10000 1675 / 651 / 345, 256x512x10000 29166 / 23748 / 25936 (oneDNN's
// one clear win, 9%). Tiles (a chunk of rows times a block of outputs) are shared out over the
// threads by work, so a narrow weight of many rows uses every thread too; a tile is computed
// alike by any thread, so results do not depend on the thread count. They differ from ATen's
// by rounding only (each sum in another order). An inference-tensor weight (no version counter
// to key the cache on) would be packed on every call, so it stays with ATen, as does every
// other device and dtype (cuBLAS on CUDA).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "callers_team.h"
#include "packed_weights.h"
#include "recurrent_cpu.h"

namespace chrion {
namespace {

using recurrent::CpuKernels;

void check_arguments(const at::Tensor& input, const at::Tensor& weight,
                     const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(weight.dim() == 2, "chrion::dense: weight must be [in_features, ",
                    "out_features], got shape ", weight.sizes());
  TORCH_CHECK_VALUE(input.dim() >= 1 && input.size(-1) == weight.size(0),
                    "chrion::dense: input of shape ", input.sizes(), " has ",
                    input.dim() >= 1 ? input.size(-1) : 0, " features, the weight takes ",
                    weight.size(0));
  TORCH_CHECK_VALUE(!bias || (bias->dim() == 1 && bias->size(0) == weight.size(1)),
                    "chrion::dense: bias must be [", weight.size(1), "], got shape ",
                    bias ? bias->sizes() : at::IntArrayRef{});
}

std::vector<int64_t> output_shape(const at::Tensor& input, const at::Tensor& weight) {
  std::vector<int64_t> shape = input.sizes().vec();
  shape.back() = weight.size(1);
  return shape;
}

// `input` [..., K] as a matrix [rows, K]; not reshape({-1, K}), which cannot infer the rows of
// an empty input (K = 0)
at::Tensor as_rows(const at::Tensor& input) {
  const int64_t rows = c10::multiply_integers(input.sizes().begin(), input.sizes().end() - 1);
  return input.reshape({rows, input.size(-1)});
}

// ATen's product (arguments checked)
at::Tensor aten_product(const at::Tensor& input, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias) {
  const at::Tensor rows = as_rows(input);
  const at::Tensor out = bias ? at::addmm(*bias, rows, weight) : at::mm(rows, weight);
  return out.view(output_shape(input, weight));
}

at::Tensor aten_dense(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias) {
  check_arguments(input, weight, bias);
  return aten_product(input, weight, bias);
}

bool panels_take(const at::Tensor& input, const at::Tensor& weight,
                 const std::optional<at::Tensor>& bias) {
  // no features: the product is empty sums (the bias, or zeros), ATen's
  if (!packable_float32(input, weight, bias) || weight.size(0) == 0) return false;
  // Panels pad the outputs to whole blocks (64 floats with AVX-512): 96 outputs compute 128.
  // Beyond one chunk of rows that work shows (1024x1024x96: 1327 us, addmm 1093); within one,
  // streaming the weight is the cost and panels still win (8x1024x96: 15 us, addmm 38).
  const int64_t units = recurrent::cpu_kernels().block_units(1);
  const int64_t outputs = weight.size(1);
  const int64_t padded = (outputs + units - 1) / units * units;
  const int64_t rows = input.numel() / weight.size(0);
  return 4 * padded <= 5 * outputs || rows <= recurrent::kChunkRows;
}

// `weight` [K, N] packed as the recurrent kernels pack a one-gate layer weight [N, K]
at::Tensor panel_weight(const at::Tensor& weight) {
  const CpuKernels& kernels = recurrent::cpu_kernels();
  const at::Tensor w = weight.t().contiguous();
  const int64_t outputs = weight.size(1);
  const int64_t features = weight.size(0);
  at::Tensor packed = at::empty({kernels.packed_size(1, outputs, features)}, w.options());
  kernels.pack(w.const_data_ptr<float>(), 1, outputs, features, packed.data_ptr<float>());
  return packed;
}

at::Tensor panel_product(const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias) {
  const CpuKernels& kernels = recurrent::cpu_kernels();
  // the recurrent kernels key their packings by gate count, never -1
  const at::Tensor packed = packed_weight(weight, PackingKey{&kernels, -1}, panel_weight);
  const int64_t features = weight.size(0);
  const int64_t outputs = weight.size(1);
  const at::Tensor x = as_rows(input).contiguous();
  const at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  at::Tensor out = at::empty({x.size(0), outputs}, x.options());
  const int64_t rows = x.size(0);
  if (rows == 0 || outputs == 0) return out.view(output_shape(input, weight));

  recurrent::Projection p{};
  p.cell = recurrent::Cell::rnn_tanh;  // one gate; the projection applies no activation
  p.steps = rows;                      // a row per step, batch 1
  p.batch = 1;
  // chunks of kChunkRows (a multiple of the rows one panel pass takes: 43-row chunks, each
  // ending in a one-row pass, ran a 128x512x10000 product 6-25% slower), the last one shorter
  p.chunk = std::min(rows, recurrent::kChunkRows);
  const int64_t chunks = (rows + p.chunk - 1) / p.chunk;
  p.features = features;
  p.hidden = outputs;
  p.x = x.const_data_ptr<float>();
  p.x_t = features;
  p.x_b = 0;
  p.reverse = false;
  p.packed = packed.const_data_ptr<float>();
  p.bias_ih = bias ? b.const_data_ptr<float>() : nullptr;
  p.bias_hh = nullptr;

  // tiles: a chunk of rows (tile / blocks) times a block of outputs (tile % blocks)
  const int64_t units = kernels.block_units(1);
  const int64_t blocks = (outputs + units - 1) / units;
  const int64_t tile_cost =
      std::max(features * units * int64_t{4}, 2 * p.chunk * features * units);
  // a thread's tiles cost at least kBytesPerThread of weight streamed (a multiply-add counted
  // as 2 bytes: about this CPU's ratio of cache bandwidth to multiply-add rate)
  const int64_t grain = std::max<int64_t>(1, kBytesPerThread / tile_cost);
  float* gates = out.data_ptr<float>();
  const auto run = [&](int64_t begin, int64_t end) {
    recurrent::Projection part = p;
    for (int64_t tile = begin; tile < end;) {
      const int64_t chunk = tile / blocks;
      const int64_t first = tile % blocks;
      const int64_t last = std::min(blocks, first + (end - tile));
      part.gates = gates + chunk * p.chunk * outputs;  // gates rows count from the chunk's
      kernels.project(part, chunk * p.chunk, first, last);
      tile += last - first;
    }
  };
  const int64_t tiles = chunks * blocks;
  // Threads get equal work, not equal tiles: a tile's work is its chunk's rows (100 rows as 48,
  // 48 and 4 over two threads by tiles: 576 rows' worth against 224). `work` counts a row of a
  // block as one; tile_at(u) is the first tile that starts at or after u of it.
  const int64_t work = rows * blocks;
  const auto tile_at = [&](int64_t u) {
    const int64_t chunk = std::min(u / (p.chunk * blocks), chunks - 1);
    const int64_t chunk_rows = std::min(p.chunk, rows - chunk * p.chunk);
    const int64_t into = u - chunk * p.chunk * blocks;
    return std::min(tiles, chunk * blocks + (into + chunk_rows - 1) / chunk_rows);
  };
  const int threads = static_cast<int>(
      std::min<int64_t>(at::get_num_threads(), (tiles + grain - 1) / grain));
  split_over_callers_team(work, threads, [&](int64_t begin, int64_t end) {
    run(tile_at(begin), tile_at(end));
  });
  return out.view(output_shape(input, weight));
}

at::Tensor cpu_dense(const at::Tensor& input, const at::Tensor& weight,
                     const std::optional<at::Tensor>& bias) {
  check_arguments(input, weight, bias);
  if (!panels_take(input, weight, bias)) return aten_product(input, weight, bias);
  return panel_product(input, weight, bias);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(chrion, m) {
  m.def("dense(Tensor input, Tensor weight, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(chrion, CompositeExplicitAutograd, m) { m.impl("dense", aten_dense); }

TORCH_LIBRARY_IMPL(chrion, CPU, m) { m.impl("dense", cpu_dense); }

}  // namespace chrion
