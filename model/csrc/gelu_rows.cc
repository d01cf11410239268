// Exact (erf) GELU in place over a buffer, for the fused inference path (infer_onednn.cc: the
// hidden activations of a tile of rows, between the channel MLP's two products). Compiled with
// -ffast-math, as gelu.cc, so that GCC vectorises erff through glibc's libmvec.
#include <cmath>
#include <cstdint>

namespace convmlp {

void GeluInPlace(float *x, int64_t n) {
  constexpr float kInvSqrt2 = 0.70710678118654752440f;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    x[i] = 0.5f * v * (1.0f + erff(v * kInvSqrt2));
  }
}

}  // namespace convmlp
