#include "onednn_ops.h"

#include <ATen/Config.h>

#include "packed_weights.h"

namespace chrion::onednn {

bool usable() {
#if AT_MKLDNN_ENABLED()
  return at::globalContext().userEnabledMkldnn();
#else
  return false;
#endif
}

bool takes(const at::Tensor& input, const at::Tensor& weight,
           const std::optional<at::Tensor>& bias) {
  return usable() && packable_float32(input, weight, bias);
}

c10::OperatorHandle op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

at::Tensor call(const c10::OperatorHandle& op, torch::jit::Stack arguments) {
  op.callBoxed(arguments);
  return arguments.at(0).toTensor();
}

}  // namespace chrion::onednn
