// Training-mode BatchNorm (batch statistics) fused with the ReLU that follows it, NCHW float32,
// forward and backward, for MindSpore's Custom "aot" op on the CPU (see model/cpu_kernels/).
// ConvMLP's tokenizer and conv stage are conv -> BatchNorm -> ReLU; MindSpore 2.10 runs the
// BatchNorm on oneDNN's plain-layout path and the ReLU and both gradients as separate passes
// (their cost: benchmarks/RESULTS.md, "Figures behind the kernels").
//
//   mean_c = E[x], var_c = E[(x - mean_c)^2] (biased, for normalising), rstd_c = 1/sqrt(var_c + eps)
//   y = max(0, (x - mean_c) * rstd_c * gamma_c + beta_c)
//   backward, g = dy * (y > 0), xhat = (x - mean) * rstd, M = N*H*W:
//   dbeta = sum g, dgamma = sum g * xhat, dx = gamma * rstd * (g - dbeta / M - xhat * dgamma / M)
// Channel sums accumulate in double. The unbiased variance (for the moving statistic, as
// torch.nn.BatchNorm2d and mindspore.nn.BatchNorm2d) is an output; the caller updates the
// moving averages. Channels are split over the library's worker pool (common.h); each channel is
// computed by one thread in a fixed order, so results do not depend on the threads.
#include <cmath>
#include <cstdint>

#include "common.h"

namespace {

struct Shape {
  int64_t n, c, plane;
};

Shape GetShape(const int64_t *s) { return Shape{s[0], s[1], s[2] * s[3]}; }

// The loops of each kernel over the channels [c0, c1), as functions of their own (their arguments
// are locals, so that the compiler vectorises the inner loops).
__attribute__((noinline))
void ForwardChannels(const float *x, const float *gamma, const float *beta, float eps, Shape s, int64_t c0,
                     int64_t c1, float *y, float *mean_out, float *rstd_out, float *var_out) {
  const int64_t m = s.n * s.plane;
  for (int64_t c = c0; c < c1; ++c) {
    double sum = 0.0;
    for (int64_t n = 0; n < s.n; ++n) {
      const float *p = x + (n * s.c + c) * s.plane;
      float part = 0.0f;
#pragma omp simd reduction(+ : part)
      for (int64_t i = 0; i < s.plane; ++i) part += p[i];
      sum += part;
    }
    const float mean = static_cast<float>(sum / m);
    double sq = 0.0;
    for (int64_t n = 0; n < s.n; ++n) {
      const float *p = x + (n * s.c + c) * s.plane;
      float part = 0.0f;
#pragma omp simd reduction(+ : part)
      for (int64_t i = 0; i < s.plane; ++i) {
        const float d = p[i] - mean;
        part += d * d;
      }
      sq += part;
    }
    const double var = sq / m;
    const float rstd = static_cast<float>(1.0 / std::sqrt(var + eps));
    const float scale = rstd * gamma[c], shift = beta[c] - mean * scale;
    for (int64_t n = 0; n < s.n; ++n) {
      const int64_t off = (n * s.c + c) * s.plane;
      convmlp::ScaleShiftRelu(x + off, y + off, s.plane, scale, shift);
    }
    mean_out[c] = mean;
    rstd_out[c] = rstd;
    var_out[c] = static_cast<float>(m > 1 ? sq / (m - 1) : var);
  }
}

__attribute__((noinline))
void BackwardChannels(const float *dy, const float *y, const float *x, const float *gamma, const float *mean,
                      const float *rstd, Shape s, int64_t c0, int64_t c1, float *dx, float *dgamma, float *dbeta) {
  const int64_t m = s.n * s.plane;
  for (int64_t c = c0; c < c1; ++c) {
    const float mu = mean[c], rs = rstd[c];
    double sum_g = 0.0, sum_gx = 0.0;
    for (int64_t n = 0; n < s.n; ++n) {
      const int64_t off = (n * s.c + c) * s.plane;
      float part_g = 0.0f, part_gx = 0.0f;
#pragma omp simd reduction(+ : part_g, part_gx)
      for (int64_t i = 0; i < s.plane; ++i) {
        const float g = y[off + i] > 0.0f ? dy[off + i] : 0.0f;
        part_g += g;
        part_gx += g * (x[off + i] - mu);
      }
      sum_g += part_g;
      sum_gx += part_gx;
    }
    sum_gx *= rs;  // sum g * xhat
    dbeta[c] = static_cast<float>(sum_g);
    dgamma[c] = static_cast<float>(sum_gx);
    const float k = gamma[c] * rs;
    const float a = static_cast<float>(sum_g / m), b = static_cast<float>(sum_gx / m);
    for (int64_t n = 0; n < s.n; ++n) {
      const int64_t off = (n * s.c + c) * s.plane;
#pragma omp simd
      for (int64_t i = 0; i < s.plane; ++i) {
        const float g = y[off + i] > 0.0f ? dy[off + i] : 0.0f;
        const float xhat = (x[off + i] - mu) * rs;
        dx[off + i] = k * (g - a - xhat * b);
      }
    }
  }
}

__attribute__((noinline))
void InferenceChannels(const float *x, const float *gamma, const float *beta, const float *mean, const float *var,
                       float eps, Shape s, int64_t c0, int64_t c1, float *y) {
  for (int64_t c = c0; c < c1; ++c) {
    const float scale = gamma[c] / std::sqrt(var[c] + eps), shift = beta[c] - mean[c] * scale;
    for (int64_t n = 0; n < s.n; ++n) {
      const int64_t off = (n * s.c + c) * s.plane;
      convmlp::ScaleShiftRelu(x + off, y + off, s.plane, scale, shift);
    }
  }
}

}  // namespace

// Inputs: x (N, C, H, W), gamma (C), beta (C), eps (1).
// Outputs: y (N, C, H, W), mean (C), rstd (C), unbiased variance (C).
extern "C" int BatchNormReluForward(int nparam, void **params, int *ndims, int64_t **shapes,
                                    const char **dtypes, void *stream, void *extra) {
  if (nparam != 8 || ndims[0] != 4) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *gamma = static_cast<const float *>(params[1]);
  const float *beta = static_cast<const float *>(params[2]);
  const float eps = *static_cast<const float *>(params[3]);
  float *y = static_cast<float *>(params[4]);
  float *mean_out = static_cast<float *>(params[5]);
  float *rstd_out = static_cast<float *>(params[6]);
  float *var_out = static_cast<float *>(params[7]);
  const Shape s = GetShape(shapes[0]);
  const int64_t m = s.n * s.plane;
  if (m == 0) return 1;
  convmlp::ParallelRange(s.c, 3 * m, [=](int64_t c0, int64_t c1) {
    ForwardChannels(x, gamma, beta, eps, s, c0, c1, y, mean_out, rstd_out, var_out);
  });
  return 0;
}

// Inputs: dy, y, x (N, C, H, W), gamma (C), mean (C), rstd (C).
// Outputs: dx (N, C, H, W), dgamma (C), dbeta (C).
extern "C" int BatchNormReluBackward(int nparam, void **params, int *ndims, int64_t **shapes,
                                     const char **dtypes, void *stream, void *extra) {
  if (nparam != 9 || ndims[0] != 4) return 1;
  const float *dy = static_cast<const float *>(params[0]);
  const float *y = static_cast<const float *>(params[1]);
  const float *x = static_cast<const float *>(params[2]);
  const float *gamma = static_cast<const float *>(params[3]);
  const float *mean = static_cast<const float *>(params[4]);
  const float *rstd = static_cast<const float *>(params[5]);
  float *dx = static_cast<float *>(params[6]);
  float *dgamma = static_cast<float *>(params[7]);
  float *dbeta = static_cast<float *>(params[8]);
  const Shape s = GetShape(shapes[0]);
  const int64_t m = s.n * s.plane;
  if (m == 0) return 1;
  convmlp::ParallelRange(s.c, 2 * m, [=](int64_t c0, int64_t c1) {
    BackwardChannels(dy, y, x, gamma, mean, rstd, s, c0, c1, dx, dgamma, dbeta);
  });
  return 0;
}

// Evaluation mode: the moving statistics. Inputs: x (N, C, H, W), gamma, beta, moving_mean,
// moving_variance (C), eps (1). Output: y = max(0, (x - mean) / sqrt(var + eps) * gamma + beta).
extern "C" int BatchNormReluInference(int nparam, void **params, int *ndims, int64_t **shapes,
                                      const char **dtypes, void *stream, void *extra) {
  if (nparam != 7 || ndims[0] != 4) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *gamma = static_cast<const float *>(params[1]);
  const float *beta = static_cast<const float *>(params[2]);
  const float *mean = static_cast<const float *>(params[3]);
  const float *var = static_cast<const float *>(params[4]);
  const float eps = *static_cast<const float *>(params[5]);
  float *y = static_cast<float *>(params[6]);
  const Shape s = GetShape(shapes[0]);
  convmlp::ParallelRange(s.c, s.n * s.plane, [=](int64_t c0, int64_t c1) {
    InferenceChannels(x, gamma, beta, mean, var, eps, s, c0, c1, y);
  });
  return 0;
}
