// chrion::conv2d: a 2-D convolution against a constant weight, optionally followed by an
// activation: "relu", "leaky_relu" (args: negative slope) or "hardtanh" (args: min, max)
// (graph/passes/packed_convolutions.py makes these from aten.convolution nodes).
//
// Note [CPU packed convolutions]
// ATen runs a float32 CPU convolution in oneDNN, but reorders the weight into oneDNN's blocked
// layout on every call. With the weight reordered once, channels-last input, two threads of the
// benchmark VM (AMD EPYC, Zen 4), the CRNN's convolutions took 8-25% less (64->128 channels on
// 16x64: 780 -> 661 us; 256->256 on 4x32: 821 -> 610 us), its one-channel first layer half
// (150 -> 71 us); an activation fused into the convolution saves its own pass over the output
// (33-70 us for each ReLU there). So the CPU kernel takes oneDNN's pointwise convolution with
// the weight reordered once per weight tensor (Note [Packed weights follow the model] in
// packed_weights.h) for a float32 channels-last input, which channels_last_convolutions gives
// every constant-weight 2-D convolution; any other input, dtype or device runs
// aten.convolution (and the activation), as does an inference-tensor weight (no version
// counter to key the cache on). A convolution of few taps (a first layer over one or three
// channels) takes chrion's direct kernel instead, on AVX-512 (Note [Direct convolution of few
// channels] in convolution_direct.cpp). Results differ by rounding only (each sum in oneDNN's
// order for the layout); the output is channels-last, as ATen's is for a channels-last input.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <string>
#include <vector>

#include "convolution_direct.h"
#include "onednn_ops.h"
#include "packed_weights.h"

namespace chrion {
namespace {

void check_arguments(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                     at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK_VALUE(weight.dim() == 4, "chrion::conv2d: weight must be [out_channels, ",
                    "in_channels / groups, kH, kW], got shape ", weight.sizes());
  TORCH_CHECK_VALUE(input.dim() == 4, "chrion::conv2d: input must be [N, C, H, W], got shape ",
                    input.sizes());
  TORCH_CHECK_VALUE(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
                    "chrion::conv2d: stride, padding and dilation need two values each");
  // checked here, not left to the kernels: oneDNN divides by a zero stride (SIGFPE)
  TORCH_CHECK_VALUE(stride[0] >= 1 && stride[1] >= 1, "chrion::conv2d: stride must be positive, "
                    "got ", stride);
  TORCH_CHECK_VALUE(dilation[0] >= 1 && dilation[1] >= 1,
                    "chrion::conv2d: dilation must be positive, got ", dilation);
  TORCH_CHECK_VALUE(padding[0] >= 0 && padding[1] >= 0,
                    "chrion::conv2d: padding must not be negative, got ", padding);
  TORCH_CHECK_VALUE(groups >= 1 && input.size(1) == weight.size(1) * groups,
                    "chrion::conv2d: input has ", input.size(1), " channels, the weight takes ",
                    weight.size(1) * groups, " (", weight.size(1), " x ", groups, " groups)");
}

void check_activation(c10::string_view activation, at::ArrayRef<double> args) {
  const bool known = ((activation == "none" || activation == "relu") && args.empty()) ||
                     (activation == "leaky_relu" && args.size() == 1) ||
                     (activation == "hardtanh" && args.size() == 2);
  TORCH_CHECK_VALUE(known, "chrion::conv2d: unknown activation '", activation, "' with ",
                    args.size(),
                    " arguments (none, relu, leaky_relu [slope], hardtanh [min, max])");
}

// the activation (check_activation) applied in place to a convolution's fresh output
at::Tensor activate(at::Tensor out, c10::string_view activation, at::ArrayRef<double> args) {
  if (activation == "relu") return out.relu_();
  if (activation == "leaky_relu") return at::leaky_relu_(out, args[0]);
  if (activation == "hardtanh") return at::hardtanh_(out, args[0], args[1]);
  return out;
}

// the activation (check_activation) as the direct kernel applies it
direct::Activation direct_activation(c10::string_view activation, at::ArrayRef<double> args) {
  if (activation == "relu") return {direct::Activation::relu};
  if (activation == "leaky_relu") return {direct::Activation::leaky_relu, float(args[0])};
  if (activation == "hardtanh") {
    return {direct::Activation::hardtanh, float(args[0]), float(args[1])};
  }
  return {};
}

// ATen's convolution and the activation (arguments checked)
at::Tensor aten_convolution(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            c10::string_view activation, at::ArrayRef<double> args) {
  at::Tensor out = at::convolution(input, weight, bias, stride, padding, dilation,
                                   /*transposed=*/false, /*output_padding=*/{0, 0}, groups);
  return activate(out, activation, args);
}

at::Tensor aten_conv2d(const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                       c10::string_view activation, at::ArrayRef<double> args) {
  check_arguments(input, weight, stride, padding, dilation, groups);
  check_activation(activation, args);
  return aten_convolution(input, weight, bias, stride, padding, dilation, groups, activation,
                          args);
}

// what a reordered weight depends on besides the weight: one key per geometry (PackingKey)
int64_t geometry_key(at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                     int64_t groups) {
  int64_t key = groups;
  for (at::IntArrayRef part : {stride, padding, dilation}) {
    for (int64_t v : part) key = key * 1000003 + v;
  }
  return key;
}

constexpr char kOneDnnPacking = 0;  // any address names the packing (PackingKey)

at::Tensor cpu_conv2d(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                      c10::string_view activation, at::ArrayRef<double> args) {
  check_arguments(input, weight, stride, padding, dilation, groups);
  check_activation(activation, args);
  const bool channels_last = input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  if (channels_last && direct::takes(input, weight, bias, stride, padding, dilation, groups)) {
    const direct::Activation fused = direct_activation(activation, args);
    return direct::conv2d(input, weight, bias, stride, padding, fused);
  }
  if (!channels_last || !onednn::takes(input, weight, bias)) {
    return aten_convolution(input, weight, bias, stride, padding, dilation, groups, activation,
                            args);
  }
  static const c10::OperatorHandle reorder = onednn::op("mkldnn::_reorder_convolution_weight");
  static const c10::OperatorHandle convolve = onednn::op("mkldnn::_convolution_pointwise");
  const std::vector<int64_t> s = stride.vec(), p = padding.vec(), d = dilation.vec();
  const at::Tensor packed = packed_weight(
      weight, PackingKey{&kOneDnnPacking, geometry_key(stride, padding, dilation, groups)},
      [&](const at::Tensor& w) {
        return onednn::call(reorder, {w.contiguous(), p, s, d, groups, c10::IValue()});
      });
  c10::List<std::optional<at::Scalar>> scalars;
  for (double a : args) scalars.push_back(at::Scalar(a));
  return onednn::call(convolve, {input, packed, bias ? c10::IValue(*bias) : c10::IValue(), p, s,
                                 d, groups, std::string(activation), scalars, c10::IValue()});
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(chrion, m) {
  m.def(
      "conv2d(Tensor input, Tensor weight, Tensor? bias, int[] stride, int[] padding, "
      "int[] dilation, int groups, str activation, float[] activation_args) -> Tensor");
}

TORCH_LIBRARY_IMPL(chrion, CompositeExplicitAutograd, m) { m.impl("conv2d", aten_conv2d); }

TORCH_LIBRARY_IMPL(chrion, CPU, m) { m.impl("conv2d", cpu_conv2d); }

}  // namespace chrion
