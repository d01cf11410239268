// Helpers shared by the C++ CPU kernels of model/cpu_kernels/.
#ifndef CONVMLP_CSRC_COMMON_H_
#define CONVMLP_CSRC_COMMON_H_

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace convmlp {

// The worker pool of the library (pool.cc, compiled into each library that uses it): a fixed set
// of $CONVMLP_CONV_THREADS threads (default: the cores this process may use). PoolRun(n, task, ctx)
// runs task(ctx, i) for every i in [0, n) on the workers and the calling thread and returns when
// all are done; which thread runs which i is left to timing, so a result must depend on i alone.
// One job at a time; a job started from inside a job runs on the calling thread.
int PoolThreads();
bool PoolInside();
void PoolRun(int n, void (*task)(void *ctx, int i), void *ctx);

// Below this many elements of work a kernel runs on the calling thread (waking a worker costs
// more than it saves).
constexpr int64_t kParallelGrain = int64_t(1) << 15;

// fn(begin, end) over [0, n) in contiguous chunks, for items that are independent of each other,
// `per_item` elements of work each. The chunks depend on n, per_item and `align` alone (at least
// kParallelGrain elements of work each, at most kMaxChunks, their bounds multiples of `align`
// items), not on the threads; element-wise loops pass align 16 (a vector of floats), so that a loop
// vectorised with a scalar remainder (erff, expf) treats every element the same way with any number
// of threads. On the calling thread, in order, when the pool has one thread. The kernels' loops
// over a chunk are functions that are never inlined: one compiled copy of each, whichever path
// (pool or calling thread) runs the chunk.
constexpr int64_t kMaxChunks = 64;

template <typename F>
inline void ParallelRange(int64_t n, int64_t per_item, F fn, int64_t align = 1) {
  if (n <= 0) return;
  const int64_t work = n * std::max<int64_t>(per_item, 1);
  const int64_t chunks =
      std::max<int64_t>(1, std::min<int64_t>({(n + align - 1) / align, kMaxChunks, work / kParallelGrain}));
  auto bound = [n, chunks, align](int64_t i) { return i == chunks ? n : n * i / chunks / align * align; };
  if (chunks == 1) {
    fn(int64_t(0), n);
    return;
  }
  if (PoolThreads() == 1) {
    for (int64_t i = 0; i < chunks; ++i) fn(bound(i), bound(i + 1));
    return;
  }
  auto body = [&](int i) { fn(bound(i), bound(i + 1)); };
  PoolRun(static_cast<int>(chunks), [](void *ctx, int i) { (*static_cast<decltype(body) *>(ctx))(i); }, &body);
}

// fn(begin, end) over the columns [0, c) of a (rows, c) row-major array, in chunks of whole
// 16-column groups (full vectors): for per-column reductions over the rows, each column's result
// computed by one thread in the order of the rows, the same whatever the split.
template <typename F>
inline void ParallelColumns(int64_t c, int64_t rows, F fn) {
  const int64_t groups = (c + 15) / 16;
  ParallelRange(groups, 16 * rows, [&](int64_t g0, int64_t g1) { fn(16 * g0, std::min(c, 16 * g1)); });
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

// dz = dy * GELU'(x + b) for the rows [r0, r1) and the columns [i0, i1) of (rows, c) arrays
// (gelu.cc, compiled with -ffast-math for libmvec's erff/expf).
void BiasGeluGradBlock(const float *dy, const float *x, const float *b, int64_t c, int64_t r0, int64_t r1, int64_t i0,
                       int64_t i1, float *dz);

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

// The inputs `tensor` (..., C) and `bias` (C) of a Custom op: `c`, and `rows` the product of the
// tensor's other axes (0 when C is 0); false when the two shapes do not go together.
inline bool RowsOfChannels(const int *ndims, int64_t *const *shapes, int tensor, int bias, int64_t *rows,
                           int64_t *c) {
  if (ndims[tensor] < 1 || ndims[bias] != 1) return false;
  *c = shapes[tensor][ndims[tensor] - 1];
  if (*c != shapes[bias][0]) return false;
  *rows = *c == 0 ? 0 : Numel(ndims[tensor], shapes[tensor]) / *c;
  return true;
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
