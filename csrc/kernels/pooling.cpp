// chrion::max_pool_tiles: a 2-D max pool whose windows tile the input (stride equal to the
// window, no padding, no dilation, floor mode) and whose indices nobody reads
// (graph/passes/max_pool_windows.py makes these from aten.max_pool2d_with_indices).
//
// Note [Max pool tiles]
// Each output is the maximum of its window's kh*kw elements. On every device the op folds them
// with aten.maximum over kh*kw strided views of the input (Tensor.unfold), NaN propagating as in
// max_pool2d: kh*kw - 1 elementwise passes. That was the graph's own rewrite before, kh*kw + 1
// view nodes and kh*kw - 1 maxima: on the two CPU lanes the plan spread a pool's views over both
// lanes and paid hand-offs for them, and the CRNN text recogniser's first 2x2 pool took 285 us
// of the plan's run against its maxima's 56 us alone. On CPU, a float32 channels-last input
// (what channels_last_convolutions gives a pool after a convolution) takes one pass instead:
// every output pixel's channels are contiguous, and so are those of each pixel of its window,
// so each output is the maximum of kh*kw rows of C floats, split over the caller's threads by
// output rows. Both give max_pool2d's values; a +0.0 and a -0.0 tied in a window may come out
// either way, as between max_pool2d's own tied elements.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "callers_team.h"

namespace chrion {
namespace {

struct Window {
  int64_t kh;
  int64_t kw;
};

Window checked_window(const at::Tensor& input, at::IntArrayRef window) {
  TORCH_CHECK_VALUE(window.size() == 2 && window[0] >= 1 && window[1] >= 1,
                    "chrion::max_pool_tiles: window must be two positive sizes [kH, kW], got ",
                    window);
  TORCH_CHECK_VALUE(input.dim() == 3 || input.dim() == 4,
                    "chrion::max_pool_tiles: input must be [C, H, W] or [N, C, H, W], got shape ",
                    input.sizes());
  TORCH_CHECK_VALUE(input.size(-2) >= window[0] && input.size(-1) >= window[1],
                    "chrion::max_pool_tiles: input of shape ", input.sizes(),
                    " is smaller than the window ", window);
  return {window[0], window[1]};
}

// The output: the input's leading sizes, then its whole windows; channels-last where the input
// is (and NCHW would be another layout), as ATen's pools and pointwise ops keep it. The fake
// kernel (torch_chrion/ops/pooling.py) follows the same rule.
at::Tensor new_output(const at::Tensor& input, Window w) {
  std::vector<int64_t> shape = input.sizes().vec();
  shape[shape.size() - 2] /= w.kh;
  shape[shape.size() - 1] /= w.kw;
  const bool channels_last = input.dim() == 4 && !input.is_contiguous() &&
                             input.is_contiguous(at::MemoryFormat::ChannelsLast);
  return at::empty(shape, input.options().memory_format(
                              channels_last ? at::MemoryFormat::ChannelsLast
                                            : at::MemoryFormat::Contiguous));
}

// The maxima of the window's strided views, into `out` (new_output)
at::Tensor fold_views(const at::Tensor& input, Window w, at::Tensor out) {
  const at::Tensor windows = input.unfold(-1, w.kw, w.kw).unfold(-3, w.kh, w.kh);
  bool first = true;
  for (int64_t j = 0; j < w.kw; ++j) {
    const at::Tensor column = windows.select(-2, j);
    for (int64_t i = 0; i < w.kh; ++i) {
      const at::Tensor element = column.select(-1, i);
      if (first) {
        out.copy_(element);
        first = false;
      } else {
        at::maximum_out(out, out, element);
      }
    }
  }
  return out;
}

// Every device
at::Tensor window_maxima(const at::Tensor& input, at::IntArrayRef window) {
  const Window w = checked_window(input, window);
  return fold_views(input, w, new_output(input, w));
}

// aten.maximum's float: NaN wins, else the larger; a tie keeps the running value
inline float maximum(float running, float x) { return (x != x || x > running) ? x : running; }

// One output row's pixels: each channel the maximum over the K window pixels at `offsets`
// (floats from the window's top-left pixel). K known when compiled unrolls the window, so the
// loop over the contiguous channels vectorises.
template <int K>
inline __attribute__((always_inline)) void pool_row(const float* __restrict corner,
                                                    float* __restrict dst,
                                                    const int64_t* offsets, int64_t out_width,
                                                    int64_t step, int64_t channels) {
  for (int64_t ow = 0; ow < out_width; ++ow, dst += channels) {
    const float* left = corner + ow * step;
    for (int64_t c = 0; c < channels; ++c) {
      float m = left[c];
      for (int k = 1; k < K; ++k) m = maximum(m, left[offsets[k] + c]);
      dst[c] = m;
    }
  }
}

// Any window: the running maxima in the output row, one window pixel at a time
inline void pool_row_any(const float* corner, float* dst, const int64_t* offsets, int64_t count,
                         int64_t out_width, int64_t step, int64_t channels) {
  for (int64_t ow = 0; ow < out_width; ++ow, dst += channels) {
    const float* left = corner + ow * step;
    std::copy(left, left + channels, dst);
    for (int64_t k = 1; k < count; ++k) {
      for (int64_t c = 0; c < channels; ++c) dst[c] = maximum(dst[c], left[offsets[k] + c]);
    }
  }
}

// Output rows [begin, end) (a row: one image's output pixels of one window row) of a
// channels-last float input [N, H, W, C] as memory. Compiled for AVX-512, AVX2 and the baseline,
// the CPU's own picked when the library loads (the rest of this file is not worth the copies).
__attribute__((target_clones("avx512f", "avx2", "default"))) void pool_rows(
    const float* in, float* out, int64_t begin, int64_t end, int64_t height, int64_t width,
    int64_t out_height, int64_t out_width, int64_t channels, Window w) {
  // the window's pixels in the order the maxima fold them: its columns, then its rows
  std::vector<int64_t> offsets;
  for (int64_t j = 0; j < w.kw; ++j)
    for (int64_t i = 0; i < w.kh; ++i) offsets.push_back((i * width + j) * channels);
  const int64_t step = w.kw * channels;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t image = row / out_height;
    const int64_t top = (row % out_height) * w.kh;
    const float* corner = in + (image * height + top) * width * channels;
    float* dst = out + row * out_width * channels;
    switch (offsets.size()) {
      case 2: pool_row<2>(corner, dst, offsets.data(), out_width, step, channels); break;
      case 3: pool_row<3>(corner, dst, offsets.data(), out_width, step, channels); break;
      case 4: pool_row<4>(corner, dst, offsets.data(), out_width, step, channels); break;
      default:
        pool_row_any(corner, dst, offsets.data(), static_cast<int64_t>(offsets.size()),
                     out_width, step, channels);
    }
  }
}

at::Tensor cpu_max_pool_tiles(const at::Tensor& input, at::IntArrayRef window) {
  const Window w = checked_window(input, window);
  at::Tensor out = new_output(input, w);
  if (input.scalar_type() != at::kFloat || !out.is_contiguous(at::MemoryFormat::ChannelsLast) ||
      input.dim() != 4 || out.numel() == 0) {
    return fold_views(input, w, out);
  }
  const int64_t rows = out.size(0) * out.size(2);
  const float* in = input.const_data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const int64_t bytes = input.numel() * static_cast<int64_t>(sizeof(float));
  const int threads = threads_for_bytes(rows, bytes);
  split_over_callers_team(rows, threads, [&](int64_t begin, int64_t end) {
    pool_rows(in, dst, begin, end, input.size(2), input.size(3), out.size(2), out.size(3),
              input.size(1), w);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(chrion, m) {
  m.def("max_pool_tiles(Tensor input, int[2] window) -> Tensor");
}

TORCH_LIBRARY_IMPL(chrion, CompositeExplicitAutograd, m) {
  m.impl("max_pool_tiles", window_maxima);
}

TORCH_LIBRARY_IMPL(chrion, CPU, m) { m.impl("max_pool_tiles", cpu_max_pool_tiles); }

}  // namespace chrion
