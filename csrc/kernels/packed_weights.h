// Weights packed once per weight tensor, not once per call: the recurrent layers' W_ih and W_hh
// (Note [CPU recurrent kernel] in recurrent_cpu.h) and dense products' weights in oneDNN's
// layout (Note [CPU dense products] in dense.cpp).
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
#include <c10/util/FunctionRef.h>

#include <optional>
#include <vector>

namespace chrion {

/// What made a packed form: a packer (any address naming it) and its parameter (the gate count,
/// say). A weight's cached form is reused only for an equal key.
struct PackingKey {
  const void* packer;
  int64_t parameter;
  bool operator==(const PackingKey& other) const {
    return packer == other.packer && parameter == other.parameter;
  }
};

/// `weight` as `pack` packs it: the cached form while it is current, else packed now (and
/// cached, unless `weight` is an inference tensor).
at::Tensor packed_weight(const at::Tensor& weight, PackingKey key,
                         c10::function_ref<at::Tensor(const at::Tensor&)> pack);

/// Whether a float32 product of these operands can run against a cached packed weight: every
/// operand float32, and a weight that is no inference tensor (one has no version counter for
/// the cache to key on, so it would be packed on every call).
bool packable_float32(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias);

/// Whether the cache holds a current packed form of `weight` (tests: chrion's kernel ran).
bool packed_weights_hold(const at::Tensor& weight);

/// The sizes of the current packed form of `weight`, if the cache holds one (tests: which
/// packing, so which kernel, ran).
std::optional<std::vector<int64_t>> packed_weight_sizes(const at::Tensor& weight);

/// How many packed weights the cache holds (entries of freed weights included until swept).
int64_t packed_weights_cached();

}  // namespace chrion
