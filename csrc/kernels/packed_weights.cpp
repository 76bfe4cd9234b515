#include "packed_weights.h"

#include <c10/util/intrusive_ptr.h>

#include <mutex>
#include <unordered_map>

namespace chrion::recurrent {
namespace {

struct Entry {
  c10::weak_intrusive_ptr<c10::TensorImpl> owner;
  const void* data;
  uint32_t version;
  int64_t gates;
  const CpuKernels* kernels;
  at::Tensor packed;
};

std::mutex cache_mutex;
std::unordered_map<const c10::TensorImpl*, Entry>& cache() {
  static auto* entries = new std::unordered_map<const c10::TensorImpl*, Entry>();
  return *entries;  // leaked on purpose: no destruction-order race with lanes at exit
}

at::Tensor pack(const at::Tensor& weight, int64_t gates, const CpuKernels& kernels) {
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

void drop_freed(std::unordered_map<const c10::TensorImpl*, Entry>& entries) {
  for (auto it = entries.begin(); it != entries.end();) {
    it = it->second.owner.expired() ? entries.erase(it) : std::next(it);
  }
}

// the entry of `weight` if it is current (call with cache_mutex held)
const Entry* current_entry(const at::Tensor& weight) {
  const c10::TensorImpl* impl = weight.unsafeGetTensorImpl();
  auto it = cache().find(impl);
  if (it == cache().end() || it->second.owner.expired() || it->second.data != weight.data_ptr() ||
      it->second.version != impl->version_counter().current_version()) {
    return nullptr;
  }
  return &it->second;
}

}  // namespace

at::Tensor packed_gate_weights(const at::Tensor& weight, int64_t gates, const CpuKernels& kernels) {
  if (weight.is_inference()) return pack(weight, gates, kernels);  // no version counter to key on
  const c10::TensorImpl* impl = weight.unsafeGetTensorImpl();
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto& entries = cache();
  const Entry* entry = current_entry(weight);
  if (entry != nullptr && entry->gates == gates && entry->kernels == &kernels) {
    return entry->packed;
  }
  const uint32_t version = impl->version_counter().current_version();
  const void* data = weight.data_ptr();
  drop_freed(entries);
  at::Tensor packed = pack(weight, gates, kernels);
  entries.insert_or_assign(
      impl, Entry{c10::weak_intrusive_ptr<c10::TensorImpl>(weight.getIntrusivePtr()), data, version,
                  gates, &kernels, packed});
  return packed;
}

bool packed_weights_hold(const at::Tensor& weight) {
  if (weight.is_inference()) return false;
  std::lock_guard<std::mutex> lock(cache_mutex);
  return current_entry(weight) != nullptr;
}

int64_t packed_weights_cached() {
  std::lock_guard<std::mutex> lock(cache_mutex);
  return static_cast<int64_t>(cache().size());
}

}  // namespace chrion::recurrent
