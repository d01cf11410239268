// LayerNorm over the last axis, forward and backward, float32, for MindSpore's Custom "aot" op on
// the CPU (see model/cpu_kernels/). Same function as torch.nn.LayerNorm / mindspore.nn.LayerNorm
// with begin_norm_axis = begin_params_axis = -1: y = (x - mean) * rstd * gamma + beta with
// rstd = 1 / sqrt(var + eps), var the biased variance of the row.
//
// Kernel signature (MindSpore AOT): int f(int nparam, void **params, int *ndims, int64_t **shapes,
// const char **dtypes, void *stream, void *extra); inputs first, then outputs; 0 = success.
#include <cmath>
#include <cstdint>
#include <vector>

#include "common.h"


// Inputs: x (..., C), gamma (C), beta (C), eps (1). Outputs: y (..., C), mean (...), rstd (...).
extern "C" int LayerNormForward(int nparam, void **params, int *ndims, int64_t **shapes,
                                const char **dtypes, void *stream, void *extra) {
  if (nparam != 7 || ndims[0] < 1) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *gamma = static_cast<const float *>(params[1]);
  const float *beta = static_cast<const float *>(params[2]);
  const float eps = *static_cast<const float *>(params[3]);
  float *y = static_cast<float *>(params[4]);
  float *mean_out = static_cast<float *>(params[5]);
  float *rstd_out = static_cast<float *>(params[6]);
  const int64_t c = shapes[0][ndims[0] - 1];
  if (c <= 0) return 0;
  const int64_t rows = convmlp::Numel(ndims[0], shapes[0]) / c;
  for (int64_t r = 0; r < rows; ++r) {
    convmlp::LayerNormRow(x + r * c, gamma, beta, eps, c, y + r * c, mean_out + r, rstd_out + r);
  }
  return 0;
}

// Inputs: dy (..., C), x (..., C), gamma (C), mean (...), rstd (...).
// Outputs: dx (..., C), dgamma (C), dbeta (C).
//   xhat = (x - mean) * rstd, g = dy * gamma
//   dx = rstd * (g - mean_C(g) - xhat * mean_C(g * xhat))
//   dgamma = sum_rows(dy * xhat), dbeta = sum_rows(dy)   (accumulated in double)
extern "C" int LayerNormBackward(int nparam, void **params, int *ndims, int64_t **shapes,
                                 const char **dtypes, void *stream, void *extra) {
  if (nparam != 8 || ndims[0] < 1) return 1;
  const float *dy = static_cast<const float *>(params[0]);
  const float *x = static_cast<const float *>(params[1]);
  const float *gamma = static_cast<const float *>(params[2]);
  const float *mean = static_cast<const float *>(params[3]);
  const float *rstd = static_cast<const float *>(params[4]);
  float *dx = static_cast<float *>(params[5]);
  float *dgamma = static_cast<float *>(params[6]);
  float *dbeta = static_cast<float *>(params[7]);
  const int64_t c = shapes[0][ndims[0] - 1];
  if (c <= 0) return 0;
  const int64_t rows = convmlp::Numel(ndims[0], shapes[0]) / c;
  const float inv_c = 1.0f / static_cast<float>(c);
  std::vector<double> acc_gamma(c, 0.0), acc_beta(c, 0.0);
  std::vector<float> xhat(c);
  for (int64_t r = 0; r < rows; ++r) {
    const float *xr = x + r * c;
    const float *dyr = dy + r * c;
    float *dxr = dx + r * c;
    const float m = mean[r], rs = rstd[r];
    float sum_g = 0.0f, sum_gx = 0.0f;
#pragma omp simd reduction(+ : sum_g, sum_gx)
    for (int64_t i = 0; i < c; ++i) {
      const float xh = (xr[i] - m) * rs;
      const float g = dyr[i] * gamma[i];
      xhat[i] = xh;
      sum_g += g;
      sum_gx += g * xh;
    }
    const float a = sum_g * inv_c, b = sum_gx * inv_c;
#pragma omp simd
    for (int64_t i = 0; i < c; ++i) {
      dxr[i] = rs * (dyr[i] * gamma[i] - a - xhat[i] * b);
      acc_gamma[i] += static_cast<double>(dyr[i] * xhat[i]);
      acc_beta[i] += static_cast<double>(dyr[i]);
    }
  }
  for (int64_t i = 0; i < c; ++i) {
    dgamma[i] = static_cast<float>(acc_gamma[i]);
    dbeta[i] = static_cast<float>(acc_beta[i]);
  }
  return 0;
}
