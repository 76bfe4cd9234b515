// ATen's oneDNN operators (mkldnn::_convolution_pointwise and the weight reorder it reads),
// called through the dispatcher: torch's installed headers do not declare them, and a boxed
// call needs no signature of ours to match theirs.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

namespace chrion::onednn {

/// Whether ATen was built with oneDNN and the user has not turned it off
/// (torch.backends.mkldnn.enabled).
bool usable();

/// Whether a product of these operands can take oneDNN against a cached reordered weight:
/// oneDNN usable, and `packable_float32` (packed_weights.h).
bool takes(const at::Tensor& input, const at::Tensor& weight,
           const std::optional<at::Tensor>& bias);

/// The operator `name` ("mkldnn::_convolution_pointwise"); throws if ATen lacks it.
c10::OperatorHandle op(const char* name);

/// `op` called with `arguments`: its (first) returned tensor.
at::Tensor call(const c10::OperatorHandle& op, torch::jit::Stack arguments);

}  // namespace chrion::onednn
