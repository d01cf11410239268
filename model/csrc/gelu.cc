// Exact (erf) GELU, forward and backward, float32, for MindSpore's Custom "aot" op on the CPU (see
// model/cpu_kernels/): y = x * Phi(x) with Phi(x) = (1 + erf(x / sqrt(2))) / 2, and
// dx = dy * (Phi(x) + x * phi(x)), phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
//
// This file is compiled with -ffast-math (but linked without it, so the process's floating-point
// mode is not touched): with it glibc >= 2.35 lets GCC vectorise erff/expf through libmvec's
// SIMD variants; with an older C library the same loops call the scalar functions. The elements
// are split over the library's worker pool (common.h).
#include <cmath>
#include <cstdint>

#include "common.h"

namespace {

// The element-wise loops are never inlined: one compiled copy of each (one split into full vectors,
// shorter vectors and scalar erff/expf calls for a given range), whichever path calls it, so that
// a chunk gives the same bits on the pool or on the calling thread.

__attribute__((noinline))
void GeluRange(const float *x, int64_t lo, int64_t hi, float *y) {
#pragma omp simd
  for (int64_t i = lo; i < hi; ++i) y[i] = convmlp::Gelu(x[i]);
}

__attribute__((noinline))
void GeluGradRange(const float *dy, const float *x, int64_t lo, int64_t hi, float *dx) {
#pragma omp simd
  for (int64_t i = lo; i < hi; ++i) dx[i] = dy[i] * convmlp::GeluGrad(x[i]);
}

__attribute__((noinline))
void BiasGeluRows(const float *x, const float *b, int64_t c, int64_t r0, int64_t r1, float *y) {
  for (int64_t r = r0; r < r1; ++r) {
    const float *xr = x + r * c;
    float *yr = y + r * c;
#pragma omp simd
    for (int64_t i = 0; i < c; ++i) yr[i] = convmlp::Gelu(xr[i] + b[i]);
  }
}

}  // namespace

namespace convmlp {

void BiasGeluGradBlock(const float *dy, const float *x, const float *b, int64_t c, int64_t r0, int64_t r1, int64_t i0,
                       int64_t i1, float *dz) {
  for (int64_t r = r0; r < r1; ++r) {
    const float *dyr = dy + r * c, *xr = x + r * c;
    float *dzr = dz + r * c;
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) dzr[i] = dyr[i] * GeluGrad(xr[i] + b[i]);
  }
}

}  // namespace convmlp

// Inputs: x. Outputs: y (same shape).
extern "C" int GeluForward(int nparam, void **params, int *ndims, int64_t **shapes,
                           const char **dtypes, void *stream, void *extra) {
  if (nparam != 2) return 1;
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  const int64_t n = convmlp::Numel(ndims[0], shapes[0]);
  convmlp::ParallelRange(n, 4, [=](int64_t lo, int64_t hi) { GeluRange(x, lo, hi, y); }, 16);
  return 0;
}

// The bias of the Dense layer before the GELU, in the same pass (ConvMLP's channel MLPs: fc1's
// product, then this). Inputs: x (..., C), bias (C). Output: y = GELU(x + bias). The sum is rounded
// to float as the separate bias kernel rounds it; the backward (bias_add.cc) adds it again.
extern "C" int BiasGeluForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                               void *stream, void *extra) {
  int64_t rows, c;
  if (nparam != 3 || !convmlp::RowsOfChannels(ndims, shapes, 0, 1, &rows, &c)) return 1;
  if (c == 0) return 0;
  const float *x = static_cast<const float *>(params[0]);
  const float *b = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  convmlp::ParallelRange(rows, 4 * c, [=](int64_t r0, int64_t r1) { BiasGeluRows(x, b, c, r0, r1, y); });
  return 0;
}

// Inputs: dy, x. Outputs: dx (same shape).
extern "C" int GeluBackward(int nparam, void **params, int *ndims, int64_t **shapes,
                            const char **dtypes, void *stream, void *extra) {
  if (nparam != 3) return 1;
  const float *dy = static_cast<const float *>(params[0]);
  const float *x = static_cast<const float *>(params[1]);
  float *dx = static_cast<float *>(params[2]);
  const int64_t n = convmlp::Numel(ndims[1], shapes[1]);
  convmlp::ParallelRange(n, 6, [=](int64_t lo, int64_t hi) { GeluGradRange(dy, x, lo, hi, dx); }, 16);
  return 0;
}
