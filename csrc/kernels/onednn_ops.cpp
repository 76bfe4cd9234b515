#include "onednn_ops.h"

#include <ATen/Config.h>

#include <optional>

namespace chrion::onednn {

bool usable() {
#if AT_MKLDNN_ENABLED()
  return at::globalContext().userEnabledMkldnn();
#else
  return false;
#endif
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
