// Note [Direct convolution of few channels]
// A speech or text-line model's first convolution reads one channel (a spectrogram, a grey
// image) or three, and writes 32-64: a few taps (kernel rows x columns x input channels) per
// output. oneDNN, weight reordered once (Note [CPU packed convolutions] in convolution.cpp),
// took twice onnxruntime's time on the CRNN's (1->64 channels, 3x3, 32x100 pixels; two threads
// of the benchmark VM, AMD EPYC Zen 4: 99-123 against 49-72 us). For few taps each output
// pixel's channels are a handful of input values times one weight vector per tap. So the kernel
// keeps P output pixels x CV vectors of 16 output channels (a group of up to 64 channels) in
// registers, 24 of AVX-512's 32, and runs the taps over them: per tap CV weight loads and P
// broadcasts for P x CV multiply-adds. The input is first copied into a zero border of the
// padding (and enough columns on the right for a whole block of pixels), so no tap tests a
// bound; bias and activation are applied in registers before the store. Output rows are split
// over the caller's OpenMP team. Sums run tap by tap, so results differ from ATen's by rounding,
// and do not depend on the thread count. Against oneDNN there, same inputs, 1 and 2 threads:
// the CRNN's 72 and 44 us against 181 and 99; three channels (RGB, 27 taps) 139 and 78 against
// 259 and 140; the CRDNN's 4 x 100 x 40 (4 MB of output, bound by the writes) 306 and 170
// against 424 and 221. A DeepSpeech2 front end of 41x11 taps took 1.8x oneDNN's time (it blocks
// many taps better), so more than kMaxTaps taps stay with oneDNN. AVX-512 only: elsewhere
// every convolution takes oneDNN as before.

#include "convolution_direct.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "callers_team.h"
#include "packed_weights.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CHRION_DIRECT_CONVOLUTION 1
#endif

namespace chrion::direct {
#ifdef CHRION_DIRECT_CONVOLUTION
namespace {

// taps up to which the kernel runs (see the Note)
constexpr int64_t kMaxTaps = 32;

constexpr int kLanes = 16;  // floats of a zmm register
constexpr int kGroupVectors = 4;  // output channels per group: 4 vectors, 64 channels
constexpr int64_t kGroupChannels = kGroupVectors * kLanes;
// accumulators: 24 of AVX-512's 32 registers (pixels x vectors)
constexpr int kAccumulators = 24;
constexpr int kMaxPixels = kAccumulators;

#define CHRION_AVX512 __attribute__((target("avx512f"), always_inline)) inline

// NaN stays NaN, as in ATen's relu, leaky_relu and hardtanh (clamps): each compare is false
// for NaN and keeps v
CHRION_AVX512 __m512 activate(__m512 v, const Activation& act) {
  const __m512 zero = _mm512_setzero_ps();
  switch (act.kind) {
    case Activation::relu:
      return _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), zero);
    case Activation::leaky_relu:
      return _mm512_mask_mul_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), v,
                                _mm512_set1_ps(act.a));
    case Activation::hardtanh: {
      const __m512 lo = _mm512_set1_ps(act.a), hi = _mm512_set1_ps(act.b);
      v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, lo, _CMP_LT_OQ), lo);
      return _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, hi, _CMP_GT_OQ), hi);
    }
    default:
      return v;
  }
}

// weight [Cout, Cin, KH, KW] as [groups of 64 output channels][tap (kh, kw, ci)][64], zero past
// Cout: a tap's weights for a group are CV contiguous vectors
at::Tensor pack(const at::Tensor& weight) {
  const int64_t cout = weight.size(0);
  const int64_t taps = weight.numel() / std::max<int64_t>(cout, 1);
  const int64_t groups = (cout + kGroupChannels - 1) / kGroupChannels;
  const at::Tensor by_tap = weight.permute({2, 3, 1, 0}).reshape({taps, cout});
  at::Tensor packed = at::zeros({groups, taps, kGroupChannels}, weight.options());
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t n = std::min(kGroupChannels, cout - g * kGroupChannels);
    packed.select(0, g).narrow(1, 0, n).copy_(by_tap.narrow(1, g * kGroupChannels, n));
  }
  return packed;
}

struct Geometry {
  int64_t in_row;      // floats of a padded input row: columns x channels
  int64_t in_image;    // floats of a padded input image
  int64_t kernel_h;    // kernel rows
  int64_t tap_row;     // taps of a kernel row: kernel columns x input channels
  int64_t stride_h;    // input rows per output row
  int64_t pixel_step;  // floats between two output pixels' first taps: column stride x channels
  int64_t out_h, out_w, cout;
};

// P output pixels of one output row (`in` at the first one's first tap), CV vectors of a
// channel group: taps, bias, activation, store of `pixels` pixels and `channels` channels
template <int CV, int P>
CHRION_AVX512 void pixel_block(const float* in, const float* w, const float* bias,
                               const Geometry& g, float* out, int64_t pixels, int64_t channels,
                               const Activation& act) {
  __m512 acc[P][CV];
  for (int v = 0; v < CV; ++v) {
    const __m512 b = bias != nullptr ? _mm512_loadu_ps(bias + v * kLanes) : _mm512_setzero_ps();
    for (int p = 0; p < P; ++p) acc[p][v] = b;
  }
  for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
    const float* row = in + kh * g.in_row;
    const float* wk = w + kh * g.tap_row * kGroupChannels;
    for (int64_t j = 0; j < g.tap_row; ++j) {
      __m512 wv[CV];
#pragma GCC unroll 4
      for (int v = 0; v < CV; ++v) wv[v] = _mm512_loadu_ps(wk + j * kGroupChannels + v * kLanes);
#pragma GCC unroll 24
      for (int p = 0; p < P; ++p) {
        const __m512 x = _mm512_set1_ps(row[p * g.pixel_step + j]);
#pragma GCC unroll 4
        for (int v = 0; v < CV; ++v) acc[p][v] = _mm512_fmadd_ps(wv[v], x, acc[p][v]);
      }
    }
  }
  for (int64_t p = 0; p < std::min<int64_t>(P, pixels); ++p) {
    float* dst = out + p * g.cout;
    for (int v = 0; v < CV; ++v) {
      const int64_t n = std::min<int64_t>(kLanes, channels - v * kLanes);
      const __mmask16 lanes = static_cast<__mmask16>((1u << n) - 1u);
      _mm512_mask_storeu_ps(dst + v * kLanes, lanes, activate(acc[p][v], act));
    }
  }
}

template <int CV, int P>
CHRION_AVX512 void group_row(const float* in, const float* w, const float* bias,
                             const Geometry& g, float* out, int64_t channels,
                             const Activation& act) {
  for (int64_t ow = 0; ow < g.out_w; ow += P) {
    pixel_block<CV, P>(in + ow * g.pixel_step, w, bias, g, out + ow * g.cout, g.out_w - ow,
                       channels, act);
  }
}

// Output rows [begin, end) (one image's row of output pixels each) of every channel group.
// `padded`: the input with its zero border, channels innermost; `bias`: Cout rounded up to a
// group, or null.
__attribute__((target("avx512f"))) void output_rows(const float* padded, const float* packed,
                                                    const float* bias, const Geometry& g,
                                                    float* out, int64_t begin, int64_t end,
                                                    const Activation& act) {
  const int64_t groups = (g.cout + kGroupChannels - 1) / kGroupChannels;
  const int64_t taps = g.kernel_h * g.tap_row;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t image = r / g.out_h;
    const float* in = padded + image * g.in_image + (r % g.out_h) * g.stride_h * g.in_row;
    for (int64_t k = 0; k < groups; ++k) {
      const float* w = packed + k * taps * kGroupChannels;
      const float* b = bias != nullptr ? bias + k * kGroupChannels : nullptr;
      float* dst = out + r * g.out_w * g.cout + k * kGroupChannels;
      const int64_t channels = std::min(kGroupChannels, g.cout - k * kGroupChannels);
      switch ((channels + kLanes - 1) / kLanes) {
        case 1: group_row<1, kAccumulators>(in, w, b, g, dst, channels, act); break;
        case 2: group_row<2, kAccumulators / 2>(in, w, b, g, dst, channels, act); break;
        case 3: group_row<3, kAccumulators / 3>(in, w, b, g, dst, channels, act); break;
        default: group_row<4, kAccumulators / 4>(in, w, b, g, dst, channels, act);
      }
    }
  }
}

// A thread's rows make at least this many multiply-adds (some 15 us on one core), so a small
// convolution is not cut into parts that cost less than waking a thread
constexpr int64_t kMultiplyAddsPerThread = int64_t{1} << 19;

constexpr char kDirectPacking = 0;  // any address names the packing (PackingKey)

}  // namespace
#endif

bool takes(const at::Tensor& input, const at::Tensor& weight,
           const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
#ifndef CHRION_DIRECT_CONVOLUTION
  return false;
#else
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (!avx512 || !packable_float32(input, weight, bias) || groups != 1) return false;
  const int64_t taps = weight.size(1) * weight.size(2) * weight.size(3);
  if (input.dim() != 4 || dilation[0] != 1 || dilation[1] != 1 || taps > kMaxTaps) return false;
  // at least one output pixel: ATen's own error names a kernel larger than the padded input
  return input.size(2) + 2 * padding[0] >= weight.size(2) &&
         input.size(3) + 2 * padding[1] >= weight.size(3);
#endif
}

at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                  at::IntArrayRef padding, Activation activation) {
#ifndef CHRION_DIRECT_CONVOLUTION
  TORCH_CHECK(false, "chrion::conv2d: the direct kernel needs an x86-64 build");
#else
  const int64_t batch = input.size(0), cin = input.size(1), h = input.size(2), w = input.size(3);
  const int64_t cout = weight.size(0), kh = weight.size(2), kw = weight.size(3);
  const int64_t out_h = (h + 2 * padding[0] - kh) / stride[0] + 1;
  const int64_t out_w = (w + 2 * padding[1] - kw) / stride[1] + 1;
  at::Tensor out = at::empty({batch, cout, std::max<int64_t>(out_h, 0),
                              std::max<int64_t>(out_w, 0)},
                             input.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  // the zero border: padding, and columns enough for the last block of pixels to read
  const int64_t blocks_w = (out_w + kMaxPixels - 1) / kMaxPixels * kMaxPixels;
  const int64_t padded_w = std::max(w + 2 * padding[1], (blocks_w - 1) * stride[1] + kw);
  const int64_t padded_h = h + 2 * padding[0];
  at::Tensor padded = at::zeros({batch, padded_h, padded_w, cin}, input.options());
  padded.narrow(1, padding[0], h).narrow(2, padding[1], w).copy_(input.permute({0, 2, 3, 1}));
  const at::Tensor packed = packed_weight(weight, PackingKey{&kDirectPacking, 0}, pack);
  at::Tensor bias_padded;
  if (bias.has_value()) {
    const int64_t groups = (cout + kGroupChannels - 1) / kGroupChannels;
    bias_padded = at::zeros({groups * kGroupChannels}, input.options());
    bias_padded.narrow(0, 0, cout).copy_(*bias);
  }
  const Geometry g{padded_w * cin, padded_h * padded_w * cin, kh, kw * cin, stride[0],
                   stride[1] * cin, out_h, out_w, cout};
  const float* in = padded.const_data_ptr<float>();
  const float* wp = packed.const_data_ptr<float>();
  const float* b = bias.has_value() ? bias_padded.const_data_ptr<float>() : nullptr;
  float* dst = out.data_ptr<float>();
  const int64_t rows = batch * out_h;
  const int64_t work = out.numel() * cin * kh * kw;
  const int threads = static_cast<int>(std::min<int64_t>(
      {at::get_num_threads(), rows, std::max<int64_t>(1, work / kMultiplyAddsPerThread)}));
  split_over_callers_team(rows, threads, [&](int64_t begin, int64_t end) {
    output_rows(in, wp, b, g, dst, begin, end, activation);
  });
  return out;
#endif
}

}  // namespace chrion::direct
