// Winograd convolution, F(2x2, 3x3) and F(4x4, 3x3): see winograd.h.
#include "winograd.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <vector>

namespace convmlp {
namespace {

using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

constexpr int64_t kChunkBytes = int64_t(1) << 20;   // a chunk's transformed input and products
constexpr int64_t kSlabs = 4;   // the weight gradient's partial sums over the tiles
// floats between two positions' matrices beyond the matrix itself: a cache line, so that the
// transforms' 16 or 36 streams, one per position, do not fall on the same cache sets
constexpr int64_t kPositionPad = 16;

tag BlockedTag(int64_t block) { return block == 16 ? tag::aBcd16b : tag::aBcd8b; }

// The channels per vector for `src`: its block for oneDNN's blocked layouts, 16 (else 8) of the
// channels-last layout's when `out_channels` are too; 0 for any other layout.
int64_t VectorOf(const dnnl::memory::desc &src, int64_t out_channels) {
  const dnnl::memory::dims d = src.get_dims();
  if (d.size() != 4) return 0;
  for (int64_t b : {16, 8}) {
    if (d[1] % b == 0 && out_channels % b == 0 && src == dnnl::memory::desc(d, dt::f32, BlockedTag(b))) return b;
  }
  if (src != dnnl::memory::desc(d, dt::f32, tag::acdb)) return 0;
  for (int64_t b : {16, 8}) {
    if (d[1] % b == 0 && out_channels % b == 0) return b;
  }
  return 0;
}

template <int B>
struct Vec {
  typedef float type __attribute__((vector_size(B * sizeof(float))));
  static type Load(const float *p) {
    type v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static void Store(float *p, type v) { std::memcpy(p, &v, sizeof(v)); }
};

// step (N values -> M values) applied to each column of `in`, then to each row of the result: the
// separable 2-D transforms (B^T d B, A^T m A, A g A^T)
template <int N, int M, class T, class Step>
void Separable(const T (&in)[N][N], T (&out)[M][M], Step step) {
  T half[M][N];
  for (int j = 0; j < N; ++j) {
    T col[N], res[M];
    for (int i = 0; i < N; ++i) col[i] = in[i][j];
    step(col, res);
    for (int i = 0; i < M; ++i) half[i][j] = res[i];
  }
  for (int i = 0; i < M; ++i) step(half[i], out[i]);
}

// The two tile sizes: outputs per tile side (kOut), input patch side (kAlpha) and one step of
// each transform (applied to the rows, then to the columns): B^T d B, A^T m A, G g G^T.
struct F2 {
  static constexpr int kOut = 2, kAlpha = 4;
  template <class T>
  static void Input(const T d[4], T r[4]) {
    r[0] = d[0] - d[2];
    r[1] = d[1] + d[2];
    r[2] = d[2] - d[1];
    r[3] = d[1] - d[3];
  }
  template <class T>
  static void Output(const T m[4], T r[2]) {
    r[0] = m[0] + m[1] + m[2];
    r[1] = m[1] - m[2] - m[3];
  }
  static void Weight(const double g[3], double r[4]) {
    r[0] = g[0];
    r[1] = 0.5 * (g[0] + g[1] + g[2]);
    r[2] = 0.5 * (g[0] - g[1] + g[2]);
    r[3] = g[2];
  }
  // the weight gradient's steps: A dy of an output tile's gradient, G^T m of the summed products
  template <class T>
  static void OutputGradient(const T dy[2], T r[4]) {
    r[0] = dy[0];
    r[1] = dy[0] + dy[1];
    r[2] = dy[0] - dy[1];
    r[3] = -dy[1];
  }
  static void WeightGradient(const double m[4], double r[3]) {
    r[0] = m[0] + 0.5 * (m[1] + m[2]);
    r[1] = 0.5 * (m[1] - m[2]);
    r[2] = 0.5 * (m[1] + m[2]) + m[3];
  }
};

struct F4 {
  static constexpr int kOut = 4, kAlpha = 6;
  template <class T>
  static void Input(const T d[6], T r[6]) {
    r[0] = 4.0f * d[0] - 5.0f * d[2] + d[4];
    r[1] = d[3] + d[4] - 4.0f * (d[1] + d[2]);
    r[2] = d[4] - d[3] + 4.0f * (d[1] - d[2]);
    r[3] = d[4] - d[2] + 2.0f * (d[3] - d[1]);
    r[4] = d[4] - d[2] - 2.0f * (d[3] - d[1]);
    r[5] = 4.0f * d[1] - 5.0f * d[3] + d[5];
  }
  template <class T>
  static void Output(const T m[6], T r[4]) {
    const T sum12 = m[1] + m[2], dif12 = m[1] - m[2], sum34 = m[3] + m[4], dif34 = m[3] - m[4];
    r[0] = m[0] + sum12 + sum34;
    r[1] = dif12 + 2.0f * dif34;
    r[2] = sum12 + 4.0f * sum34;
    r[3] = dif12 + 8.0f * dif34 + m[5];
  }
  static void Weight(const double g[3], double r[6]) {
    constexpr double kSixth = 1.0 / 6, kTwelfth = 1.0 / 12, kTwentyFourth = 1.0 / 24;  // in double
    r[0] = g[0] * 0.25;
    r[1] = -(g[0] + g[1] + g[2]) * kSixth;
    r[2] = -(g[0] - g[1] + g[2]) * kSixth;
    r[3] = g[0] * kTwentyFourth + g[1] * kTwelfth + g[2] * kSixth;
    r[4] = g[0] * kTwentyFourth - g[1] * kTwelfth + g[2] * kSixth;
    r[5] = g[2];
  }
  template <class T>
  static void OutputGradient(const T dy[4], T r[6]) {
    r[0] = dy[0];
    r[1] = dy[0] + dy[1] + dy[2] + dy[3];
    r[2] = dy[0] - dy[1] + dy[2] - dy[3];
    r[3] = dy[0] + 2.0f * dy[1] + 4.0f * dy[2] + 8.0f * dy[3];
    r[4] = dy[0] - 2.0f * dy[1] + 4.0f * dy[2] - 8.0f * dy[3];
    r[5] = dy[3];
  }
  static void WeightGradient(const double m[6], double r[3]) {
    constexpr double kSixth = 1.0 / 6, kTwelfth = 1.0 / 12, kTwentyFourth = 1.0 / 24;
    r[0] = m[0] * 0.25 - (m[1] + m[2]) * kSixth + (m[3] + m[4]) * kTwentyFourth;
    r[1] = (m[2] - m[1]) * kSixth + (m[3] - m[4]) * kTwelfth;
    r[2] = (m[3] + m[4] - m[1] - m[2]) * kSixth + m[5];
  }
};

// Transformed weights: u[(i * alpha + j) * c + ci][oc] = (G g G^T)[i][j] of output channel oc's
// kernel for input channel ci, times scale[oc]; in double, each input channel's output channels
// side by side (the loops over them vectorise).
template <class F>
void TransformWeightsOf(const float *w, const float *scale, int64_t c, int64_t o, float *u) {
  constexpr int a = F::kAlpha;
  ParallelRange(c, a * a * o, [&](int64_t c0, int64_t c1) {
    std::vector<double> g(9 * o), half(a * 3 * o);   // g[k][oc], half[i][j][oc] = (G g)[i][j]
    for (int64_t ci = c0; ci < c1; ++ci) {
      for (int64_t oc = 0; oc < o; ++oc) {
        const double s = scale != nullptr ? scale[oc] : 1.0;
        for (int k = 0; k < 9; ++k) g[k * o + oc] = static_cast<double>(w[(oc * c + ci) * 9 + k]) * s;
      }
      for (int j = 0; j < 3; ++j) {
        for (int64_t oc = 0; oc < o; ++oc) {
          const double col[3] = {g[j * o + oc], g[(3 + j) * o + oc], g[(6 + j) * o + oc]};
          double r[a];
          F::Weight(col, r);
          for (int i = 0; i < a; ++i) half[(i * 3 + j) * o + oc] = r[i];
        }
      }
      for (int i = 0; i < a; ++i) {
        for (int64_t oc = 0; oc < o; ++oc) {
          const double row[3] = {half[(i * 3) * o + oc], half[(i * 3 + 1) * o + oc], half[(i * 3 + 2) * o + oc]};
          double t[a];
          F::Weight(row, t);
          for (int j = 0; j < a; ++j) u[((i * a + j) * c + ci) * o + oc] = static_cast<float>(t[j]);
        }
      }
    }
  });
}

std::atomic<int64_t> runs{0};   // passes run (Run, WeightGradient), for WinogradConvolutionsRun

}  // namespace

bool WinogradConv::Suits(const dnnl::memory::desc &src, const dnnl::memory::dims &wdims, int64_t stride,
                         int64_t pad) {
  return wdims.size() == 4 && wdims[2] == 3 && wdims[3] == 3 && stride == 1 && pad == 1 &&
         wdims[1] == src.get_dims()[1] && wdims[1] >= 32 && wdims[0] >= 64 && VectorOf(src, wdims[0]) > 0;
}

WinogradConv::WinogradConv(const dnnl::memory::desc &src, int64_t out_channels, int64_t out_tile) {
  const dnnl::memory::dims d = src.get_dims();
  n_ = d[0], c_ = d[1], h_ = d[2], w_ = d[3], o_ = out_channels, block_ = VectorOf(src, out_channels);
  src_ = src;
  if (src == dnnl::memory::desc(d, dt::f32, tag::acdb)) {
    in_ = {h_ * w_ * c_, block_, c_};
    out_ = {h_ * w_ * o_, block_, o_};
    dst_ = dnnl::memory::desc({n_, o_, h_, w_}, dt::f32, tag::acdb);
  } else {
    in_ = {c_ * h_ * w_, h_ * w_ * block_, block_};
    out_ = {o_ * h_ * w_, h_ * w_ * block_, block_};
    dst_ = dnnl::memory::desc({n_, o_, h_, w_}, dt::f32, BlockedTag(block_));
  }
  // the tile size that needs fewer products for this map (partial tiles at its edges included)
  auto products = [&](int64_t out, int64_t alpha) { return (h_ + out - 1) / out * ((w_ + out - 1) / out) * alpha * alpha; };
  out_tile_ = out_tile == F2::kOut || out_tile == F4::kOut ? out_tile
              : products(F4::kOut, F4::kAlpha) < products(F2::kOut, F2::kAlpha) ? F4::kOut : F2::kOut;
  alpha_ = out_tile_ + 2;
  tiles_h_ = (h_ + out_tile_ - 1) / out_tile_, tiles_w_ = (w_ + out_tile_ - 1) / out_tile_;
  tiles_ = n_ * tiles_h_ * tiles_w_;
  const int64_t positions = alpha_ * alpha_;
  // tiles per chunk: the chunk's transformed input and products within kChunkBytes, a multiple of 8
  const int64_t most = kChunkBytes / (int64_t(sizeof(float)) * positions * (c_ + o_));
  chunk_ = std::min(tiles_, std::max<int64_t>(8, most / 8 * 8));
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  in_stride_ = chunk_ * c_ + kPositionPad, out_stride_ = chunk_ * o_ + kPositionPad;
  pd_ = dnnl::matmul::primitive_desc(
      Engine(), dnnl::memory::desc({positions, chunk_, c_}, dt::f32, dnnl::memory::dims{in_stride_, c_, 1}),
      dnnl::memory::desc({positions, c_, o_}, dt::f32, tag::abc),
      dnnl::memory::desc({positions, chunk_, o_}, dt::f32, dnnl::memory::dims{out_stride_, o_, 1}), attr);
  mm_ = dnnl::matmul(pd_);
}

void WinogradConv::TransformWeights(const float *w, const float *scale, float *u) const {
  if (out_tile_ == F4::kOut) {
    TransformWeightsOf<F4>(w, scale, c_, o_, u);
  } else {
    TransformWeightsOf<F2>(w, scale, c_, o_, u);
  }
}

template <int B, class F>
void WinogradConv::InputTiles(const float *src, int64_t start, int64_t count, float *tv) const {
  using V = Vec<B>;
  typedef typename V::type vec;
  constexpr int a = F::kAlpha, r = F::kOut;
  for (int64_t t = 0; t < count; ++t) {
    const Tile at = Locate(start + t);
    for (int64_t cb = 0; cb < c_ / B; ++cb) {
      vec d[a][a], v[a][a];
      LoadPatch<V>(src + at.image * in_.image + cb * in_.vector, r * at.row - 1, r * at.col - 1, in_.pixel, d);
      Separable(d, v, [](const vec *x, vec *y) { F::Input(x, y); });
      float *to = tv + t * c_ + cb * B;
      for (int i = 0; i < a; ++i) {
        for (int j = 0; j < a; ++j) V::Store(to + (i * a + j) * in_stride_, v[i][j]);
      }
    }
  }
}

template <int B, class F>
void WinogradConv::Chunk(const float *src, const float *u, const float *bias, bool relu, float *dst,
                         int64_t start, int64_t first_out) const {
  using V = Vec<B>;
  typedef typename V::type vec;
  constexpr int a = F::kAlpha, r = F::kOut, positions = a * a;
  const int64_t m = chunk_;
  float *tv = ThreadFloats(0, positions * in_stride_), *prod = ThreadFloats(1, positions * out_stride_);
  float *pad = ThreadFloats(2, pd_.scratchpad_desc().get_size() / sizeof(float) + 1);
  const vec zero = {};
  // the input transform, B^T d B, of each tile's patch: tv[position][tile][channel]
  InputTiles<B, F>(src, start, m, tv);
  // the element-wise products over the channels, one product per position, in one batched call
  const auto md = [](int64_t d0, int64_t d1, int64_t d2, const float *ptr) {
    return dnnl::memory(dnnl::memory::desc({d0, d1, d2}, dt::f32, tag::abc), Engine(), const_cast<float *>(ptr));
  };
  dnnl::memory scratch(pd_.scratchpad_desc(), Engine(), pad);
  mm_.execute(ThreadStream(), {{DNNL_ARG_SRC, dnnl::memory(pd_.src_desc(), Engine(), tv)},
                               {DNNL_ARG_WEIGHTS, md(positions, c_, o_, u)},
                               {DNNL_ARG_DST, dnnl::memory(pd_.dst_desc(), Engine(), prod)},
                               {DNNL_ARG_SCRATCHPAD, scratch}});
  // the output transform, A^T m A, plus the bias (then ReLU), of the tiles from first_out on
  for (int64_t t = first_out - start; t < m; ++t) {
    const Tile at = Locate(start + t);
    for (int64_t ob = 0; ob < o_ / B; ++ob) {
      const float *from = prod + t * o_ + ob * B;
      vec q[a][a], y[r][r];
      for (int i = 0; i < a; ++i) {
        for (int j = 0; j < a; ++j) q[i][j] = V::Load(from + (i * a + j) * out_stride_);
      }
      Separable(q, y, [](const vec *x, vec *z) { F::Output(x, z); });
      const vec b = bias != nullptr ? V::Load(bias + ob * B) : zero;
      float *base = dst + at.image * out_.image + ob * out_.vector;
      for (int i = 0; i < r && r * at.row + i < h_; ++i) {
        for (int j = 0; j < r && r * at.col + j < w_; ++j) {
          vec v = y[i][j] + b;
          if (relu) v = v > zero ? v : zero;
          V::Store(base + ((r * at.row + i) * w_ + r * at.col + j) * out_.pixel, v);
        }
      }
    }
  }
}

template <int B, class F>
void WinogradConv::GradientTiles(const float *dy, int64_t start, int64_t count, float *ty) const {
  using V = Vec<B>;
  typedef typename V::type vec;
  constexpr int a = F::kAlpha, r = F::kOut;
  for (int64_t t = 0; t < count; ++t) {
    const Tile at = Locate(start + t);
    for (int64_t ob = 0; ob < o_ / B; ++ob) {
      vec g[r][r], v[a][a];
      LoadPatch<V>(dy + at.image * out_.image + ob * out_.vector, r * at.row, r * at.col, out_.pixel, g);
      Separable(g, v, [](const vec *x, vec *y) { F::OutputGradient(x, y); });
      float *to = ty + t * o_ + ob * B;
      for (int i = 0; i < a; ++i) {
        for (int j = 0; j < a; ++j) V::Store(to + (i * a + j) * out_stride_, v[i][j]);
      }
    }
  }
}

template <int B, class F>
void WinogradConv::WeightGradientOf(const float *src, const float *dy, float *dw) const {
  constexpr int a = F::kAlpha, positions = a * a;
  const int64_t m = chunk_, per_slab = positions * c_ * o_;
  const int slabs = static_cast<int>(std::min<int64_t>(kSlabs, (tiles_ + m - 1) / m));
  std::call_once(dw_once_, [&] {
    dnnl::post_ops accumulate;
    accumulate.append_sum(1.0f);
    dnnl::primitive_attr attr;
    attr.set_post_ops(accumulate);
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    // (transformed input)^T (positions, C, tiles) x (transformed dy) (positions, tiles, O)
    dw_pd_ = dnnl::matmul::primitive_desc(
        Engine(), dnnl::memory::desc({positions, c_, m}, dt::f32, dnnl::memory::dims{in_stride_, 1, c_}),
        dnnl::memory::desc({positions, m, o_}, dt::f32, dnnl::memory::dims{out_stride_, o_, 1}),
        dnnl::memory::desc({positions, c_, o_}, dt::f32, tag::abc), attr);
    dw_mm_ = dnnl::matmul(dw_pd_);
  });
  Scratch scratch;
  float *sums = scratch.Floats(slabs * per_slab);
  // each slab of tiles (fixed by the shapes, not by the threads) sums its chunks' products
  Pool().parallel_for(slabs, [&](int s, int) {
    float *acc = sums + s * per_slab;
    std::memset(acc, 0, sizeof(float) * per_slab);
    float *tv = ThreadFloats(0, positions * in_stride_), *ty = ThreadFloats(1, positions * out_stride_);
    float *pad = ThreadFloats(3, dw_pd_.scratchpad_desc().get_size() / sizeof(float) + 1);
    const int64_t t0 = tiles_ * s / slabs, t1 = tiles_ * (s + 1) / slabs;
    for (int64_t start = t0; start < t1; start += m) {
      const int64_t count = std::min(m, t1 - start);
      if (count < m) {   // a short chunk: the rest of its rows are zeros
        std::memset(tv, 0, sizeof(float) * positions * in_stride_);
        std::memset(ty, 0, sizeof(float) * positions * out_stride_);
      }
      InputTiles<B, F>(src, start, count, tv);
      GradientTiles<B, F>(dy, start, count, ty);
      dnnl::memory scratchpad(dw_pd_.scratchpad_desc(), Engine(), pad);
      dw_mm_.execute(ThreadStream(), {{DNNL_ARG_SRC, dnnl::memory(dw_pd_.src_desc(), Engine(), tv)},
                                      {DNNL_ARG_WEIGHTS, dnnl::memory(dw_pd_.weights_desc(), Engine(), ty)},
                                      {DNNL_ARG_DST, dnnl::memory(dw_pd_.dst_desc(), Engine(), acc)},
                                      {DNNL_ARG_SCRATCHPAD, scratchpad}});
    }
  });
  // the slabs' sums in their order, then G^T m G per (output, input) channel pair
  ParallelRange(c_, positions * o_ * slabs, [&](int64_t c0, int64_t c1) {
    for (int64_t ci = c0; ci < c1; ++ci) {
      for (int64_t oc = 0; oc < o_; ++oc) {
        double mm[a][a], half[3][a], k[3];
        for (int p = 0; p < positions; ++p) {
          float total = sums[(p * c_ + ci) * o_ + oc];
          for (int sl = 1; sl < slabs; ++sl) total += sums[sl * per_slab + (p * c_ + ci) * o_ + oc];
          mm[p / a][p % a] = total;
        }
        for (int j = 0; j < a; ++j) {
          double col[a];
          for (int i = 0; i < a; ++i) col[i] = mm[i][j];
          F::WeightGradient(col, k);
          for (int i = 0; i < 3; ++i) half[i][j] = k[i];
        }
        for (int i = 0; i < 3; ++i) {
          F::WeightGradient(half[i], k);
          for (int j = 0; j < 3; ++j) dw[(oc * c_ + ci) * 9 + i * 3 + j] = static_cast<float>(k[j]);
        }
      }
    }
  });
}

void WinogradConv::WeightGradient(const float *src, const float *dy, float *dw) const {
  runs.fetch_add(1, std::memory_order_relaxed);
  if (block_ == 16) {
    out_tile_ == F4::kOut ? WeightGradientOf<16, F4>(src, dy, dw) : WeightGradientOf<16, F2>(src, dy, dw);
  } else {
    out_tile_ == F4::kOut ? WeightGradientOf<8, F4>(src, dy, dw) : WeightGradientOf<8, F2>(src, dy, dw);
  }
}

void WinogradConv::Run(const float *src, const float *u, const float *bias, bool relu, float *dst) const {
  runs.fetch_add(1, std::memory_order_relaxed);
  const int64_t chunks = (tiles_ + chunk_ - 1) / chunk_;
  Pool().parallel_for(static_cast<int>(chunks), [&](int i, int) {
    // the last chunk ends at the last tile (a whole chunk for the one product shape); it writes
    // only the tiles no other chunk writes
    const int64_t first = i * chunk_, start = std::min(first, tiles_ - chunk_);
    if (block_ == 16) {
      out_tile_ == F4::kOut ? Chunk<16, F4>(src, u, bias, relu, dst, start, first)
                            : Chunk<16, F2>(src, u, bias, relu, dst, start, first);
    } else {
      out_tile_ == F4::kOut ? Chunk<8, F4>(src, u, bias, relu, dst, start, first)
                            : Chunk<8, F2>(src, u, bias, relu, dst, start, first);
    }
  });
}

}  // namespace convmlp

// How many convolution passes (forward, input or weight gradient) this library has run as Winograd
// convolutions (what the tests read to know that a layer took this path).
extern "C" int64_t WinogradConvolutionsRun() { return convmlp::runs.load(); }
