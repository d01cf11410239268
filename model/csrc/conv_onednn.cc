// 2-D convolution (groups 1, symmetric padding, no bias), NCHW float32, forward and both backward
// passes, for MindSpore's Custom "aot" op on the CPU (see model/cpu_kernels/), driving the
// oneDNN library that MindSpore itself ships (lib/libdnnl.so.3).
//
// MindSpore 2.10's own CPU convolution hands oneDNN plain NCHW memory, so oneDNN runs im2col +
// GEMM. Here each primitive is created with "any" memory formats, letting oneDNN pick its blocked
// layouts and direct (JIT) kernels, as PyTorch does; inputs are reordered into those layouts and
// the result back to NCHW on every call. Primitives are cached by shape. The forward keeps the
// plain layouts where oneDNN has a GEMM kernel for them (under src/platform/cpu.py's AVX2 cap: reordering
// the input and output cost more than the blocked forward saved: benchmarks/RESULTS.md)
// and takes the blocked ones where it would fall back to a reference kernel (AVX-512 uncapped);
// the two backward passes use the blocked ones. A 3x3, stride-1 convolution wide enough for it
// (winograd.h: the conv stage's, the tokenizer's third) runs its forward and its input gradient as
// Winograd convolutions on oneDNN's blocked layout instead, and its weight gradient too (the
// tiles' transformed inputs and output gradients multiplied and summed).
// The thread pool, the engine and the cache of buffers for the blocked copies are in
// onednn_common.h.
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "onednn_common.h"
#include "winograd.h"

namespace {

using convmlp::Engine;
using convmlp::FromLayout;
using convmlp::Guarded;
using convmlp::Scratch;
using convmlp::ToLayout;
using convmlp::WinogradConv;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

struct Key {
  int64_t n, c, h, w, o, kh, kw, oh, ow, stride, pad;
  bool operator<(const Key &k) const {
    return std::tie(n, c, h, w, o, kh, kw, oh, ow, stride, pad) <
           std::tie(k.n, k.c, k.h, k.w, k.o, k.kh, k.kw, k.oh, k.ow, k.stride, k.pad);
  }
};

struct Prims {
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data::primitive_desc bwd_data_pd;
  dnnl::convolution_backward_data bwd_data;
  dnnl::convolution_backward_weights::primitive_desc bwd_weights_pd;
  dnnl::convolution_backward_weights bwd_weights;
  dnnl::memory::desc src_plain, weights_plain, dst_plain;
  // the forward, the input and the weight gradient of a 3x3, stride-1 convolution that suits it as
  // Winograd convolutions (winograd.h; the input gradient is the convolution of dy by the weights
  // turned by 180 degrees, input and output channels swapped), else null
  std::unique_ptr<WinogradConv> winograd_fwd, winograd_bwd_data, winograd_bwd_weights;
};

std::mutex cache_mutex;

Prims *GetPrims(const Key &k) {
  static std::map<Key, std::unique_ptr<Prims>> cache;
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto it = cache.find(k);
  if (it != cache.end()) return it->second.get();
  auto p = std::make_unique<Prims>();
  dnnl::memory::dims src{k.n, k.c, k.h, k.w}, wei{k.o, k.c, k.kh, k.kw}, dst{k.n, k.o, k.oh, k.ow};
  dnnl::memory::dims strides{k.stride, k.stride}, pad{k.pad, k.pad};
  // right padding so that the output size is exact: (in + l + r - kernel) / stride + 1 = out
  dnnl::memory::dims pad_r{(k.oh - 1) * k.stride + k.kh - k.h - k.pad, (k.ow - 1) * k.stride + k.kw - k.w - k.pad};
  dnnl::memory::desc src_any(src, dt::f32, tag::any), wei_any(wei, dt::f32, tag::any), dst_any(dst, dt::f32, tag::any);
  p->src_plain = dnnl::memory::desc(src, dt::f32, tag::nchw);
  p->weights_plain = dnnl::memory::desc(wei, dt::f32, tag::oihw);
  p->dst_plain = dnnl::memory::desc(dst, dt::f32, tag::nchw);
  // Forward on the plain layouts unless oneDNN has only a reference kernel for them (AVX-512 CPUs
  // without an ISA cap), then on its chosen layouts; backward on its chosen layouts.
  auto hint = dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src_any, wei_any,
      dst_any, strides, pad, pad_r);
  p->fwd_pd = dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, p->src_plain,
      p->weights_plain, p->dst_plain, strides, pad, pad_r);
  if (std::string(p->fwd_pd.impl_info_str()).find("ref") != std::string::npos) p->fwd_pd = hint;
  p->fwd = dnnl::convolution_forward(p->fwd_pd);
  p->bwd_data_pd = dnnl::convolution_backward_data::primitive_desc(
      Engine(), dnnl::algorithm::convolution_direct, src_any, wei_any, dst_any, strides, pad, pad_r, hint);
  p->bwd_data = dnnl::convolution_backward_data(p->bwd_data_pd);
  p->bwd_weights_pd = dnnl::convolution_backward_weights::primitive_desc(
      Engine(), dnnl::algorithm::convolution_direct, src_any, wei_any, dst_any, strides, pad, pad_r, hint);
  p->bwd_weights = dnnl::convolution_backward_weights(p->bwd_weights_pd);
  if (k.oh == k.h && k.ow == k.w && WinogradConv::Suits(hint.src_desc(), wei, k.stride, k.pad)) {
    p->winograd_fwd = std::make_unique<WinogradConv>(hint.src_desc(), k.o);
    p->winograd_bwd_weights = std::make_unique<WinogradConv>(hint.src_desc(), k.o, 2);
  }
  const dnnl::memory::desc dy_desc = p->bwd_data_pd.diff_dst_desc();
  if (k.oh == k.h && k.ow == k.w && WinogradConv::Suits(dy_desc, {k.c, k.o, k.kh, k.kw}, k.stride, k.pad)) {
    p->winograd_bwd_data = std::make_unique<WinogradConv>(dy_desc, k.c);
  }
  Prims *raw = p.get();
  cache[k] = std::move(p);
  return raw;
}

bool MakeKey(const int64_t *x, const int64_t *w, const int64_t *y, const int32_t *cfg, Key *k) {
  *k = Key{x[0], x[1], x[2], x[3], w[0], w[2], w[3], y[2], y[3], cfg[0], cfg[1]};
  return w[1] == x[1] && y[0] == x[0] && y[1] == w[0] && cfg[0] > 0 && cfg[1] >= 0;
}

}  // namespace

// Inputs: x (N, C, H, W), w (O, C, KH, KW), cfg int32 (2) = stride, padding. Output: y (N, O, OH, OW).
extern "C" int ConvForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                           void *stream, void *extra) {
  if (nparam != 4 || ndims[0] != 4 || ndims[1] != 4 || ndims[3] != 4) return 1;
  Key k;
  if (!MakeKey(shapes[0], shapes[1], shapes[3], static_cast<const int32_t *>(params[2]), &k)) return 1;
  return Guarded([&] {
    Prims *p = GetPrims(k);
    Scratch scratch;
    dnnl::stream s = convmlp::PoolStream();
    dnnl::memory x(p->src_plain, Engine(), params[0]), w(p->weights_plain, Engine(), params[1]);
    dnnl::memory y(p->dst_plain, Engine(), params[3]);
    if (p->winograd_fwd) {
      const WinogradConv &wc = *p->winograd_fwd;
      dnnl::memory xs = ToLayout(x, wc.src_desc(), s, scratch), ys = scratch.Memory(wc.dst_desc());
      float *u = scratch.Floats(wc.WeightFloats());
      s.wait();
      wc.TransformWeights(static_cast<const float *>(params[1]), nullptr, u);
      wc.Run(static_cast<const float *>(xs.get_data_handle()), u, nullptr, false,
             static_cast<float *>(ys.get_data_handle()));
      FromLayout(ys, y, s);
      s.wait();
      return;
    }
    dnnl::memory xs = ToLayout(x, p->fwd_pd.src_desc(), s, scratch);
    dnnl::memory ws = ToLayout(w, p->fwd_pd.weights_desc(), s, scratch);
    dnnl::memory ys = p->fwd_pd.dst_desc() == p->dst_plain ? y : scratch.Memory(p->fwd_pd.dst_desc());
    p->fwd.execute(s, {{DNNL_ARG_SRC, xs}, {DNNL_ARG_WEIGHTS, ws}, {DNNL_ARG_DST, ys}});
    FromLayout(ys, y, s);
    s.wait();
  });
}

// Inputs: dy (N, O, OH, OW), w (O, C, KH, KW), x (N, C, H, W) (for its shape), cfg. Output: dx.
extern "C" int ConvBackwardData(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                void *stream, void *extra) {
  if (nparam != 5 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4) return 1;
  Key k;
  if (!MakeKey(shapes[2], shapes[1], shapes[0], static_cast<const int32_t *>(params[3]), &k)) return 1;
  return Guarded([&] {
    Prims *p = GetPrims(k);
    Scratch scratch;
    dnnl::stream s = convmlp::PoolStream();
    dnnl::memory dy(p->dst_plain, Engine(), params[0]), w(p->weights_plain, Engine(), params[1]);
    dnnl::memory dx(p->src_plain, Engine(), params[4]);
    if (p->winograd_bwd_data) {
      const WinogradConv &wc = *p->winograd_bwd_data;
      dnnl::memory dys = ToLayout(dy, wc.src_desc(), s, scratch), dxs = scratch.Memory(wc.dst_desc());
      // the weights turned by 180 degrees, (O, C) -> (C, O)
      const float *wp = static_cast<const float *>(params[1]);
      float *turned = scratch.Floats(k.o * k.c * 9), *u = scratch.Floats(wc.WeightFloats());
      for (int64_t o = 0; o < k.o; ++o) {
        for (int64_t c = 0; c < k.c; ++c) {
          for (int i = 0; i < 9; ++i) turned[(c * k.o + o) * 9 + 8 - i] = wp[(o * k.c + c) * 9 + i];
        }
      }
      s.wait();
      wc.TransformWeights(turned, nullptr, u);
      wc.Run(static_cast<const float *>(dys.get_data_handle()), u, nullptr, false,
             static_cast<float *>(dxs.get_data_handle()));
      FromLayout(dxs, dx, s);
      s.wait();
      return;
    }
    dnnl::memory dys = ToLayout(dy, p->bwd_data_pd.diff_dst_desc(), s, scratch);
    dnnl::memory ws = ToLayout(w, p->bwd_data_pd.weights_desc(), s, scratch);
    dnnl::memory dxs = p->bwd_data_pd.diff_src_desc() == p->src_plain ? dx
                                                                      : scratch.Memory(p->bwd_data_pd.diff_src_desc());
    p->bwd_data.execute(s, {{DNNL_ARG_DIFF_DST, dys}, {DNNL_ARG_WEIGHTS, ws}, {DNNL_ARG_DIFF_SRC, dxs}});
    FromLayout(dxs, dx, s);
    s.wait();
  });
}

// Inputs: dy (N, O, OH, OW), x (N, C, H, W), w (O, C, KH, KW) (for its shape), cfg. Output: dw.
extern "C" int ConvBackwardWeights(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                   void *stream, void *extra) {
  if (nparam != 5 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4) return 1;
  Key k;
  if (!MakeKey(shapes[1], shapes[2], shapes[0], static_cast<const int32_t *>(params[3]), &k)) return 1;
  return Guarded([&] {
    Prims *p = GetPrims(k);
    Scratch scratch;
    dnnl::stream s = convmlp::PoolStream();
    dnnl::memory dy(p->dst_plain, Engine(), params[0]), x(p->src_plain, Engine(), params[1]);
    dnnl::memory dw(p->weights_plain, Engine(), params[4]);
    if (p->winograd_bwd_weights) {
      const WinogradConv &wc = *p->winograd_bwd_weights;
      dnnl::memory xs = ToLayout(x, wc.src_desc(), s, scratch), dys = ToLayout(dy, wc.dst_desc(), s, scratch);
      s.wait();
      wc.WeightGradient(static_cast<const float *>(xs.get_data_handle()),
                        static_cast<const float *>(dys.get_data_handle()), static_cast<float *>(params[4]));
      return;
    }
    dnnl::memory dys = ToLayout(dy, p->bwd_weights_pd.diff_dst_desc(), s, scratch);
    dnnl::memory xs = ToLayout(x, p->bwd_weights_pd.src_desc(), s, scratch);
    dnnl::memory dws = p->bwd_weights_pd.diff_weights_desc() == p->weights_plain
                           ? dw
                           : scratch.Memory(p->bwd_weights_pd.diff_weights_desc());
    p->bwd_weights.execute(s, {{DNNL_ARG_DIFF_DST, dys}, {DNNL_ARG_SRC, xs}, {DNNL_ARG_DIFF_WEIGHTS, dws}});
    FromLayout(dws, dw, s);
    s.wait();
  });
}
