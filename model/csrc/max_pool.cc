// 2-D max pooling whose padding is never selected (as torch.nn.MaxPool2d and
// mindspore.nn.MaxPool2d(pad_mode="pad")), NCHW float32, forward and backward, for MindSpore's
// Custom "aot" op on the CPU (see model/cpu_kernels/).
//
// MindSpore 2.10 runs the padded max-pool as MaxPool3DWithArgmax, whose CPU forward is slow
// (benchmarks/RESULTS.md, "Figures behind the kernels"). Here the forward writes the maximum and
// the offset of the first maximum in row-major window order (PyTorch's rule, which decides where
// the gradient of a tie goes: after ReLU many windows are all zeros); the backward adds each
// output gradient at that offset. A window holding a NaN gives NaN. Planes are split over the
// library's worker pool (common.h).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <vector>

#include "common.h"

namespace {

struct Geometry {
  int64_t planes, h, w, oh, ow, k, s, p;
};

bool MakeGeometry(const int64_t *in, const int64_t *out, const int32_t *cfg, Geometry *g) {
  g->planes = in[0] * in[1];
  g->h = in[2];
  g->w = in[3];
  g->oh = out[2];
  g->ow = out[3];
  g->k = cfg[0];
  g->s = cfg[1];
  g->p = cfg[2];
  return g->k > 0 && g->s > 0 && g->p >= 0 && 2 * g->p <= g->k;
}

// One output of one plane, any position (borders included).
inline void Window(const float *xp, const Geometry &g, int64_t oy, int64_t ox, float *y, int32_t *arg) {
  const int64_t y0 = oy * g.s - g.p, x0 = ox * g.s - g.p;
  float m = -INFINITY;
  int32_t at = -1;
  bool nan = false;
  for (int64_t i = 0; i < g.k; ++i) {
    const int64_t yy = y0 + i;
    if (yy < 0 || yy >= g.h) continue;
    for (int64_t j = 0; j < g.k; ++j) {
      const int64_t xx = x0 + j;
      if (xx < 0 || xx >= g.w) continue;
      const float v = xp[yy * g.w + xx];
      nan |= (v != v);
      if (at < 0 || v > m) {
        m = v;
        at = static_cast<int32_t>(yy * g.w + xx);
      }
    }
  }
  *y = nan ? NAN : m;
  *arg = at;
}

// All outputs of one plane from its -inf framed copy `padded` (row length wp). (Compile-time
// kernel/stride specialisations were tried: GCC then vectorises the short rows with gathers and
// the kernel gets slower.)
void PoolPlane(const float *padded, int64_t wp, const Geometry &g, float *yp, int32_t *ap) {
  const int64_t k = g.k, s = g.s;
  for (int64_t oy = 0; oy < g.oh; ++oy) {
    float *m = yp + oy * g.ow;
    int32_t *at = ap + oy * g.ow;
    const float *top = padded + oy * s * wp;
    for (int64_t o = 0; o < g.ow; ++o) {
      m[o] = -INFINITY;
      at[o] = -1;  // stays -1 only for a window of -inf values: no gradient
    }
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < k; ++j) {
        const float *tap = top + i * wp + j;
        // offset of this tap of output o in the unpadded plane: row_offset + o * s
        const int32_t row_offset = static_cast<int32_t>((oy * s - g.p + i) * g.w + j - g.p);
        for (int64_t o = 0; o < g.ow; ++o) {
          const float v = tap[o * s];
          const bool gt = v > m[o];
          m[o] = gt ? v : m[o];
          at[o] = gt ? row_offset + static_cast<int32_t>(o * s) : at[o];
        }
      }
    }
  }
}

// The planes [pl0, pl1) of the forward.
__attribute__((noinline))
void PoolPlanes(const float *x, Geometry g, int64_t hp, int64_t wp, int64_t pl0, int64_t pl1, float *y, int32_t *arg) {
  const int64_t in_plane = g.h * g.w, out_plane = g.oh * g.ow;
  std::vector<float> scratch(hp * wp, -INFINITY);
  for (int64_t pl = pl0; pl < pl1; ++pl) {
    const float *xp = x + pl * in_plane;
    float *yp = y + pl * out_plane;
    int32_t *ap = arg + pl * out_plane;
    bool nan = false;
    for (int64_t i = 0; i < in_plane; ++i) nan |= (xp[i] != xp[i]);
    if (nan) {
      for (int64_t oy = 0; oy < g.oh; ++oy)
        for (int64_t ox = 0; ox < g.ow; ++ox) Window(xp, g, oy, ox, yp + oy * g.ow + ox, ap + oy * g.ow + ox);
      continue;
    }
    for (int64_t r = 0; r < g.h; ++r) std::memcpy(&scratch[(r + g.p) * wp + g.p], xp + r * g.w, sizeof(float) * g.w);
    PoolPlane(scratch.data(), wp, g, yp, ap);
  }
}

// The planes [pl0, pl1) of the backward.
__attribute__((noinline))
void ScatterPlanes(const float *dy, const int32_t *arg, int64_t in_plane, int64_t out_plane, int64_t pl0, int64_t pl1,
                   float *dx) {
  std::memset(dx + pl0 * in_plane, 0, sizeof(float) * (pl1 - pl0) * in_plane);
  for (int64_t pl = pl0; pl < pl1; ++pl) {
    const float *dyp = dy + pl * out_plane;
    const int32_t *ap = arg + pl * out_plane;
    float *dxp = dx + pl * in_plane;
    for (int64_t o = 0; o < out_plane; ++o) {
      const int32_t at = ap[o];
      if (at >= 0 && at < in_plane) dxp[at] += dyp[o];
    }
  }
}

}  // namespace

// Inputs: x (N, C, H, W), cfg int32 (3) = kernel, stride, padding.
// Outputs: y (N, C, OH, OW), argmax int32 (N, C, OH, OW) = offset within the (H, W) plane.
extern "C" int MaxPoolForward(int nparam, void **params, int *ndims, int64_t **shapes,
                              const char **dtypes, void *stream, void *extra) {
  if (nparam != 4 || ndims[0] != 4 || ndims[2] != 4) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const int32_t *cfg = static_cast<const int32_t *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  int32_t *arg = static_cast<int32_t *>(params[3]);
  Geometry g;
  if (!MakeGeometry(shapes[0], shapes[2], cfg, &g)) return 1;
  // Each plane is copied into a scratch plane framed by -inf (never selected); then every output
  // is an interior one: taps in row-major order, outputs of a row innermost and branch-free (so
  // the loop vectorises), a strict > keeping the first maximum. Offsets are written in the
  // unpadded plane's coordinates. A plane holding a NaN takes the plain per-window path.
  const int64_t hp = std::max<int64_t>(g.h + 2 * g.p, (g.oh - 1) * g.s + g.k);
  const int64_t wp = std::max<int64_t>(g.w + 2 * g.p, (g.ow - 1) * g.s + g.k);
  const int64_t work = g.h * g.w + g.oh * g.ow * g.k * g.k;
  convmlp::ParallelRange(g.planes, work, [=](int64_t pl0, int64_t pl1) { PoolPlanes(x, g, hp, wp, pl0, pl1, y, arg); });
  return 0;
}

// Inputs: dy (N, C, OH, OW), argmax int32 (N, C, OH, OW), x (N, C, H, W) (for its shape).
// Output: dx (N, C, H, W).
extern "C" int MaxPoolBackward(int nparam, void **params, int *ndims, int64_t **shapes,
                               const char **dtypes, void *stream, void *extra) {
  if (nparam != 4 || ndims[0] != 4 || ndims[2] != 4) return 1;
  const float *dy = static_cast<const float *>(params[0]);
  const int32_t *arg = static_cast<const int32_t *>(params[1]);
  float *dx = static_cast<float *>(params[3]);
  const int64_t planes = shapes[2][0] * shapes[2][1];
  const int64_t in_plane = shapes[2][2] * shapes[2][3];
  const int64_t out_plane = shapes[0][2] * shapes[0][3];
  convmlp::ParallelRange(planes, in_plane + out_plane, [=](int64_t pl0, int64_t pl1) {
    ScatterPlanes(dy, arg, in_plane, out_plane, pl0, pl1, dx);
  });
  return 0;
}
