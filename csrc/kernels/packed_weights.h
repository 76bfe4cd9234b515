// Layer weights (W_ih and W_hh) packed once per weight tensor, not once per call (Note [CPU
// recurrent kernel] in recurrent_cpu.h).
//
// Note [Packed weights follow the model]
// A packed copy is keyed by the weight's TensorImpl and is valid while that tensor is alive and
// still has the same data pointer, version and shape. Writing a parameter in place
// (load_state_dict copies into it under no_grad; an optimizer step; `w.mul_(2)`) bumps its
// version counter, and rebinding it (`param.data = other`) changes its data pointer, so the
// next call repacks. The cache holds the tensor weakly: a TensorImpl's memory stays reserved
// while a weak reference exists, so a freed weight's address cannot be reused by another tensor
// and mistaken for it; entries of freed weights are dropped on the next miss. Not covered:
// writes through `w.data` (a separate version counter PyTorch does not share) — they are not
// seen, exactly as autograd does not see them. Inference tensors have no version counter, so
// their weights are packed on every call (correct, only slower).
#pragma once

#include <ATen/ATen.h>

#include "recurrent_cpu.h"

namespace chrion::recurrent {

/// The packed form of a layer weight (W_ih [gates*H, features] or W_hh [gates*H, H], float32,
/// CPU; a bfloat16 W_hh is packed in pairs of columns, Note [bf16 recurrent weights]) for
/// `kernels`.
at::Tensor packed_gate_weights(const at::Tensor& weight, int64_t gates, const CpuKernels& kernels);

/// Whether the cache holds a current packed form of `weight` (tests: chrion's kernel ran).
bool packed_weights_hold(const at::Tensor& weight);

/// How many packed weights the cache holds (entries of freed weights included until swept).
int64_t packed_weights_cached();

}  // namespace chrion::recurrent
