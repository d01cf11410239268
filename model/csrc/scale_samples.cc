// Per-sample scaling y[b, ...] = x[b, ...] * s[b], float32, for MindSpore's Custom "aot" op on the
// CPU (see model/cpu_kernels/): stochastic depth ("drop path") multiplies each sample's residual
// branch by 0 or 1 / keep_prob. MindSpore 2.10's broadcasting Mul builds index vectors of the
// output's size for a (B, ...) x (B, 1, ...) product and its gradient (hundreds of MiB held in
// 224 px training); the gradient here is the same scaling of dy.
#include <algorithm>
#include <cstdint>

#include "common.h"

namespace {

// The elements [lo, hi) of y (across samples of `per` elements each).
__attribute__((noinline))
void ScaleRange(const float *x, const float *s, int64_t per, int64_t lo, int64_t hi, float *y) {
  for (int64_t b = lo / per; b * per < hi; ++b) {
    const float scale = s[b];
    const int64_t i0 = std::max(lo, b * per), i1 = std::min(hi, (b + 1) * per);
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) y[i] = x[i] * scale;
  }
}

}  // namespace

// Inputs: x (B, ...), s (B). Output: y (B, ...).
extern "C" int ScaleSamples(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                            void *stream, void *extra) {
  if (nparam != 3 || ndims[0] < 1 || ndims[1] != 1 || shapes[1][0] != shapes[0][0]) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *s = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  const int64_t batch = shapes[0][0];
  if (batch == 0) return 0;
  const int64_t per = convmlp::Numel(ndims[0], shapes[0]) / batch;
  convmlp::ParallelRange(batch * per, 1, [=](int64_t lo, int64_t hi) { ScaleRange(x, s, per, lo, hi, y); }, 16);
  return 0;
}
