// chrion::conv2d's CPU path for a convolution over few input channels (Note [Direct
// convolution of few channels] in convolution_direct.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace chrion::direct {

/// The activation fused into the convolution's store, as chrion::conv2d names it
struct Activation {
  enum Kind { none, relu, leaky_relu, hardtanh } kind = none;
  float a = 0.0f;  ///< leaky_relu's slope, hardtanh's minimum
  float b = 0.0f;  ///< hardtanh's maximum
};

/// Whether the direct kernel takes this convolution: a CPU with AVX-512, float32 operands, a
/// weight that is no inference tensor, one group, no dilation, at most kMaxTaps taps (kernel
/// rows x columns x input channels) and at least one output pixel. Any input layout: the
/// kernel copies the input into a padded channels-last buffer first.
bool takes(const at::Tensor& input, const at::Tensor& weight,
           const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

/// The convolution (arguments checked by chrion::conv2d: positive strides, padding not
/// negative; `takes` true), written channels-last.
at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                  at::IntArrayRef padding, Activation activation);

}  // namespace chrion::direct
