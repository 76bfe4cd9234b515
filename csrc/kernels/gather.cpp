// chrion::gather_rows: table[index], the rows of a table picked by an integer tensor of any
// shape (an embedding lookup, ONNX Gather on axis 0), negative indices counting from the end
// (graph/passes/gather_rows.py makes these from aten.index.Tensor with one index tensor).
//
// Note [Gather rows]
// ATen's index.Tensor runs its general advanced-indexing kernel, element by element: 97 us on
// one thread of the benchmark VM (AMD EPYC, Zen 4) for the LSTM language model's 35 x 4 tokens
// of a 10000 x 512 table, where its embedding's index_select took 20 (onnxruntime's Gather: 29
// on two). Neither embedding nor index_select takes the negative indices that index and ONNX
// Gather wrap. So on CPU, for a contiguous table and int64 or int32 indices, the op checks
// every index (IndexError with ATen's message for one out of range), then copies each picked
// row with memcpy, the rows split over the caller's OpenMP team when they are large. Every
// other case, and every other device, runs aten.index: the same values either way.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "callers_team.h"

namespace chrion {
namespace {

void check_arguments(const at::Tensor& table, const at::Tensor& index) {
  TORCH_CHECK_VALUE(table.dim() >= 1, "chrion::gather_rows: table must have a dimension to "
                    "pick rows from, got a scalar");
  TORCH_CHECK_VALUE(index.scalar_type() == at::kLong || index.scalar_type() == at::kInt,
                    "chrion::gather_rows: index must be int64 or int32, got ",
                    index.scalar_type());
}

// Every device
at::Tensor index_rows(const at::Tensor& table, const at::Tensor& index) {
  check_arguments(table, index);
  return at::index(table, {index});
}

// each index as a row number in [0, rows), or ATen's IndexError for the first one out of range
template <class I>
std::vector<int64_t> row_numbers(const at::Tensor& index, int64_t rows) {
  const at::Tensor flat = index.contiguous();
  const I* data = flat.const_data_ptr<I>();
  std::vector<int64_t> out(flat.numel());
  for (int64_t i = 0; i < flat.numel(); ++i) {
    const int64_t v = data[i];
    TORCH_CHECK_INDEX(v >= -rows && v < rows, "index ", v,
                      " is out of bounds for dimension 0 with size ", rows);
    out[i] = v < 0 ? v + rows : v;
  }
  return out;
}

at::Tensor cpu_gather_rows(const at::Tensor& table, const at::Tensor& index) {
  check_arguments(table, index);
  if (!table.is_contiguous()) return at::index(table, {index});
  const int64_t rows = table.size(0);
  const std::vector<int64_t> picked = index.scalar_type() == at::kLong
                                          ? row_numbers<int64_t>(index, rows)
                                          : row_numbers<int32_t>(index, rows);
  std::vector<int64_t> shape = index.sizes().vec();
  shape.insert(shape.end(), table.sizes().begin() + 1, table.sizes().end());
  at::Tensor out = at::empty(shape, table.options());
  const int64_t row_bytes = rows == 0 ? 0 : table.nbytes() / rows;
  const int64_t count = static_cast<int64_t>(picked.size());
  if (count == 0 || row_bytes == 0) return out;
  const char* src = static_cast<const char*>(table.const_data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  const int threads = threads_for_bytes(count, count * row_bytes);
  split_over_callers_team(count, threads, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      std::memcpy(dst + i * row_bytes, src + picked[i] * row_bytes, row_bytes);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(chrion, m) { m.def("gather_rows(Tensor table, Tensor index) -> Tensor"); }

TORCH_LIBRARY_IMPL(chrion, CompositeExplicitAutograd, m) { m.impl("gather_rows", index_rows); }

TORCH_LIBRARY_IMPL(chrion, CPU, m) { m.impl("gather_rows", cpu_gather_rows); }

}  // namespace chrion
