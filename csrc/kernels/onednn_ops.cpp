#include "onednn_ops.h"

#include <ATen/Config.h>

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
  const auto f32 = [](const at::Tensor& t) { return t.scalar_type() == at::kFloat; };
  return usable() && f32(input) && f32(weight) && (!bias || f32(*bias)) && !weight.is_inference();
}

c10::OperatorHandle op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

at::Tensor call(const c10::OperatorHandle& op, torch::jit::Stack arguments) {
  op.callBoxed(arguments);
  return arguments.at(0).toTensor();
}

c10::IValue no_scalars() { return c10::List<std::optional<at::Scalar>>(); }

}  // namespace chrion::onednn
