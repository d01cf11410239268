// LayerNorm over the last axis, forward and backward, float32, for MindSpore's Custom "aot" op on
// the CPU (see model/cpu_kernels/). Same function as torch.nn.LayerNorm / mindspore.nn.LayerNorm
// with begin_norm_axis = begin_params_axis = -1: y = (x - mean) * rstd * gamma + beta with
// rstd = 1 / sqrt(var + eps), var the biased variance of the row.
//
// Kernel signature (MindSpore AOT): int f(int nparam, void **params, int *ndims, int64_t **shapes,
// const char **dtypes, void *stream, void *extra); inputs first, then outputs; 0 = success.
// Rows (blocks of rows in the backward) are split over the library's worker pool (common.h); each
// value is computed in a fixed order, so results do not depend on the threads.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common.h"


namespace {

// The loops of the kernels over a range of rows or columns, as functions of their own (their
// arguments are locals, so that the compiler vectorises the inner loops).

__attribute__((noinline))
void ForwardRows(const float *x, const float *gamma, const float *beta, float eps, int64_t c, int64_t r0, int64_t r1,
                 float *y, float *mean_out, float *rstd_out) {
  for (int64_t r = r0; r < r1; ++r) {
    convmlp::LayerNormRow(x + r * c, gamma, beta, eps, c, y + r * c, mean_out + r, rstd_out + r);
  }
}

constexpr int64_t kBlock = 256;  // rows per block of the parameter gradients' partial sums

// dx of the rows [r0, r1), and each block's sums of dy * xhat and dy over its rows (in double, in
// the order of the rows) in `partials`: 2 * c values per block, dgamma's then dbeta's.
__attribute__((noinline))
void BackwardRows(const float *dy, const float *x, const float *gamma, const float *mean, const float *rstd, int64_t c,
                  int64_t r0, int64_t r1, float *dx, double *partials) {
  const float inv_c = 1.0f / static_cast<float>(c);
  std::vector<float> buffer(c);
  float *xhat = buffer.data();
  for (int64_t r = r0; r < r1; ++r) {
    const float *xr = x + r * c;
    const float *dyr = dy + r * c;
    float *dxr = dx + r * c;
    double *acc_gamma = partials + (r / kBlock) * 2 * c, *acc_beta = acc_gamma + c;
    if (r % kBlock == 0) std::fill(acc_gamma, acc_gamma + 2 * c, 0.0);
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
}

// dgamma, dbeta of the columns [i0, i1): the blocks' sums added in the order of the blocks.
__attribute__((noinline))
void AddBlocks(const double *partials, int64_t blocks, int64_t c, int64_t i0, int64_t i1, float *dgamma, float *dbeta) {
  for (int64_t i = i0; i < i1; ++i) {
    double sum_gamma = 0.0, sum_beta = 0.0;
    for (int64_t k = 0; k < blocks; ++k) {
      sum_gamma += partials[k * 2 * c + i];
      sum_beta += partials[k * 2 * c + c + i];
    }
    dgamma[i] = static_cast<float>(sum_gamma);
    dbeta[i] = static_cast<float>(sum_beta);
  }
}

}  // namespace

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
  convmlp::ParallelRange(rows, c, [=](int64_t r0, int64_t r1) {
    ForwardRows(x, gamma, beta, eps, c, r0, r1, y, mean_out, rstd_out);
  });
  return 0;
}

// Inputs: dy (..., C), x (..., C), gamma (C), mean (...), rstd (...).
// Outputs: dx (..., C), dgamma (C), dbeta (C).
//   xhat = (x - mean) * rstd, g = dy * gamma
//   dx = rstd * (g - mean_C(g) - xhat * mean_C(g * xhat))
//   dgamma = sum_rows(dy * xhat), dbeta = sum_rows(dy)   (in double: blocks of 256 rows, then
//   the blocks' sums in their order)
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
  // blocks of kBlock rows on the pool (dx, and each block's parameter-gradient sums), then the
  // blocks' sums in their order: the same bits whatever the threads
  const int64_t blocks = (rows + kBlock - 1) / kBlock;
  std::vector<double> sums(blocks * 2 * c);
  double *partials = sums.data();
  convmlp::ParallelRange(blocks, 3 * kBlock * c, [=](int64_t k0, int64_t k1) {
    BackwardRows(dy, x, gamma, mean, rstd, c, k0 * kBlock, std::min(rows, k1 * kBlock), dx, partials);
  });
  convmlp::ParallelRange(c, blocks * 2, [=](int64_t i0, int64_t i1) {
    AddBlocks(partials, blocks, c, i0, i1, dgamma, dbeta);
  });
  return 0;
}
