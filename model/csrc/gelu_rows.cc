// Exact (erf) GELU in place over a buffer, for the fused inference path (infer_onednn.cc: the
// hidden activations of a tile of rows, between the channel MLP's two products). Compiled with
// -ffast-math, as gelu.cc, so that GCC vectorises erff through glibc's libmvec.
#include <cstdint>

#include "common.h"

namespace convmlp {

void GeluInPlace(float *x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = Gelu(x[i]);
}

}  // namespace convmlp
