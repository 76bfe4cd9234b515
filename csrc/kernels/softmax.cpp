// chrion::softmax: softmax or log_softmax along one dimension (graph/passes/softmax_rows.py
// makes these from aten._softmax / aten._log_softmax along the last dimension).
//
// On CPU, a contiguous float32 tensor along its last dimension runs the rows kernel of Note
// [Softmax rows] (softmax_cpu_impl.h), the rows split over the caller's OpenMP team; every other
// case, and every other device, runs ATen's op: the same values up to rounding either way.

#include <ATen/ATen.h>
#include <c10/core/WrapDimMinimal.h>
#include <torch/library.h>

#include <cstdint>

#include "callers_team.h"
#include "recurrent_cpu.h"

namespace chrion {
namespace {

// Every device
at::Tensor aten_softmax(const at::Tensor& self, int64_t dim, bool log) {
  return log ? at::_log_softmax(self, dim, false) : at::_softmax(self, dim, false);
}

at::Tensor cpu_softmax(const at::Tensor& self, int64_t dim, bool log) {
  const int64_t last = self.dim() - 1;
  if (self.scalar_type() != at::kFloat || self.dim() == 0 || !self.is_contiguous() ||
      c10::maybe_wrap_dim(dim, self.dim()) != last || self.numel() == 0) {
    return aten_softmax(self, dim, log);
  }
  at::Tensor out = at::empty_like(self, at::MemoryFormat::Contiguous);
  const int64_t columns = self.size(last);
  const int64_t rows = self.numel() / columns;
  const float* in = self.const_data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const auto& kernels = recurrent::cpu_kernels();
  const int threads = threads_for_bytes(rows, self.numel() * int64_t{sizeof(float)});
  split_over_callers_team(rows, threads, [&](int64_t begin, int64_t end) {
    kernels.softmax_rows(in, dst, columns, begin, end, log);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(chrion, m) { m.def("softmax(Tensor self, int dim, bool log) -> Tensor"); }

TORCH_LIBRARY_IMPL(chrion, CompositeExplicitAutograd, m) { m.impl("softmax", aten_softmax); }

TORCH_LIBRARY_IMPL(chrion, CPU, m) { m.impl("softmax", cpu_softmax); }

}  // namespace chrion
