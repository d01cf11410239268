// ConvMLP's fused inference path on the CPU, float32, for MindSpore's Custom "aot" op (see
// model/cpu_kernels/inference.py), driving the oneDNN library that MindSpore ships. Evaluation
// only (no backward): the training graph keeps the separate kernels.
//
// ConvStackInference: a stack of convolutions and max-pools (the tokenizer and the conv stage,
//   or one downsampling convolution) with each BatchNorm folded into its convolution (moving
//   statistics: w' = w * s, b' = beta - mean * s, s = gamma / sqrt(var + eps)), the ReLU and the
//   bottlenecks' residual addition as oneDNN post-ops, and the activations kept in oneDNN's
//   blocked layout from the first layer to the last (plain NCHW or NHWC only at the two ends).
// LayerNormMlpInference: x + fc2(GELU(fc1(LayerNorm(x)))) on channels-last rows, in tiles of rows
//   small enough for the hidden activations to stay in the core's cache, one tile per task of
//   the thread pool; the biases and fc2's residual inside oneDNN's matrix products, the exact
//   GELU (erf, gelu_rows.cc) on the tile between them.
// LayerNormDepthwiseInference: depthwise KxK convolution (stride 1, padding K/2) of
//   LayerNorm(x), channels-last, as the training kernels compute them.
// HeadInference: the classifier head, Dense(mean over positions of LayerNorm(x)).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "common.h"
#include "onednn_common.h"
#include "winograd.h"

namespace convmlp {
void GeluInPlace(float *x, int64_t n);  // gelu_rows.cc
}  // namespace convmlp

namespace {

using convmlp::Engine;
using convmlp::Guarded;
using convmlp::Pool;
using convmlp::Scratch;
using convmlp::ThreadFloats;
using convmlp::ThreadStream;
using convmlp::ToLayout;
using convmlp::WinogradConv;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;
using dims = dnnl::memory::dims;

// ConvStackInference's configuration (int32): in_layout, out_layout, layers, then per layer
// kind, kernel, stride, padding, flags.
constexpr int kNchw = 0, kNhwc = 1;
constexpr int kConv = 1, kMaxPool = 2;
constexpr int kBn = 1, kRelu = 2, kSaveInput = 4, kAddSaved = 8, kBias = 16;

bool IsReference(const dnnl::primitive_desc_base &pd) {
  return std::string(pd.impl_info_str()).find("ref") != std::string::npos;
}

dnnl::memory::desc Plain(const dims &nchw, int layout) {
  return dnnl::memory::desc(nchw, dt::f32, layout == kNhwc ? tag::nhwc : tag::nchw);
}

// Runs fn(begin, end) over [0, n) in about `tasks` chunks on the pool.
template <typename F>
void ParallelRange(int64_t n, F fn) {
  const int64_t tasks = std::min<int64_t>(n, 4 * Pool().get_num_threads());
  if (tasks <= 0) return;
  Pool().parallel_for(static_cast<int>(tasks), [&](int i, int t) { fn(n * i / t, n * (i + 1) / t); });
}

// LayerNorm of `rows` rows of `c` values, as layer_norm.cc computes it.
void LayerNormRows(const float *x, const float *gamma, const float *beta, float eps, int64_t rows, int64_t c,
                   float *y) {
  float mean, rstd;
  for (int64_t r = 0; r < rows; ++r) convmlp::LayerNormRow(x + r * c, gamma, beta, eps, c, y + r * c, &mean, &rstd);
}

// ------------------------------------------------------------------------------------------------
// ConvStackInference

struct StackLayer {
  int kind, kernel, stride, pad, flags;
  int64_t out_channels, in_channels;
  bool reorder_src = false;   // the primitive reads another layout than the previous layer wrote
  bool to_output = false;     // writes the op's output directly
  dnnl::convolution_forward::primitive_desc conv_pd;
  dnnl::convolution_forward conv;
  dnnl::pooling_forward::primitive_desc pool_pd;
  dnnl::pooling_forward pool;
  dnnl::memory::desc weights_plain, dst;
  // a 3x3 convolution run as a Winograd convolution instead of conv (see winograd.h)
  std::shared_ptr<WinogradConv> winograd;
  std::shared_ptr<struct KeptWeights> kept;  // see LayerWeights
};

struct StackPlan {
  std::vector<StackLayer> layers;
  dnnl::memory::desc in_plain, out_plain;
  size_t scratchpad = 0;
};

dnnl::primitive_attr ConvAttr(int flags, const dnnl::memory::desc &saved) {
  dnnl::post_ops ops;
  if (flags & kRelu) ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
  if (flags & kAddSaved) ops.append_binary(dnnl::algorithm::binary_add, saved);
  dnnl::primitive_attr attr;
  attr.set_post_ops(ops);
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// The convolution of layer `l` reading `src` (the previous layer's output; with `from_input`, the
// op's own input): oneDNN's blocked layouts (its direct kernels; for channels-last input and output
// they beat its channels-last kernels on these small maps), the previous layer's layout read as it
// is; the op's own NCHW input read as it is when oneDNN has a non-reference kernel for it (the
// first, 3-channel convolution). The output on the residual's layout for a bottleneck's last
// convolution, else on oneDNN's choice (the caller reorders the last one into the output).
void PlanConv(StackLayer *l, const dnnl::memory::desc &src, bool from_input, bool nhwc_input,
              const dnnl::memory::desc &saved, const dims &wdims, const dims &ddims) {
  const dims strides{l->stride, l->stride}, pad_l{l->pad, l->pad};
  const dims pad_r{(ddims[2] - 1) * l->stride + wdims[2] - src.get_dims()[2] - l->pad,
                   (ddims[3] - 1) * l->stride + wdims[3] - src.get_dims()[3] - l->pad};
  const dnnl::memory::desc wei(wdims, dt::f32, tag::any), bias({wdims[0]}, dt::f32, tag::a);
  const dnnl::memory::desc src_any(src.get_dims(), dt::f32, tag::any);
  const dnnl::memory::desc dst = (l->flags & kAddSaved) ? saved : dnnl::memory::desc(ddims, dt::f32, tag::any);
  const auto attr = ConvAttr(l->flags, saved);
  auto make = [&](const dnnl::memory::desc &s) {
    return dnnl::convolution_forward::primitive_desc(Engine(), dnnl::prop_kind::forward_inference,
                                                     dnnl::algorithm::convolution_direct, s, wei, bias, dst, strides,
                                                     pad_l, pad_r, attr);
  };
  if (from_input && nhwc_input) {
    // oneDNN would pick its channels-last kernel (brgconv) here, much slower on these small maps
    // than its blocked direct kernel: ask for the blocked layouts by name (16 channels per block
    // for AVX-512, 8 for AVX2)
    l->conv_pd = make(src_any);
    for (tag blocked : {tag::aBcd16b, tag::aBcd8b}) {
      try {
        auto pd = make(dnnl::memory::desc(src.get_dims(), dt::f32, blocked));
        if (!IsReference(pd) && std::string(pd.impl_info_str()).find("brg") == std::string::npos) {
          l->conv_pd = pd;
          break;
        }
      } catch (const dnnl::error &) {
      }
    }
  } else {
    l->conv_pd = make(src);
    if (IsReference(l->conv_pd)) l->conv_pd = make(src_any);
  }
  l->reorder_src = l->conv_pd.src_desc() != src;
  l->conv = dnnl::convolution_forward(l->conv_pd);
  l->dst = l->conv_pd.dst_desc();
  l->weights_plain = dnnl::memory::desc(wdims, dt::f32, tag::oihw);
}

void PlanPool(StackLayer *l, const dnnl::memory::desc &src) {
  const dims in = src.get_dims();
  const int64_t oh = (in[2] + 2 * l->pad - l->kernel) / l->stride + 1;
  const int64_t ow = (in[3] + 2 * l->pad - l->kernel) / l->stride + 1;
  const dims out{in[0], in[1], oh, ow};
  const dims pad_r{(oh - 1) * l->stride + l->kernel - in[2] - l->pad, (ow - 1) * l->stride + l->kernel - in[3] - l->pad};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  l->pool_pd = dnnl::pooling_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::pooling_max, src,
      dnnl::memory::desc(out, dt::f32, tag::any), dims{l->stride, l->stride}, dims{l->kernel, l->kernel},
      dims{0, 0}, dims{l->pad, l->pad}, pad_r, attr);
  l->pool = dnnl::pooling_forward(l->pool_pd);
  l->dst = l->pool_pd.dst_desc();
  l->out_channels = in[1];
}

// The plan for configuration `cfg` (length n), input shape `x` and the shapes of the op's
// parameters; nullptr when they do not fit.
StackPlan *GetStackPlan(const int32_t *cfg, int64_t n, const int64_t *x, int64_t **shapes, int *ndims) {
  static std::map<std::vector<int64_t>, std::unique_ptr<StackPlan>> cache;
  static std::mutex mutex;
  std::vector<int64_t> key(cfg, cfg + n);
  key.insert(key.end(), x, x + 4);
  const int layers = cfg[2];
  int p = 1;  // parameter index (0: x)
  for (int i = 0; i < layers; ++i) {
    const int32_t *c = cfg + 3 + 5 * i;
    if (c[0] != kConv) continue;
    if (ndims[p] != 4) return nullptr;
    key.insert(key.end(), shapes[p], shapes[p] + 4);
    p += 1 + ((c[4] & kBn) ? 4 : 0) + ((c[4] & kBias) ? 1 : 0);
  }
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second.get();
  auto plan = std::make_unique<StackPlan>();
  const int in_layout = cfg[0], out_layout = cfg[1];
  // x's shape is (N, C, H, W) or (N, H, W, C); oneDNN's dimensions are N, C, H, W either way
  plan->in_plain = in_layout == kNhwc ? Plain(dims{x[0], x[3], x[1], x[2]}, kNhwc)
                                      : Plain(dims{x[0], x[1], x[2], x[3]}, kNchw);
  dnnl::memory::desc cur = plan->in_plain, saved;
  p = 1;
  for (int i = 0; i < layers; ++i) {
    const int32_t *c = cfg + 3 + 5 * i;
    StackLayer l{c[0], c[1], c[2], c[3], c[4], 0, cur.get_dims()[1]};
    if (l.flags & kSaveInput) saved = cur;
    if (l.kind == kConv) {
      const dims wdims(shapes[p], shapes[p] + 4), in = cur.get_dims();
      if (wdims[1] != in[1]) return nullptr;
      const dims ddims{in[0], wdims[0], (in[2] + 2 * l.pad - wdims[2]) / l.stride + 1,
                       (in[3] + 2 * l.pad - wdims[3]) / l.stride + 1};
      if ((l.flags & kAddSaved) && saved.get_dims() != ddims) return nullptr;
      if (i > 0 && !(l.flags & kAddSaved) && WinogradConv::Suits(cur, wdims, l.stride, l.pad)) {
        l.winograd = std::make_shared<WinogradConv>(cur, wdims[0]);
        l.dst = l.winograd->dst_desc();
        l.weights_plain = dnnl::memory::desc(wdims, dt::f32, tag::oihw);
      } else {
        PlanConv(&l, cur, i == 0, in_layout == kNhwc, saved, wdims, ddims);
      }
      l.kept = std::make_shared<KeptWeights>();
      l.out_channels = wdims[0];
      l.to_output = i == layers - 1 && l.dst == Plain(ddims, out_layout);
      p += 1 + ((l.flags & kBn) ? 4 : 0) + ((l.flags & kBias) ? 1 : 0);
    } else if (l.kind == kMaxPool) {
      PlanPool(&l, cur);
    } else {
      return nullptr;
    }
    if (!l.winograd) {
      plan->scratchpad = std::max(plan->scratchpad, l.kind == kConv ? l.conv_pd.scratchpad_desc().get_size()
                                                                     : l.pool_pd.scratchpad_desc().get_size());
    }
    cur = l.dst;
    plan->layers.push_back(std::move(l));
  }
  const dims od = cur.get_dims();
  plan->out_plain = Plain(od, out_layout);
  StackPlan *raw = plan.get();
  cache[key] = std::move(plan);
  return raw;
}

// A convolution's weights as its kernel reads them (the BatchNorm folded in: w' = w * s; in the
// primitive's layout, or Winograd-transformed) and its bias (beta - mean * s, its own, or zero),
// made from the layer's parameters and kept while they are bit for bit the copy they were made
// from: a training step, a loaded checkpoint or any other write makes the next call make them again.
struct KeptWeights {
  std::mutex mutex;
  std::vector<float> made_from, bias, winograd;
  dnnl::memory weights;
};

void LayerWeights(const StackLayer &l, void **params, int p, float eps, dnnl::stream &s, dnnl::memory *weights,
                  const float **winograd, const float **bias) {
  const dims wd = l.weights_plain.get_dims();
  const int64_t o = wd[0], per = wd[1] * wd[2] * wd[3];
  // what they are made from: the weights, then the BatchNorm's four vectors and eps, or the bias
  std::vector<std::pair<const float *, int64_t>> parts{{static_cast<const float *>(params[p]), o * per}};
  if (l.flags & kBn) {
    for (int i = 1; i <= 4; ++i) parts.emplace_back(static_cast<const float *>(params[p + i]), o);
    parts.emplace_back(&eps, 1);
  } else if (l.flags & kBias) {
    parts.emplace_back(static_cast<const float *>(params[p + 1]), o);
  }
  KeptWeights &k = *l.kept;
  std::lock_guard<std::mutex> lock(k.mutex);
  int64_t total = 0, at = 0;
  for (const auto &part : parts) total += part.second;
  bool same = static_cast<int64_t>(k.made_from.size()) == total;
  for (size_t i = 0; same && i < parts.size(); at += parts[i].second, ++i) {
    same = std::memcmp(k.made_from.data() + at, parts[i].first, sizeof(float) * parts[i].second) == 0;
  }
  if (!same) {
    k.made_from.clear();
    for (const auto &part : parts) k.made_from.insert(k.made_from.end(), part.first, part.first + part.second);
    const float *w = parts[0].first;
    std::vector<float> scale, folded;
    k.bias.assign(o, 0.0f);
    if (l.flags & kBn) {
      const float *gamma = parts[1].first, *beta = parts[2].first, *mean = parts[3].first, *var = parts[4].first;
      scale.resize(o);
      for (int64_t oc = 0; oc < o; ++oc) {
        scale[oc] = gamma[oc] / std::sqrt(var[oc] + eps);
        k.bias[oc] = beta[oc] - mean[oc] * scale[oc];
      }
    } else if (l.flags & kBias) {
      std::memcpy(k.bias.data(), parts[1].first, sizeof(float) * o);
    }
    if (l.winograd) {
      k.winograd.resize(l.winograd->WeightFloats());
      l.winograd->TransformWeights(w, scale.empty() ? nullptr : scale.data(), k.winograd.data());
    } else {
      if (!scale.empty()) {
        folded.resize(o * per);
        for (int64_t oc = 0; oc < o; ++oc) {
          for (int64_t i = 0; i < per; ++i) folded[oc * per + i] = w[oc * per + i] * scale[oc];
        }
        w = folded.data();
      }
      dnnl::memory plain(l.weights_plain, Engine(), const_cast<float *>(w));
      if (!k.weights) k.weights = dnnl::memory(l.conv_pd.weights_desc(), Engine());
      dnnl::reorder(plain, k.weights).execute(s, plain, k.weights);
      s.wait();
    }
  }
  *weights = k.weights;
  *winograd = k.winograd.data();
  *bias = k.bias.data();
}

void RunStack(const StackPlan &plan, void **params, float eps, float *out) {
  Scratch scratch;
  dnnl::stream s = convmlp::PoolStream();
  dnnl::memory cur(plan.in_plain, Engine(), params[0]), saved;
  void *saved_ptr = nullptr;  // the residual's buffer while a bottleneck runs
  dnnl::memory pad(dnnl::memory::desc({static_cast<int64_t>(plan.scratchpad)}, dt::u8, tag::a), Engine(),
                   scratch.Bytes(plan.scratchpad));
  int p = 1;
  for (const StackLayer &l : plan.layers) {
    if (l.flags & kSaveInput) {
      saved = cur;
      saved_ptr = cur.get_data_handle();
    }
    dnnl::memory dst = l.to_output ? dnnl::memory(l.dst, Engine(), out) : scratch.Memory(l.dst);
    if (l.kind == kConv) {
      dnnl::memory weights;
      const float *winograd, *bias_values;
      LayerWeights(l, params, p, eps, s, &weights, &winograd, &bias_values);
      p += 1 + ((l.flags & kBn) ? 4 : 0) + ((l.flags & kBias) ? 1 : 0);
      if (l.winograd) {
        s.wait();
        l.winograd->Run(static_cast<const float *>(cur.get_data_handle()), winograd, bias_values,
                        (l.flags & kRelu) != 0, static_cast<float *>(dst.get_data_handle()));
        if (cur.get_data_handle() != saved_ptr) scratch.Release(cur.get_data_handle());
        cur = dst;
        continue;
      }
      dnnl::memory bias(dnnl::memory::desc({l.out_channels}, dt::f32, tag::a), Engine(),
                        const_cast<float *>(bias_values));
      dnnl::memory src = l.reorder_src ? ToLayout(cur, l.conv_pd.src_desc(), s, scratch) : cur;
      std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights},
                                                 {DNNL_ARG_BIAS, bias}, {DNNL_ARG_DST, dst},
                                                 {DNNL_ARG_SCRATCHPAD, pad}};
      if (l.flags & kAddSaved) args[DNNL_ARG_ATTR_MULTIPLE_POST_OP((l.flags & kRelu) ? 1 : 0) | DNNL_ARG_SRC_1] = saved;
      l.conv.execute(s, args);
      if (l.reorder_src) scratch.Release(src.get_data_handle());
    } else {
      l.pool.execute(s, {{DNNL_ARG_SRC, cur}, {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, pad}});
    }
    // the input is no longer needed unless it is the residual still to come (Release ignores
    // the op's own input and output)
    if (cur.get_data_handle() != saved_ptr) scratch.Release(cur.get_data_handle());
    if (l.flags & kAddSaved) {
      scratch.Release(saved_ptr);
      saved_ptr = nullptr;
    }
    cur = dst;
  }
  if (cur.get_data_handle() != out) {
    dnnl::memory result(plan.out_plain, Engine(), out);
    dnnl::reorder(cur, result).execute(s, cur, result);
  }
  s.wait();
}

// ------------------------------------------------------------------------------------------------
// LayerNormMlpInference

struct MlpPlan {
  int64_t tile;
  dnnl::matmul::primitive_desc pd1, pd2;
  dnnl::matmul mm1, mm2;
  size_t scratchpad;
};

// Rows per tile: the tile's normalised input and hidden activations within ~512 KiB, at least
// one tile per thread, tiles of about equal size (a multiple of 8 rows, at most `rows`).
int64_t TileRows(int64_t rows, int64_t c, int64_t h) {
  const int64_t threads = Pool().get_num_threads();
  const int64_t most = std::max<int64_t>(8, (int64_t(1) << 17) / (c + h));
  int64_t tiles = (rows + most - 1) / most;
  tiles = std::max<int64_t>(threads, (tiles + threads - 1) / threads * threads);
  const int64_t tile = ((rows + tiles - 1) / tiles + 7) / 8 * 8;
  return std::max<int64_t>(1, std::min(tile, rows));
}

MlpPlan *GetMlpPlan(int64_t rows, int64_t c, int64_t h) {
  static std::map<std::vector<int64_t>, std::unique_ptr<MlpPlan>> cache;
  static std::mutex mutex;
  const int64_t t = TileRows(rows, c, h);
  const std::vector<int64_t> key{t, c, h};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second.get();
  auto plan = std::make_unique<MlpPlan>();
  plan->tile = t;
  // (GELU as a post-op would take oneDNN's older GEMM with a separate post-processing pass; it
  // runs on the tile in cache instead, see MlpTile)
  dnnl::post_ops residual;
  residual.append_binary(dnnl::algorithm::binary_add, dnnl::memory::desc({t, c}, dt::f32, tag::ab));
  dnnl::primitive_attr attr1, attr2;
  attr2.set_post_ops(residual);
  attr1.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  attr2.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto md = [](int64_t a, int64_t b, tag f) { return dnnl::memory::desc({a, b}, dt::f32, f); };
  plan->pd1 = dnnl::matmul::primitive_desc(Engine(), md(t, c, tag::ab), md(c, h, tag::any), md(1, h, tag::ab),
                                           md(t, h, tag::ab), attr1);
  plan->pd2 = dnnl::matmul::primitive_desc(Engine(), md(t, h, tag::ab), md(h, c, tag::any), md(1, c, tag::ab),
                                           md(t, c, tag::ab), attr2);
  plan->mm1 = dnnl::matmul(plan->pd1);
  plan->mm2 = dnnl::matmul(plan->pd2);
  plan->scratchpad = std::max(plan->pd1.scratchpad_desc().get_size(), plan->pd2.scratchpad_desc().get_size());
  MlpPlan *raw = plan.get();
  cache[key] = std::move(plan);
  return raw;
}

// One tile: rows [start, start + t) of x into y (or into `tmp` when given).
void MlpTile(const MlpPlan &plan, const float *x, const float *gamma, const float *beta, float eps,
             const dnnl::memory &w1, const dnnl::memory &b1, const dnnl::memory &w2, const dnnl::memory &b2,
             int64_t c, int64_t h, float *y) {
  const int64_t t = plan.tile;
  float *a = ThreadFloats(0, t * c), *hidden = ThreadFloats(1, t * h);
  float *pad = ThreadFloats(2, plan.scratchpad / sizeof(float) + 1);
  LayerNormRows(x, gamma, beta, eps, t, c, a);
  auto md = [](int64_t r, int64_t k) { return dnnl::memory::desc({r, k}, dt::f32, tag::ab); };
  dnnl::memory am(md(t, c), Engine(), a), hm(md(t, h), Engine(), hidden), xm(md(t, c), Engine(), const_cast<float *>(x));
  dnnl::memory ym(md(t, c), Engine(), y);
  dnnl::memory pm(dnnl::memory::desc({static_cast<int64_t>(plan.scratchpad)}, dt::u8, tag::a), Engine(), pad);
  dnnl::stream &s = ThreadStream();
  plan.mm1.execute(s, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, w1}, {DNNL_ARG_BIAS, b1}, {DNNL_ARG_DST, hm},
                       {DNNL_ARG_SCRATCHPAD, pm}});
  convmlp::GeluInPlace(hidden, t * h);
  plan.mm2.execute(s, {{DNNL_ARG_SRC, hm}, {DNNL_ARG_WEIGHTS, w2}, {DNNL_ARG_BIAS, b2}, {DNNL_ARG_DST, ym},
                       {DNNL_ARG_SCRATCHPAD, pm}, {DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, xm}});
}

void RunMlp(void **params, int64_t rows, int64_t c, int64_t h, float eps, float *y) {
  const MlpPlan &plan = *GetMlpPlan(rows, c, h);
  const float *x = static_cast<const float *>(params[0]);
  const float *gamma = static_cast<const float *>(params[1]), *beta = static_cast<const float *>(params[2]);
  Scratch scratch;
  dnnl::stream s = convmlp::PoolStream();
  // Dense weights are (out, in) row-major: the (in, out) matrix of the product in "ba" order.
  dnnl::memory w1p(dnnl::memory::desc({c, h}, dt::f32, tag::ba), Engine(), params[3]);
  dnnl::memory w2p(dnnl::memory::desc({h, c}, dt::f32, tag::ba), Engine(), params[5]);
  dnnl::memory w1 = convmlp::Packed().Get(w1p, plan.pd1.weights_desc(), s, scratch);
  dnnl::memory w2 = convmlp::Packed().Get(w2p, plan.pd2.weights_desc(), s, scratch);
  s.wait();
  dnnl::memory b1(dnnl::memory::desc({1, h}, dt::f32, tag::ab), Engine(), params[4]);
  dnnl::memory b2(dnnl::memory::desc({1, c}, dt::f32, tag::ab), Engine(), params[6]);
  const int64_t t = plan.tile, tiles = (rows + t - 1) / t;
  Pool().parallel_for(static_cast<int>(tiles), [&](int i, int) {
    const int64_t start = i * t;
    if (start + t <= rows) {
      MlpTile(plan, x + start * c, gamma, beta, eps, w1, b1, w2, b2, c, h, y + start * c);
      return;
    }
    // the last, short tile: a whole tile ending at the last row, into a buffer; only the rows
    // no other tile writes are copied out
    float *tmp = ThreadFloats(3, t * c);
    MlpTile(plan, x + (rows - t) * c, gamma, beta, eps, w1, b1, w2, b2, c, h, tmp);
    std::memcpy(y + start * c, tmp + (start - (rows - t)) * c, sizeof(float) * (rows - start) * c);
  });
}

// ------------------------------------------------------------------------------------------------
// LayerNormDepthwiseInference

void RunLayerNormDepthwise(void **params, const int64_t *shape, int64_t k, float eps, float *y) {
  const int64_t n = shape[0], hh = shape[1], ww = shape[2], c = shape[3], p = k / 2;
  const float *x = static_cast<const float *>(params[0]);
  const float *gamma = static_cast<const float *>(params[1]), *beta = static_cast<const float *>(params[2]);
  const float *wt = static_cast<const float *>(params[3]);
  Scratch scratch;
  float *a = scratch.Floats(n * hh * ww * c);
  std::vector<float> taps(k * k * c);
  convmlp::DepthwiseTaps(wt, c, k, taps.data());
  ParallelRange(n * hh * ww, [&](int64_t r0, int64_t r1) {
    LayerNormRows(x + r0 * c, gamma, beta, eps, r1 - r0, c, a + r0 * c);
  });
  ParallelRange(n * hh, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / hh, i0 = r % hh;
      for (int64_t j0 = 0; j0 < ww; ++j0) {
        float *o = y + (r * ww + j0) * c;
        std::memset(o, 0, sizeof(float) * c);
        for (int64_t i = 0; i < k; ++i) {
          const int64_t si = i0 + i - p;
          if (si < 0 || si >= hh) continue;
          for (int64_t j = 0; j < k; ++j) {
            const int64_t sj = j0 + j - p;
            if (sj < 0 || sj >= ww) continue;
            const float *src = a + ((b * hh + si) * ww + sj) * c;
            const float *tp = taps.data() + (i * k + j) * c;
#pragma omp simd
            for (int64_t ch = 0; ch < c; ++ch) o[ch] += src[ch] * tp[ch];
          }
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------
// HeadInference

struct HeadPlan {
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul mm;
};

HeadPlan *GetHeadPlan(int64_t n, int64_t c, int64_t k) {
  static std::map<std::vector<int64_t>, std::unique_ptr<HeadPlan>> cache;
  static std::mutex mutex;
  const std::vector<int64_t> key{n, c, k};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second.get();
  auto plan = std::make_unique<HeadPlan>();
  auto md = [](int64_t a, int64_t b, tag f) { return dnnl::memory::desc({a, b}, dt::f32, f); };
  plan->pd = dnnl::matmul::primitive_desc(Engine(), md(n, c, tag::ab), md(c, k, tag::any), md(1, k, tag::ab),
                                          md(n, k, tag::ab));
  plan->mm = dnnl::matmul(plan->pd);
  HeadPlan *raw = plan.get();
  cache[key] = std::move(plan);
  return raw;
}

// The pooled features: per sample, the mean over its positions of LayerNorm(x).
void PooledFeatures(const float *x, const float *gamma, const float *beta, float eps, int64_t n, int64_t positions,
                    int64_t c, float *pooled) {
  ParallelRange(n, [&](int64_t s0, int64_t s1) {
    float *row = ThreadFloats(0, c);
    for (int64_t b = s0; b < s1; ++b) {
      float *out = pooled + b * c;
      std::memset(out, 0, sizeof(float) * c);
      for (int64_t q = 0; q < positions; ++q) {
        LayerNormRows(x + (b * positions + q) * c, gamma, beta, eps, 1, c, row);
#pragma omp simd
        for (int64_t i = 0; i < c; ++i) out[i] += row[i];
      }
      const float inv = 1.0f / static_cast<float>(positions);
#pragma omp simd
      for (int64_t i = 0; i < c; ++i) out[i] *= inv;
    }
  });
}

}  // namespace

// Inputs: x (N, H, W, C), gamma (C), beta (C), weight (K, C), bias (K), eps (1). Output: logits
// (N, K) = Dense(mean over H, W of LayerNorm(x)): the classifier head.
extern "C" int HeadInference(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,
                             void *extra) {
  if (nparam != 7 || ndims[0] != 4 || ndims[3] != 2) return 1;
  const int64_t n = shapes[0][0], positions = shapes[0][1] * shapes[0][2], c = shapes[0][3], k = shapes[3][0];
  if (shapes[3][1] != c || shapes[4][0] != k || n == 0) return 1;
  const float eps = *static_cast<const float *>(params[5]);
  return Guarded([&] {
    const HeadPlan &plan = *GetHeadPlan(n, c, k);
    Scratch scratch;
    float *pooled = scratch.Floats(n * c);
    PooledFeatures(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                   static_cast<const float *>(params[2]), eps, n, positions, c, pooled);
    dnnl::stream s = convmlp::PoolStream();
    dnnl::memory wp(dnnl::memory::desc({c, k}, dt::f32, tag::ba), Engine(), params[3]);
    dnnl::memory w = convmlp::Packed().Get(wp, plan.pd.weights_desc(), s, scratch);
    auto md = [](int64_t a, int64_t b) { return dnnl::memory::desc({a, b}, dt::f32, tag::ab); };
    dnnl::memory src(md(n, c), Engine(), pooled), bias(md(1, k), Engine(), params[4]), dst(md(n, k), Engine(), params[6]);
    plan.mm.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_BIAS, bias}, {DNNL_ARG_DST, dst}});
    s.wait();
  });
}

// Inputs: x (N, C, H, W) or (N, H, W, C), per convolution its weight (O, C, KH, KW) then gamma,
// beta, moving mean, moving variance (BatchNorm folded) or its bias; eps (1); cfg int32 (see
// above). Output: y in the configured layout.
extern "C" int ConvStackInference(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                  void *stream, void *extra) {
  if (nparam < 4 || ndims[0] != 4 || ndims[nparam - 2] != 1) return 1;
  const int32_t *cfg = static_cast<const int32_t *>(params[nparam - 2]);
  const int64_t n = shapes[nparam - 2][0];
  if (n < 3 || n != 3 + 5 * int64_t(cfg[2])) return 1;
  const float eps = *static_cast<const float *>(params[nparam - 3]);
  return Guarded([&] {
    StackPlan *plan = GetStackPlan(cfg, n, shapes[0], shapes, ndims);
    if (plan == nullptr) throw std::invalid_argument("shapes");
    RunStack(*plan, params, eps, static_cast<float *>(params[nparam - 1]));
  });
}

// Inputs: x (..., C), gamma (C), beta (C), fc1 weight (H, C), fc1 bias (H), fc2 weight (C, H),
// fc2 bias (C), eps (1). Output: y (..., C) = x + fc2(GELU(fc1(LayerNorm(x)))).
extern "C" int LayerNormMlpInference(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                     void *stream, void *extra) {
  if (nparam != 9 || ndims[0] < 1 || ndims[3] != 2 || ndims[5] != 2) return 1;
  const int64_t c = shapes[0][ndims[0] - 1], h = shapes[3][0];
  if (shapes[3][1] != c || shapes[5][0] != c || shapes[5][1] != h) return 1;
  const int64_t rows = convmlp::Numel(ndims[0], shapes[0]) / (c > 0 ? c : 1);
  if (rows == 0) return 0;
  const float eps = *static_cast<const float *>(params[7]);
  return Guarded([&] { RunMlp(params, rows, c, h, eps, static_cast<float *>(params[8])); });
}

// Inputs: x (N, H, W, C), gamma (C), beta (C), weight (C, 1, K, K), eps (1). Output: y (N, H, W, C)
// = depthwise KxK convolution (stride 1, zero padding K/2, no bias) of LayerNorm(x).
extern "C" int LayerNormDepthwiseInference(int nparam, void **params, int *ndims, int64_t **shapes,
                                           const char **dtypes, void *stream, void *extra) {
  if (nparam != 6 || ndims[0] != 4 || ndims[3] != 4) return 1;
  const int64_t k = shapes[3][2];
  if (shapes[3][0] != shapes[0][3] || shapes[3][1] != 1 || shapes[3][3] != k || k % 2 == 0) return 1;
  const float eps = *static_cast<const float *>(params[4]);
  return Guarded([&] { RunLayerNormDepthwise(params, shapes[0], k, eps, static_cast<float *>(params[5])); });
}

// A Conv-MLP block in one op (fewer launches and output buffers of MindSpore's at 32 px):
// inputs x (N, H, W, C); norm1 gamma, beta, mlp1 fc1 weight (H1, C), bias (H1), fc2 weight (C, H1),
// bias (C); connect_norm gamma, beta, connect weight (C, 1, K, K); norm2 gamma, beta, mlp2 fc1
// weight, bias, fc2 weight, bias; eps (1). Output: y (N, H, W, C) = the three steps of
// LayerNormMlpInference, LayerNormDepthwiseInference and LayerNormMlpInference, with the
// intermediate tokens in buffers of this op.
extern "C" int ConvMlpBlockInference(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                     void *stream, void *extra) {
  if (nparam != 18 || ndims[0] != 4 || ndims[9] != 4 || ndims[16] != 1) return 1;
  const int64_t c = shapes[0][3], k = shapes[9][2];
  const int64_t rows = shapes[0][0] * shapes[0][1] * shapes[0][2];
  for (int first : {3, 12}) {  // the two MLPs: fc1 (H, C), fc2 (C, H)
    if (ndims[first] != 2 || ndims[first + 2] != 2 || shapes[first][1] != c || shapes[first + 2][0] != c ||
        shapes[first + 2][1] != shapes[first][0])
      return 1;
  }
  if (shapes[9][0] != c || shapes[9][1] != 1 || shapes[9][3] != k || k % 2 == 0) return 1;
  if (rows == 0) return 0;
  const float eps = *static_cast<const float *>(params[16]);
  float *y = static_cast<float *>(params[17]);
  return Guarded([&] {
    Scratch scratch;
    float *a = scratch.Floats(rows * c), *b = scratch.Floats(rows * c);
    void *mlp1[7] = {params[0], params[1], params[2], params[3], params[4], params[5], params[6]};
    RunMlp(mlp1, rows, c, shapes[3][0], eps, a);
    void *connect[4] = {a, params[7], params[8], params[9]};
    RunLayerNormDepthwise(connect, shapes[0], k, eps, b);
    void *mlp2[7] = {b, params[10], params[11], params[12], params[13], params[14], params[15]};
    RunMlp(mlp2, rows, c, shapes[12][0], eps, y);
  });
}
