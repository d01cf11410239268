// Helpers shared by the C++ CPU kernels of model/cpu_kernels/.
#ifndef CONVMLP_CSRC_COMMON_H_
#define CONVMLP_CSRC_COMMON_H_

#include <sched.h>

#include <cmath>
#include <cstdint>
#include <thread>

namespace convmlp {

// Cores this process may run on (its CPU affinity), at least 1.
inline int CoresAvailable() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

// Exact (erf) GELU of one value: v * Phi(v), Phi(v) = (1 + erf(v / sqrt(2))) / 2. The files that call
// it in loops are compiled with -ffast-math, so that GCC vectorises erff through glibc's libmvec.
inline float Gelu(float v) { return 0.5f * v * (1.0f + erff(v * kInvSqrt2)); }

// d GELU / dv = Phi(v) + v * phi(v), phi(v) = exp(-v^2 / 2) / sqrt(2 pi).
inline float GeluGrad(float v) {
  return 0.5f * (1.0f + erff(v * kInvSqrt2)) + v * kInvSqrt2Pi * expf(-0.5f * v * v);
}

// The depthwise weight (C, 1, K, K) (a grouped Conv2d's layout) as taps-major (K*K, C) in `taps`,
// so that the loops over channels, innermost, read it contiguously.
inline void DepthwiseTaps(const float *wt, int64_t c, int64_t k, float *taps) {
  for (int64_t ch = 0; ch < c; ++ch)
    for (int64_t q = 0; q < k * k; ++q) taps[q * c + ch] = wt[ch * k * k + q];
}

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
