// 2-D convolution (groups 1, symmetric padding, no bias), NCHW float32, forward and both backward
// passes, for MindSpore's Custom "aot" op on the CPU (see model/cpu_kernels/), driving the
// oneDNN library that MindSpore itself ships (lib/libdnnl.so.3).
//
// MindSpore 2.10's own CPU convolution hands oneDNN plain NCHW memory, so oneDNN runs im2col +
// GEMM. Here each primitive is created with "any" memory formats, letting oneDNN pick its blocked
// layouts and direct (JIT) kernels, as PyTorch does; inputs are reordered into those layouts and
// the result back to NCHW on every call. Primitives are cached by shape. The forward keeps the
// plain layouts where oneDNN has a GEMM kernel for them (under src/platform/cpu.py's AVX2 cap: reordering
// the input and output cost more than the blocked forward saved, 224 px inference 13 % slower)
// and takes the blocked ones where it would fall back to a reference kernel (AVX-512 uncapped);
// the two backward passes use the blocked ones. MindSpore's oneDNN is built for the "threadpool"
// CPU runtime, so the streams
// here get a small thread pool of their own: as many threads as the process may use cores, or
// $CONVMLP_CONV_THREADS.
#include <sched.h>
#include <sys/mman.h>

#include <atomic>
#include <cstdlib>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <thread>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "oneapi/dnnl/dnnl_threadpool.hpp"

namespace {

// A fixed pool of worker threads implementing oneDNN's threadpool interface: parallel_for(n, fn)
// runs fn(i, n) for every i, on the workers and the calling thread, and returns when all are done.
class ThreadPool : public dnnl::threadpool_interop::threadpool_iface {
 public:
  explicit ThreadPool(int threads) : threads_(threads < 1 ? 1 : threads) {
    for (int t = 1; t < threads_; ++t) workers_.emplace_back([this] { Work(); });
  }
  ~ThreadPool() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto &w : workers_) w.join();
  }
  int get_num_threads() const override { return threads_; }
  bool get_in_parallel() const override { return inside_; }
  uint64_t get_flags() const override { return 0; }  // synchronous
  void wait() override {}
  void parallel_for(int n, const std::function<void(int, int)> &fn) override {
    if (n <= 0) return;
    if (threads_ == 1 || n == 1 || inside_) {
      for (int i = 0; i < n; ++i) fn(i, n);
      return;
    }
    std::lock_guard<std::mutex> serial(submit_);  // one job at a time
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &fn;
      n_ = n;
      next_.store(0);
      done_.store(0);
      ++generation_;
    }
    wake_.notify_all();
    Run(&fn, n);
    std::unique_lock<std::mutex> lock(mutex_);
    // every index done and every worker that joined this job out of it: only then may the
    // next job reset the shared counters
    finished_.wait(lock, [&] { return done_.load() == n && active_ == 0; });
    job_ = nullptr;
  }

 private:
  void Run(const std::function<void(int, int)> *job, int n) {
    inside_ = true;
    for (int i = next_.fetch_add(1); i < n; i = next_.fetch_add(1)) {
      (*job)(i, n);
      done_.fetch_add(1);
    }
    inside_ = false;
  }
  void Work() {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int, int)> *job;
      int n;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        if (job_ == nullptr) continue;  // woke after that job ended
        job = job_;
        n = n_;
        ++active_;
      }
      Run(job, n);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        --active_;
      }
      finished_.notify_all();
    }
  }

  const int threads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_, submit_;
  std::condition_variable wake_, finished_;
  const std::function<void(int, int)> *job_ = nullptr;
  int n_ = 0;
  int active_ = 0;
  std::atomic<int> next_{0}, done_{0};
  uint64_t generation_ = 0;
  bool stop_ = false;
  static thread_local bool inside_;
};

thread_local bool ThreadPool::inside_ = false;

int UsableCores() {
  if (const char *env = std::getenv("CONVMLP_CONV_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

ThreadPool &Pool() {
  // Never destroyed: joining workers from a static destructor at process exit could wait on a
  // thread MindSpore is still tearing down; the OS ends them with the process.
  static ThreadPool *pool = new ThreadPool(UsableCores());
  return *pool;
}

using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

dnnl::engine &Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

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
  Prims *raw = p.get();
  cache[k] = std::move(p);
  return raw;
}

// Buffers for the blocked copies, kept between calls for the next calls. Taking them from malloc
// on every call made glibc's arena of MindSpore's launch thread keep ~390 MiB (224 px training,
// batch 16) for ~100 MiB of distinct buffers, and fresh pages cost page faults. A request takes
// the smallest idle buffer of at least its size and at most twice it, else maps a new one; at
// most kMaxIdleBytes of idle buffers are kept, the rest go back to the system.
class BufferCache {
 public:
  // A buffer of at least `bytes`; its actual size in `*size`.
  void *Take(size_t bytes, size_t *size) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = idle_.lower_bound(bytes);
      if (it != idle_.end() && it->first / 2 <= bytes) {
        void *p = it->second;
        *size = it->first;
        idle_bytes_ -= it->first;
        idle_.erase(it);
        return p;
      }
    }
    void *p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    *size = bytes;
    return p;
  }
  void Give(void *p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (idle_bytes_ + bytes <= kMaxIdleBytes) {
        idle_.emplace(bytes, p);
        idle_bytes_ += bytes;
        return;
      }
    }
    munmap(p, bytes);
  }

 private:
  static constexpr size_t kMaxIdleBytes = size_t(512) << 20;
  std::mutex mutex_;
  std::multimap<size_t, void *> idle_;
  size_t idle_bytes_ = 0;
};

BufferCache &Buffers() {
  static BufferCache *cache = new BufferCache();  // never destroyed (see Pool())
  return *cache;
}

// The blocked copies of one call; their buffers return to the cache when the call ends.
class Scratch {
 public:
  ~Scratch() {
    for (auto &b : held_) Buffers().Give(b.first, b.second);
  }
  dnnl::memory Memory(const dnnl::memory::desc &desc) {
    size_t size = 0;
    void *p = Buffers().Take(desc.get_size(), &size);
    held_.emplace_back(p, size);
    return dnnl::memory(desc, Engine(), p);
  }

 private:
  std::vector<std::pair<void *, size_t>> held_;
};

// A memory in the primitive's layout holding `plain` (reordered when the layouts differ).
dnnl::memory ToLayout(const dnnl::memory &plain, const dnnl::memory::desc &want, dnnl::stream &s,
                      Scratch &scratch) {
  if (plain.get_desc() == want) return plain;
  dnnl::memory m = scratch.Memory(want);
  dnnl::reorder(plain, m).execute(s, const_cast<dnnl::memory &>(plain), m);
  return m;
}

// Write `result` (primitive layout) into `plain` (NCHW/OIHW), when they differ.
void FromLayout(dnnl::memory &result, dnnl::memory &plain, dnnl::stream &s) {
  if (result.get_desc() == plain.get_desc()) return;
  dnnl::reorder(result, plain).execute(s, result, plain);
}

bool MakeKey(const int64_t *x, const int64_t *w, const int64_t *y, const int32_t *cfg, Key *k) {
  *k = Key{x[0], x[1], x[2], x[3], w[0], w[2], w[3], y[2], y[3], cfg[0], cfg[1]};
  return w[1] == x[1] && y[0] == x[0] && y[1] == w[0] && cfg[0] > 0 && cfg[1] >= 0;
}

template <typename F>
int Guarded(F f) {
  try {
    f();
    return 0;
  } catch (...) {
    return 1;
  }
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
    dnnl::stream s = dnnl::threadpool_interop::make_stream(Engine(), &Pool());
    dnnl::memory x(p->src_plain, Engine(), params[0]), w(p->weights_plain, Engine(), params[1]);
    dnnl::memory y(p->dst_plain, Engine(), params[3]);
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
    dnnl::stream s = dnnl::threadpool_interop::make_stream(Engine(), &Pool());
    dnnl::memory dy(p->dst_plain, Engine(), params[0]), w(p->weights_plain, Engine(), params[1]);
    dnnl::memory dx(p->src_plain, Engine(), params[4]);
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
    dnnl::stream s = dnnl::threadpool_interop::make_stream(Engine(), &Pool());
    dnnl::memory dy(p->dst_plain, Engine(), params[0]), x(p->src_plain, Engine(), params[1]);
    dnnl::memory dw(p->weights_plain, Engine(), params[4]);
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
