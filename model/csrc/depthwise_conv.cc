// Depthwise KxK convolution, stride 1, zero padding K/2, no bias, on channels-last (N, H, W, C)
// float32 tensors, forward and both backward passes, for MindSpore's Custom "aot" op on the CPU
// (see model/cpu_kernels/). This is ConvMLP's "connect" layer, whose tokens are channels-last:
// MindSpore's grouped Conv2d needs NCHW (two transposes per block and per pass) and runs on
// oneDNN's generic path. Weights keep the Conv2d layout (C, 1, K, K).
//
//   y[n, h, w, c]  = sum_{i,j} x[n, h + i - p, w + j - p, c] * wt[c, i, j]
//   dx[n, h, w, c] = sum_{i,j} dy[n, h - i + p, w - j + p, c] * wt[c, i, j]
//   dwt[c, i, j]   = sum_{n,h,w} dy[n, h, w, c] * x[n, h + i - p, w + j - p, c]
// The loops run over C innermost (contiguous), so they vectorise. Output rows (and, for the
// weight gradient, images) are split over the library's worker pool (common.h); each value is
// computed by one thread in a fixed order, so results do not depend on the threads.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"

namespace {

struct Dims {
  int64_t n, h, w, c, k, p;
};

bool GetDims(int nd_x, const int64_t *x, int nd_w, const int64_t *wt, Dims *d) {
  if (nd_x != 4 || nd_w != 4) return false;
  d->n = x[0];
  d->h = x[1];
  d->w = x[2];
  d->c = x[3];
  d->k = wt[2];
  d->p = d->k / 2;
  return wt[0] == d->c && wt[1] == 1 && wt[3] == d->k && d->k % 2 == 1;
}

std::vector<float> TapsMajor(const float *wt, const Dims &d) {
  std::vector<float> t(d.k * d.k * d.c);
  convmlp::DepthwiseTaps(wt, d.c, d.k, t.data());
  return t;
}

// out[n,h,w,:] = sum over taps of in[n, h + sign*(i-p), w + sign*(j-p), :] * taps[tap(i,j), :]
// with sign = +1 (forward) or -1 (input gradient: the flipped kernel), for the output rows
// (n, h) in [r0, r1).
__attribute__((noinline))
void CorrelateRows(const float *in, const float *taps, Dims d, int sign, int64_t r0, int64_t r1, float *out) {
  const int64_t c = d.c;
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t n = row / d.h, h = row % d.h;
    for (int64_t w = 0; w < d.w; ++w) {
      float *o = out + ((n * d.h + h) * d.w + w) * c;
      std::memset(o, 0, sizeof(float) * c);
      for (int64_t i = 0; i < d.k; ++i) {
        const int64_t hh = h + sign * (i - d.p);
        if (hh < 0 || hh >= d.h) continue;
        for (int64_t j = 0; j < d.k; ++j) {
          const int64_t ww = w + sign * (j - d.p);
          if (ww < 0 || ww >= d.w) continue;
          const float *src = in + ((n * d.h + hh) * d.w + ww) * c;
          const float *t = taps + (i * d.k + j) * c;
#pragma omp simd
          for (int64_t ch = 0; ch < c; ++ch) o[ch] += src[ch] * t[ch];
        }
      }
    }
  }
}

void Correlate(const float *in, const std::vector<float> &taps, const Dims &d, int sign, float *out) {
  const float *tp = taps.data();
  const Dims dims = d;
  convmlp::ParallelRange(d.n * d.h, d.w * d.c * d.k * d.k, [=](int64_t r0, int64_t r1) {
    CorrelateRows(in, tp, dims, sign, r0, r1, out);
  });
}

// The float partial sums of images [n0, n1), one (K*K, C) array per image in `parts`.
__attribute__((noinline))
void WeightGradImages(const float *dy, const float *x, Dims d, int64_t n0, int64_t n1, float *parts) {
  const int64_t c = d.c, taps = d.k * d.k;
  for (int64_t n = n0; n < n1; ++n) {
    float *part = parts + n * taps * c;
    std::fill(part, part + taps * c, 0.0f);
    for (int64_t h = 0; h < d.h; ++h) {
      for (int64_t w = 0; w < d.w; ++w) {
        const float *g = dy + ((n * d.h + h) * d.w + w) * c;
        for (int64_t i = 0; i < d.k; ++i) {
          const int64_t hh = h + i - d.p;
          if (hh < 0 || hh >= d.h) continue;
          for (int64_t j = 0; j < d.k; ++j) {
            const int64_t ww = w + j - d.p;
            if (ww < 0 || ww >= d.w) continue;
            const float *src = x + ((n * d.h + hh) * d.w + ww) * c;
            float *acc = part + (i * d.k + j) * c;
#pragma omp simd
            for (int64_t ch = 0; ch < c; ++ch) acc[ch] += g[ch] * src[ch];
          }
        }
      }
    }
  }
}

// dwt's values [q0, q1) of the taps-major (K*K*C) order: the images' partial sums added into
// double, in the order of the images.
__attribute__((noinline))
void AddImages(const float *parts, Dims d, int64_t q0, int64_t q1, float *dwt) {
  const int64_t c = d.c, taps = d.k * d.k;
  std::vector<double> totals(q1 - q0, 0.0);
  double *total = totals.data();
  for (int64_t n = 0; n < d.n; ++n) {
    const float *part = parts + n * taps * c + q0;
    for (int64_t q = 0; q < q1 - q0; ++q) total[q] += part[q];
  }
  for (int64_t q = q0; q < q1; ++q) dwt[(q % c) * taps + q / c] = static_cast<float>(total[q - q0]);
}

}  // namespace

// Inputs: x (N, H, W, C), weight (C, 1, K, K). Output: y (N, H, W, C).
extern "C" int DepthwiseConvForward(int nparam, void **params, int *ndims, int64_t **shapes,
                                    const char **dtypes, void *stream, void *extra) {
  Dims d;
  if (nparam != 3 || !GetDims(ndims[0], shapes[0], ndims[1], shapes[1], &d)) return 1;
  const auto taps = TapsMajor(static_cast<const float *>(params[1]), d);
  Correlate(static_cast<const float *>(params[0]), taps, d, +1, static_cast<float *>(params[2]));
  return 0;
}

// Inputs: dy (N, H, W, C), weight (C, 1, K, K). Output: dx (N, H, W, C).
extern "C" int DepthwiseConvBackwardInput(int nparam, void **params, int *ndims, int64_t **shapes,
                                          const char **dtypes, void *stream, void *extra) {
  Dims d;
  if (nparam != 3 || !GetDims(ndims[0], shapes[0], ndims[1], shapes[1], &d)) return 1;
  const auto taps = TapsMajor(static_cast<const float *>(params[1]), d);
  Correlate(static_cast<const float *>(params[0]), taps, d, -1, static_cast<float *>(params[2]));
  return 0;
}

// Inputs: dy (N, H, W, C), x (N, H, W, C), weight (C, 1, K, K) (for its shape).
// Output: dweight (C, 1, K, K). Per-image partial sums in float, the total in double.
extern "C" int DepthwiseConvBackwardWeight(int nparam, void **params, int *ndims, int64_t **shapes,
                                           const char **dtypes, void *stream, void *extra) {
  Dims d;
  if (nparam != 4 || !GetDims(ndims[1], shapes[1], ndims[2], shapes[2], &d)) return 1;
  const float *dy = static_cast<const float *>(params[0]);
  const float *x = static_cast<const float *>(params[1]);
  float *dwt = static_cast<float *>(params[3]);
  // per-image partial sums in float on the pool, their total in double in the order of the images
  const Dims dims = d;
  std::vector<float> partials(d.n * d.k * d.k * d.c);
  float *parts = partials.data();
  convmlp::ParallelRange(d.n, d.h * d.w * d.k * d.k * d.c, [=](int64_t n0, int64_t n1) {
    WeightGradImages(dy, x, dims, n0, n1, parts);
  });
  convmlp::ParallelRange(d.k * d.k * d.c, d.n, [=](int64_t q0, int64_t q1) { AddImages(parts, dims, q0, q1, dwt); });
  return 0;
}
