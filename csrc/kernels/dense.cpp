// chrion::dense: `input [..., K] @ weight [K, N] (+ bias [N])`, the product of an activation and
// a constant weight (graph/passes/dense_products.py makes these from aten.mm / addmm nodes).
//
// Note [CPU dense products]
// ATen multiplies float32 matrices on the CPU with MKL's sgemm, which on the AMD EPYC (Zen 4)
// benchmark VM runs large products well below oneDNN's inner product against a weight reordered
// once into oneDNN's blocked layout. Two threads, a 140x512x10000 vocabulary projection: addmm
// 10.3-12.0 ms, oneDNN with the reordered weight 6.8-7.2 ms (onnxruntime's MatMul+Add 7.7 ms);
// 64x1024x1024: 0.87 against 0.62 ms. Below a few million multiply-adds oneDNN's fixed cost per
// call (15-25 us) loses: 1x512x500 took 24 us in addmm and 29-33 in oneDNN; one thread needs
// about twice the work of two before oneDNN wins (bench figures: scratch runs of
// `mkldnn._linear_pointwise` against `addmm`, recorded in the #15 notes). So the CPU kernel
// takes oneDNN from kOneDnnMinWork multiply-adds per thread, per call (a graph with symbolic
// lengths sees every size), and ATen below, where the results differ by rounding only (each sum
// in another order). The reordered weight is cached per weight tensor and follows in-place
// writes (Note [Packed weights follow the model] in packed_weights.h); an inference-tensor
// weight, which has no version counter to key that cache on, stays with ATen. Every other
// device and dtype runs addmm / mm (cuBLAS on CUDA).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <vector>

#include "onednn_ops.h"
#include "packed_weights.h"

namespace chrion {
namespace {

// multiply-adds per thread from which oneDNN's reordered-weight product beats MKL here
constexpr int64_t kOneDnnMinWork = int64_t{1} << 23;

void check_arguments(const at::Tensor& input, const at::Tensor& weight,
                     const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(weight.dim() == 2, "chrion::dense: weight must be [in_features, ",
                    "out_features], got shape ", weight.sizes());
  TORCH_CHECK_VALUE(input.dim() >= 1 && input.size(-1) == weight.size(0),
                    "chrion::dense: input of shape ", input.sizes(), " has ",
                    input.dim() >= 1 ? input.size(-1) : 0, " features, the weight takes ",
                    weight.size(0));
  TORCH_CHECK_VALUE(!bias || (bias->dim() == 1 && bias->size(0) == weight.size(1)),
                    "chrion::dense: bias must be [", weight.size(1), "], got shape ",
                    bias ? bias->sizes() : at::IntArrayRef{});
}

std::vector<int64_t> output_shape(const at::Tensor& input, const at::Tensor& weight) {
  std::vector<int64_t> shape = input.sizes().vec();
  shape.back() = weight.size(1);
  return shape;
}

// ATen's product (arguments checked)
at::Tensor aten_product(const at::Tensor& input, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias) {
  const at::Tensor rows = input.reshape({-1, weight.size(0)});
  const at::Tensor out = bias ? at::addmm(*bias, rows, weight) : at::mm(rows, weight);
  return out.view(output_shape(input, weight));
}

at::Tensor aten_dense(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias) {
  check_arguments(input, weight, bias);
  return aten_product(input, weight, bias);
}

bool onednn_pays(const at::Tensor& input, const at::Tensor& weight,
                 const std::optional<at::Tensor>& bias) {
  if (!onednn::takes(input, weight, bias)) return false;
  const int64_t work = input.numel() * weight.size(1);  // M * K * N
  return work >= kOneDnnMinWork * at::get_num_threads();
}

// `weight` [K, N] as oneDNN's reordered [N, K] inner-product weight (for any batch size)
at::Tensor onednn_weight(const at::Tensor& weight) {
  static const c10::OperatorHandle reorder = onednn::op("mkldnn::_reorder_linear_weight");
  return onednn::call(reorder, {weight.t().contiguous(), c10::IValue()});
}

// any address names the packing (PackingKey)
constexpr char kOneDnnPacking = 0;

at::Tensor cpu_dense(const at::Tensor& input, const at::Tensor& weight,
                     const std::optional<at::Tensor>& bias) {
  check_arguments(input, weight, bias);
  if (!onednn_pays(input, weight, bias)) return aten_product(input, weight, bias);
  static const c10::OperatorHandle product = onednn::op("mkldnn::_linear_pointwise");
  const at::Tensor packed = packed_weight(weight, PackingKey{&kOneDnnPacking, 0}, onednn_weight);
  return onednn::call(product, {input.contiguous(), packed,
                                bias ? c10::IValue(bias->contiguous()) : c10::IValue(),
                                std::string("none"), onednn::no_scalars(), c10::IValue()});
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(chrion, m) {
  m.def("dense(Tensor input, Tensor weight, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(chrion, CompositeExplicitAutograd, m) { m.impl("dense", aten_dense); }

TORCH_LIBRARY_IMPL(chrion, CPU, m) { m.impl("dense", cpu_dense); }

}  // namespace chrion
