#include "packed_weights.h"

#include <c10/util/intrusive_ptr.h>

#include <mutex>
#include <unordered_map>

namespace chrion {
namespace {

struct Entry {
  c10::weak_intrusive_ptr<c10::TensorImpl> owner;
  const void* data;
  uint32_t version;
  PackingKey key;
  at::Tensor packed;
};

std::mutex cache_mutex;
std::unordered_map<const c10::TensorImpl*, Entry>& cache() {
  static auto* entries = new std::unordered_map<const c10::TensorImpl*, Entry>();
  return *entries;  // leaked on purpose: no destruction-order race with lanes at exit
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

at::Tensor packed_weight(const at::Tensor& weight, PackingKey key,
                         c10::function_ref<at::Tensor(const at::Tensor&)> pack) {
  if (weight.is_inference()) return pack(weight);  // no version counter to key on
  const c10::TensorImpl* impl = weight.unsafeGetTensorImpl();
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto& entries = cache();
  const Entry* entry = current_entry(weight);
  if (entry != nullptr && entry->key == key) return entry->packed;
  const uint32_t version = impl->version_counter().current_version();
  const void* data = weight.data_ptr();
  drop_freed(entries);
  at::Tensor packed = pack(weight);
  entries.insert_or_assign(
      impl, Entry{c10::weak_intrusive_ptr<c10::TensorImpl>(weight.getIntrusivePtr()), data, version,
                  key, packed});
  return packed;
}

bool packable_float32(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias) {
  const auto f32 = [](const at::Tensor& t) { return t.scalar_type() == at::kFloat; };
  return f32(input) && f32(weight) && (!bias || f32(*bias)) && !weight.is_inference();
}

bool packed_weights_hold(const at::Tensor& weight) {
  if (weight.is_inference()) return false;
  std::lock_guard<std::mutex> lock(cache_mutex);
  return current_entry(weight) != nullptr;
}

std::optional<std::vector<int64_t>> packed_weight_sizes(const at::Tensor& weight) {
  if (weight.is_inference()) return std::nullopt;
  std::lock_guard<std::mutex> lock(cache_mutex);
  const Entry* entry = current_entry(weight);
  if (entry == nullptr) return std::nullopt;
  return entry->packed.sizes().vec();
}

int64_t packed_weights_cached() {
  std::lock_guard<std::mutex> lock(cache_mutex);
  return static_cast<int64_t>(cache().size());
}

}  // namespace chrion
