// Winograd convolution for the fused inference path (infer_onednn.cc) and the training
// convolution's forward, input and weight gradients (conv_onednn.cc): a 3x3 convolution, stride 1,
// padding 1, on the layout oneDNN chose for the layer before (blocked, 8 or 16 channels per
// block, or channels-last), bias and ReLU fused, in fewer multiplications than the direct kernel.
// Each m x m block of outputs is A^T [(G g G^T) . (B^T d B)] A of its (m + 2) x (m + 2) input patch
// d (Lavin and Gray, 2016), F(2x2, 3x3) or F(4x4, 3x3), whichever needs fewer products for the map;
// the (m + 2)^2 element-wise products over the channels are one batched oneDNN matrix product per
// chunk of tiles, the chunk's transformed input and products kept within the core's cache. The
// weights are transformed in double precision; the result differs from the direct convolution's
// by float32 roundings of the transforms (small integers and their halves, quarters, eighths).
#ifndef CONVMLP_CSRC_WINOGRAD_H_
#define CONVMLP_CSRC_WINOGRAD_H_

#include <cstdint>
#include <mutex>

#include "onednn_common.h"

namespace convmlp {

class WinogradConv {
 public:
  // Whether the convolution of `src` (N, C, H, W; blocked or channels-last) by weights
  // (O, C, kh, kw) with this stride and padding is one this class runs faster than the direct
  // kernel: 3x3, stride 1, padding 1, at least 32 input and 64 output channels (below, the
  // products over so few channels gain too little over the direct kernel), whole vectors of
  // channels. The output has the input's layout.
  static bool Suits(const dnnl::memory::desc &src, const dnnl::memory::dims &wdims, int64_t stride, int64_t pad);
  // out_tile: 4 (F(4x4, 3x3)), 2 (F(2x2, 3x3)) or 0: whichever needs fewer products for the map
  WinogradConv(const dnnl::memory::desc &src, int64_t out_channels, int64_t out_tile = 0);
  const dnnl::memory::desc &src_desc() const { return src_; }
  const dnnl::memory::desc &dst_desc() const { return dst_; }
  // The transformed weights (WeightFloats() floats) of plain weights (O, C, 3, 3), each output
  // channel's weights multiplied by scale[o] (nullptr: by 1).
  int64_t WeightFloats() const { return alpha_ * alpha_ * c_ * o_; }
  void TransformWeights(const float *w, const float *scale, float *u) const;
  // dst = conv(src) + bias (nullptr: none; then ReLU with `relu`), both in the layer's layout, on
  // the pool.
  void Run(const float *src, const float *u, const float *bias, bool relu, float *dst) const;
  // dw (O, C, 3, 3): the weight gradient for input src (src_desc) and output gradient dy
  // (dst_desc), G^T [sum over the tiles of (A dy A^T) . (B^T d B)] G, on the pool; the sum over the
  // tiles in fixed slabs, so the result does not depend on the number of threads. (The sum over
  // many tiles magnifies F(4x4)'s roundings: the weight gradient takes F(2x2).)
  void WeightGradient(const float *src, const float *dy, float *dw) const;

 private:
  template <int B, class F>
  void InputTiles(const float *src, int64_t start, int64_t count, float *tv) const;
  template <int B, class F>
  void GradientTiles(const float *dy, int64_t start, int64_t count, float *ty) const;
  template <int B, class F>
  void WeightGradientOf(const float *src, const float *dy, float *dw) const;
  template <int B, class F>
  void Chunk(const float *src, const float *u, const float *bias, bool relu, float *dst, int64_t start,
             int64_t first_out) const;

  // where channel vector `v` of pixel (y, x) of image n is: n * image + v * vector + (y * W + x) * pixel
  struct Strides {
    int64_t image, vector, pixel;
  };
  // a tile's image and its place among the image's tiles
  struct Tile {
    int64_t image, row, col;
  };
  Tile Locate(int64_t tile) const {
    const int64_t per_image = tiles_h_ * tiles_w_;
    return {tile / per_image, (tile / tiles_w_) % tiles_h_, tile % tiles_w_};
  }
  // the N x N patch of channel vectors whose corner is pixel (y0, x0) of the map, zeros outside it
  template <class V, int N>
  void LoadPatch(const float *base, int64_t y0, int64_t x0, int64_t pixel, typename V::type (&out)[N][N]) const {
    const typename V::type zero = {};
    for (int i = 0; i < N; ++i) {
      for (int j = 0; j < N; ++j) {
        const int64_t y = y0 + i, x = x0 + j;
        out[i][j] = (y >= 0 && y < h_ && x >= 0 && x < w_) ? V::Load(base + (y * w_ + x) * pixel) : zero;
      }
    }
  }
  int64_t n_, c_, h_, w_, o_, block_, out_tile_, alpha_, tiles_h_, tiles_w_, tiles_, chunk_;
  int64_t in_stride_, out_stride_;   // floats from one position's matrix to the next (padded)
  Strides in_, out_;
  dnnl::memory::desc src_, dst_;
  dnnl::matmul::primitive_desc pd_;
  dnnl::matmul mm_;
  // the weight gradient's product, made on its first use (training only)
  mutable std::once_flag dw_once_;
  mutable dnnl::matmul::primitive_desc dw_pd_;
  mutable dnnl::matmul dw_mm_;
};

}  // namespace convmlp

#endif  // CONVMLP_CSRC_WINOGRAD_H_
