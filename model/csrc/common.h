// Helpers shared by the C++ CPU kernels of model/cpu_kernels/.
#ifndef CONVMLP_CSRC_COMMON_H_
#define CONVMLP_CSRC_COMMON_H_

#include <cmath>
#include <cstdint>

namespace convmlp {

// Number of elements of a tensor of `ndim` dimensions `shape` (MindSpore AOT kernel arguments).
inline int64_t Numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

// q[i] = max(0, p[i] * scale + shift) for i < n: the per-channel affine map of a BatchNorm
// followed by ReLU.
inline void ScaleShiftRelu(const float *p, float *q, int64_t n, float scale, float shift) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = p[i] * scale + shift;
    q[i] = v > 0.0f ? v : 0.0f;
  }
}

// LayerNorm of one row of c values (two-pass variance: no cancellation for rows with a large
// mean): y = (x - mean) * rstd * gamma + beta, rstd = 1 / sqrt(var + eps). Returns the mean and
// rstd through `mean_out` and `rstd_out`.
inline void LayerNormRow(const float *x, const float *gamma, const float *beta, float eps, int64_t c, float *y,
                         float *mean_out, float *rstd_out) {
  const float inv_c = 1.0f / static_cast<float>(c);
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < c; ++i) sum += x[i];
  const float mean = sum * inv_c;
  float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
  for (int64_t i = 0; i < c; ++i) {
    const float d = x[i] - mean;
    sq += d * d;
  }
  const float rstd = 1.0f / std::sqrt(sq * inv_c + eps);
#pragma omp simd
  for (int64_t i = 0; i < c; ++i) y[i] = (x[i] - mean) * rstd * gamma[i] + beta[i];
  *mean_out = mean;
  *rstd_out = rstd;
}

}  // namespace convmlp

#endif  // CONVMLP_CSRC_COMMON_H_
