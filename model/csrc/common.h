// Helpers shared by the C++ CPU kernels of model/cpu_kernels/.
#ifndef CONVMLP_CSRC_COMMON_H_
#define CONVMLP_CSRC_COMMON_H_

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

}  // namespace convmlp

#endif  // CONVMLP_CSRC_COMMON_H_
