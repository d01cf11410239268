// Bias addition over the last axis and its bias gradient, float32, for MindSpore's Custom "aot"
// op on the CPU (see model/cpu_kernels/): the bias half of ConvMLP's Dense layers.
// MindSpore 2.10's BiasAddGrad is slow on ConvMLP's gradients (benchmarks/RESULTS.md, "Figures
// behind the kernels"); here the row sum runs over C innermost (vectorised), in float
// blocks of 256 rows added into double totals.
#include <cstdint>
#include <vector>

#include "common.h"


// Inputs: x (..., C), bias (C). Output: y (..., C) = x + bias.
extern "C" int BiasAddForward(int nparam, void **params, int *ndims, int64_t **shapes,
                              const char **dtypes, void *stream, void *extra) {
  if (nparam != 3 || ndims[0] < 1 || ndims[1] != 1) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *b = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  const int64_t c = shapes[0][ndims[0] - 1];
  if (c != shapes[1][0]) return 1;
  if (c == 0) return 0;
  const int64_t rows = convmlp::Numel(ndims[0], shapes[0]) / c;
  for (int64_t r = 0; r < rows; ++r) {
    const float *xr = x + r * c;
    float *yr = y + r * c;
#pragma omp simd
    for (int64_t i = 0; i < c; ++i) yr[i] = xr[i] + b[i];
  }
  return 0;
}

// Inputs: dy (..., C). Output: dbias (C) = sum of dy over every axis but the last.
extern "C" int BiasAddBackward(int nparam, void **params, int *ndims, int64_t **shapes,
                               const char **dtypes, void *stream, void *extra) {
  if (nparam != 2 || ndims[0] < 1) return 1;
  const float *dy = static_cast<const float *>(params[0]);
  float *db = static_cast<float *>(params[1]);
  const int64_t c = shapes[0][ndims[0] - 1];
  if (c == 0) return 0;
  const int64_t rows = convmlp::Numel(ndims[0], shapes[0]) / c;
  constexpr int64_t kBlock = 256;
  std::vector<double> total(c, 0.0);
  std::vector<float> part(c);
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    const int64_t r1 = r0 + kBlock < rows ? r0 + kBlock : rows;
    for (int64_t i = 0; i < c; ++i) part[i] = 0.0f;
    for (int64_t r = r0; r < r1; ++r) {
      const float *g = dy + r * c;
#pragma omp simd
      for (int64_t i = 0; i < c; ++i) part[i] += g[i];
    }
    for (int64_t i = 0; i < c; ++i) total[i] += part[i];
  }
  for (int64_t i = 0; i < c; ++i) db[i] = static_cast<float>(total[i]);
  return 0;
}
