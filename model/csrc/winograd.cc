// Winograd F(2x2, 3x3) convolution: see winograd.h.
#include "winograd.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

namespace convmlp {
namespace {

using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

constexpr int kAlpha = 4;               // input patch (and transformed tile) side
constexpr int kPositions = kAlpha * kAlpha;
constexpr int kOut = 2;                 // outputs per tile side
constexpr int64_t kChunkBytes = int64_t(1) << 20;   // a chunk's transformed input and products

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

// B^T d B's rows (or columns) step: (d0 - d2, d1 + d2, d2 - d1, d1 - d3)
template <class T>
inline void InputStep(const T d[4], T r[4]) {
  r[0] = d[0] - d[2];
  r[1] = d[1] + d[2];
  r[2] = d[2] - d[1];
  r[3] = d[1] - d[3];
}

// A^T m A's step: (m0 + m1 + m2, m1 - m2 - m3)
template <class T>
inline void OutputStep(const T m[4], T r[2]) {
  r[0] = m[0] + m[1] + m[2];
  r[1] = m[1] - m[2] - m[3];
}

// G g G^T's step: (g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2)
inline void WeightStep(const float g[3], float r[4]) {
  r[0] = g[0];
  r[1] = 0.5f * (g[0] + g[1] + g[2]);
  r[2] = 0.5f * (g[0] - g[1] + g[2]);
  r[3] = g[2];
}

std::atomic<int64_t> runs{0};   // convolutions run, for WinogradConvolutionsRun

float *ThreadFloats(int which, size_t n) {
  static thread_local std::vector<float> buffers[3];
  if (buffers[which].size() < n) buffers[which].resize(n);
  return buffers[which].data();
}

}  // namespace

bool WinogradConv::Suits(const dnnl::memory::desc &src, const dnnl::memory::dims &wdims, int64_t stride,
                         int64_t pad) {
  return wdims.size() == 4 && wdims[2] == 3 && wdims[3] == 3 && stride == 1 && pad == 1 &&
         wdims[1] == src.get_dims()[1] && wdims[1] >= 32 && wdims[0] >= 64 && VectorOf(src, wdims[0]) > 0;
}

WinogradConv::WinogradConv(const dnnl::memory::desc &src, int64_t out_channels) {
  const dnnl::memory::dims d = src.get_dims();
  n_ = d[0], c_ = d[1], h_ = d[2], w_ = d[3], o_ = out_channels, block_ = VectorOf(src, out_channels);
  if (src == dnnl::memory::desc(d, dt::f32, tag::acdb)) {
    in_ = {h_ * w_ * c_, block_, c_};
    out_ = {h_ * w_ * o_, block_, o_};
    dst_ = dnnl::memory::desc({n_, o_, h_, w_}, dt::f32, tag::acdb);
  } else {
    in_ = {c_ * h_ * w_, h_ * w_ * block_, block_};
    out_ = {o_ * h_ * w_, h_ * w_ * block_, block_};
    dst_ = dnnl::memory::desc({n_, o_, h_, w_}, dt::f32, BlockedTag(block_));
  }
  tiles_h_ = (h_ + kOut - 1) / kOut, tiles_w_ = (w_ + kOut - 1) / kOut, tiles_ = n_ * tiles_h_ * tiles_w_;
  // tiles per chunk: the chunk's transformed input and products within kChunkBytes, a multiple of 8
  const int64_t most = kChunkBytes / (int64_t(sizeof(float)) * kPositions * (c_ + o_));
  chunk_ = std::min(tiles_, std::max<int64_t>(8, most / 8 * 8));
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  pd_ = dnnl::matmul::primitive_desc(Engine(), dnnl::memory::desc({kPositions, chunk_, c_}, dt::f32, tag::abc),
                                     dnnl::memory::desc({kPositions, c_, o_}, dt::f32, tag::abc),
                                     dnnl::memory::desc({kPositions, chunk_, o_}, dt::f32, tag::abc), attr);
  mm_ = dnnl::matmul(pd_);
}

void WinogradConv::TransformWeights(const float *w, const float *scale, float *u) const {
  const int64_t c = c_, o = o_;
  // each task a range of input channels: its rows of u, (position, channel) -> O values
  ParallelRange(c, 16 * o, [&](int64_t c0, int64_t c1) {
    for (int64_t ci = c0; ci < c1; ++ci) {
      for (int64_t oc = 0; oc < o; ++oc) {
        const float *g = w + (oc * c + ci) * 9;
        const float s = scale != nullptr ? scale[oc] : 1.0f;
        float rows[4][3], col[3], r[4], t[4];
        for (int j = 0; j < 3; ++j) {
          for (int i = 0; i < 3; ++i) col[i] = g[i * 3 + j] * s;
          WeightStep(col, r);
          for (int i = 0; i < 4; ++i) rows[i][j] = r[i];
        }
        for (int i = 0; i < 4; ++i) {
          WeightStep(rows[i], t);
          for (int j = 0; j < 4; ++j) u[((i * 4 + j) * c + ci) * o + oc] = t[j];
        }
      }
    }
  });
}

template <int B>
void WinogradConv::Chunk(const float *src, const float *u, const float *bias, bool relu, float *dst,
                         int64_t start, int64_t first_out) const {
  using V = Vec<B>;
  typedef typename V::type vec;
  const int64_t m = chunk_, per_image = tiles_h_ * tiles_w_, cb_count = c_ / B, ob_count = o_ / B;
  float *tv = ThreadFloats(0, kPositions * m * c_), *prod = ThreadFloats(1, kPositions * m * o_);
  float *pad = ThreadFloats(2, pd_.scratchpad_desc().get_size() / sizeof(float) + 1);
  const vec zero = {};
  // the input transform, B^T d B, of each tile's 4x4 patch: tv[position][tile][channel]
  for (int64_t t = 0; t < m; ++t) {
    const int64_t tile = start + t, img = tile / per_image, ty = (tile / tiles_w_) % tiles_h_, tx = tile % tiles_w_;
    for (int64_t cb = 0; cb < cb_count; ++cb) {
      const float *base = src + img * in_.image + cb * in_.vector;
      vec d[4][4], r[4][4];
      for (int i = 0; i < 4; ++i) {
        const int64_t y = kOut * ty - 1 + i;
        for (int j = 0; j < 4; ++j) {
          const int64_t x = kOut * tx - 1 + j;
          d[i][j] = (y >= 0 && y < h_ && x >= 0 && x < w_) ? V::Load(base + (y * w_ + x) * in_.pixel) : zero;
        }
      }
      for (int j = 0; j < 4; ++j) {
        vec col[4] = {d[0][j], d[1][j], d[2][j], d[3][j]}, out[4];
        InputStep(col, out);
        for (int i = 0; i < 4; ++i) r[i][j] = out[i];
      }
      float *to = tv + t * c_ + cb * B;
      for (int i = 0; i < 4; ++i) {
        vec out[4];
        InputStep(r[i], out);
        for (int j = 0; j < 4; ++j) V::Store(to + (i * 4 + j) * m * c_, out[j]);
      }
    }
  }
  // the sixteen products over the channels, in one batched product
  const auto md = [](int64_t a, int64_t b, int64_t c, const float *p) {
    return dnnl::memory(dnnl::memory::desc({a, b, c}, dt::f32, tag::abc), Engine(), const_cast<float *>(p));
  };
  dnnl::memory scratch(pd_.scratchpad_desc(), Engine(), pad);
  mm_.execute(ThreadStream(), {{DNNL_ARG_SRC, md(kPositions, m, c_, tv)},
                               {DNNL_ARG_WEIGHTS, md(kPositions, c_, o_, u)},
                               {DNNL_ARG_DST, md(kPositions, m, o_, prod)},
                               {DNNL_ARG_SCRATCHPAD, scratch}});
  // the output transform, A^T m A, plus the bias (then ReLU), of the tiles from first_out on
  for (int64_t t = first_out - start; t < m; ++t) {
    const int64_t tile = start + t, img = tile / per_image, ty = (tile / tiles_w_) % tiles_h_, tx = tile % tiles_w_;
    for (int64_t ob = 0; ob < ob_count; ++ob) {
      const float *from = prod + t * o_ + ob * B;
      vec q[2][4];
      for (int j = 0; j < 4; ++j) {
        vec col[4], out[2];
        for (int i = 0; i < 4; ++i) col[i] = V::Load(from + (i * 4 + j) * m * o_);
        OutputStep(col, out);
        q[0][j] = out[0];
        q[1][j] = out[1];
      }
      const vec b = V::Load(bias + ob * B);
      float *base = dst + img * out_.image + ob * out_.vector;
      for (int i = 0; i < 2; ++i) {
        const int64_t y = kOut * ty + i;
        vec out[2];
        OutputStep(q[i], out);
        if (y >= h_) continue;
        for (int j = 0; j < 2; ++j) {
          const int64_t x = kOut * tx + j;
          if (x >= w_) continue;
          vec v = out[j] + b;
          if (relu) v = v > zero ? v : zero;
          V::Store(base + (y * w_ + x) * out_.pixel, v);
        }
      }
    }
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
      Chunk<16>(src, u, bias, relu, dst, start, first);
    } else {
      Chunk<8>(src, u, bias, relu, dst, start, first);
    }
  });
}

}  // namespace convmlp

// How many convolutions this library has run as Winograd F(2x2, 3x3) (what the tests read to know
// that a stack took this path).
extern "C" int64_t WinogradConvolutionsRun() { return convmlp::runs.load(); }
