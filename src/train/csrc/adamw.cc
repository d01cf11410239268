// AdamW over every parameter of a model in one call, float32, in place, for MindSpore's Custom
// "aot" op on the CPU (see src/train/optim.py): MindSpore's AdamWeightDecay is one kernel per
// parameter tensor (157 for ConvMLP-S). The update is torch.optim.AdamW's (decoupled weight decay,
// bias correction), element by element:
//
//   p <- p * (1 - lr * wd)
//   m <- m + (1 - beta1) * (g - m)          (torch's lerp)
//   v <- beta2 * v + (1 - beta2) * g * g
//   p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//
// The element range of all tensors together is split evenly over the library's worker pool
// (model/csrc/common.h; memory-bound).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common.h"

namespace {

struct Step {
  float one_minus_b1, b2, one_minus_b2, step_size, sqrt_bc2, eps;
};

void Update(float *p, float *m, float *v, const float *g, int64_t begin, int64_t end, const Step &s,
            float decay_factor) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    const float gi = g[i];
    const float mi = m[i] + s.one_minus_b1 * (gi - m[i]);
    const float vi = s.b2 * v[i] + s.one_minus_b2 * gi * gi;
    const float denom = std::sqrt(vi) / s.sqrt_bc2 + s.eps;
    p[i] = p[i] * decay_factor - s.step_size * (mi / denom);
    m[i] = mi;
    v[i] = vi;
  }
}

}  // namespace

// Inputs: hyper float64 (5) = lr, beta1, beta2, eps, step t (>= 1); wd float64 (N) per-tensor weight
// decay (in double, as torch's Python scalars; the factors are rounded to float32 as torch does); then
// the N parameters, the N first moments, the N second moments, the N gradients (same shapes,
// tensor by tensor). Output: out (1) = t. Parameters and moments are updated in place.
extern "C" int AdamWUpdate(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                           void *stream, void *extra) {
  if (nparam < 7 || (nparam - 3) % 4 != 0) return 1;
  const int64_t n = (nparam - 3) / 4;
  if (shapes[1][0] != n || ndims[0] != 1 || shapes[0][0] != 5) return 1;
  const double *hyper = static_cast<const double *>(params[0]);
  const double *wd = static_cast<const double *>(params[1]);
  std::vector<int64_t> start(n + 1, 0);  // element offsets of the tensors in the joint range
  for (int64_t k = 0; k < n; ++k) {
    const int64_t size = convmlp::Numel(ndims[2 + k], shapes[2 + k]);
    for (int j = 1; j < 4; ++j) {
      if (convmlp::Numel(ndims[2 + j * n + k], shapes[2 + j * n + k]) != size) return 1;
    }
    start[k + 1] = start[k] + size;
  }
  const double lr = hyper[0], b1 = hyper[1], b2 = hyper[2], t = hyper[4];
  const double bc1 = 1.0 - std::pow(b1, t), bc2 = 1.0 - std::pow(b2, t);
  const Step s{static_cast<float>(1.0 - b1), static_cast<float>(b2), static_cast<float>(1.0 - b2),
               static_cast<float>(lr / bc1), static_cast<float>(std::sqrt(bc2)), static_cast<float>(hyper[3])};
  auto run = [&](int64_t lo, int64_t hi) {  // the joint elements [lo, hi)
    for (int64_t k = std::upper_bound(start.begin(), start.end(), lo) - start.begin() - 1; k < n && start[k] < hi;
         ++k) {
      const int64_t b = std::max(lo, start[k]) - start[k], e = std::min(hi, start[k + 1]) - start[k];
      const float decay = static_cast<float>(1.0 - lr * wd[k]);
      Update(static_cast<float *>(params[2 + k]), static_cast<float *>(params[2 + n + k]),
             static_cast<float *>(params[2 + 2 * n + k]), static_cast<const float *>(params[2 + 3 * n + k]), b, e,
             s, decay);
    }
  };
  convmlp::ParallelRange(start[n], 4, run, 16);
  *static_cast<float *>(params[nparam - 1]) = static_cast<float>(t);
  return 0;
}
