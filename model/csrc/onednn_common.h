// oneDNN helpers shared by the C++ kernels that drive the oneDNN library MindSpore ships
// (lib/libdnnl.so.3): conv_onednn.cc (training convolutions) and infer_onednn.cc (the fused
// inference path). One thread pool, one engine and one buffer cache per process (inline
// functions: the libraries' translation units share them).
//
// MindSpore's oneDNN is built for the "threadpool" CPU runtime, so the streams here run on the
// library's worker pool (common.h: as many threads as the process may use cores, or
// $CONVMLP_CONV_THREADS), the one its other kernels use.
#ifndef CONVMLP_CSRC_ONEDNN_COMMON_H_
#define CONVMLP_CSRC_ONEDNN_COMMON_H_

#include <sched.h>
#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <new>
#include <thread>
#include <utility>
#include <vector>

#include "common.h"
#include "oneapi/dnnl/dnnl.hpp"
#include "oneapi/dnnl/dnnl_threadpool.hpp"

namespace convmlp {

// oneDNN's threadpool interface over the library's worker pool (common.h, pool.cc).
class ThreadPool : public dnnl::threadpool_interop::threadpool_iface {
 public:
  int get_num_threads() const override { return PoolThreads(); }
  bool get_in_parallel() const override { return PoolInside(); }
  uint64_t get_flags() const override { return 0; }  // synchronous
  void wait() override {}
  void parallel_for(int n, const std::function<void(int, int)> &fn) override {
    struct Call {
      const std::function<void(int, int)> *fn;
      int n;
    } call{&fn, n};
    PoolRun(n, [](void *ctx, int i) { (*static_cast<Call *>(ctx)->fn)(i, static_cast<Call *>(ctx)->n); }, &call);
  }
};

inline ThreadPool &Pool() {
  static ThreadPool *pool = new ThreadPool();  // never destroyed (see pool.cc)
  return *pool;
}

inline dnnl::engine &Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

inline dnnl::stream PoolStream() { return dnnl::threadpool_interop::make_stream(Engine(), &Pool()); }

// A oneDNN stream whose primitives run on the calling thread only: for the tasks that the pool
// already runs in parallel (one tile each).
class SerialPool : public dnnl::threadpool_interop::threadpool_iface {
 public:
  int get_num_threads() const override { return 1; }
  bool get_in_parallel() const override { return false; }
  uint64_t get_flags() const override { return 0; }
  void wait() override {}
  void parallel_for(int n, const std::function<void(int, int)> &fn) override {
    for (int i = 0; i < n; ++i) fn(i, n);
  }
};

// This thread's buffer `which` (0-3) of at least n floats, kept between calls, for a task of the
// pool (an inference tile, a Winograd chunk): the task owns the slots it takes until it returns,
// and such tasks do not nest on one thread.
inline float *ThreadFloats(int which, size_t n) {
  static thread_local std::vector<float> buffers[4];
  if (buffers[which].size() < n) buffers[which].resize(n);
  return buffers[which].data();
}

inline dnnl::stream &ThreadStream() {
  static thread_local SerialPool pool;
  static thread_local dnnl::stream stream = dnnl::threadpool_interop::make_stream(Engine(), &pool);
  return stream;
}

// Buffers for the blocked copies, kept between calls for the next calls. Taking them from malloc
// on every call made glibc's arena of MindSpore's launch thread keep several times the distinct
// buffers' size, and fresh pages cost page faults. A request takes
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

inline BufferCache &Buffers() {
  static BufferCache *cache = new BufferCache();  // never destroyed (see Pool())
  return *cache;
}

// The buffers of one call (blocked copies, intermediate results); they return to the cache when
// the call ends, or earlier through Release.
class Scratch {
 public:
  ~Scratch() {
    for (auto &b : held_) Buffers().Give(b.first, b.second);
  }
  void *Bytes(size_t bytes) {
    size_t size = 0;
    void *p = Buffers().Take(bytes < 64 ? 64 : bytes, &size);
    held_.emplace_back(p, size);
    return p;
  }
  float *Floats(size_t n) { return static_cast<float *>(Bytes(n * sizeof(float))); }
  dnnl::memory Memory(const dnnl::memory::desc &desc) { return dnnl::memory(desc, Engine(), Bytes(desc.get_size())); }
  // Hand the buffer at `p` (from this Scratch) back to the cache now; other pointers are ignored.
  void Release(void *p) {
    for (auto it = held_.begin(); it != held_.end(); ++it) {
      if (it->first == p) {
        Buffers().Give(it->first, it->second);
        held_.erase(it);
        return;
      }
    }
  }

 private:
  std::vector<std::pair<void *, size_t>> held_;
};

// A memory in the primitive's layout holding `plain` (reordered when the layouts differ).
inline dnnl::memory ToLayout(const dnnl::memory &plain, const dnnl::memory::desc &want, dnnl::stream &s,
                             Scratch &scratch) {
  if (plain.get_desc() == want) return plain;
  dnnl::memory m = scratch.Memory(want);
  dnnl::reorder(plain, m).execute(s, const_cast<dnnl::memory &>(plain), m);
  return m;
}

// Write `result` (primitive layout) into `plain` (NCHW/OIHW), when they differ.
inline void FromLayout(dnnl::memory &result, dnnl::memory &plain, dnnl::stream &s) {
  if (result.get_desc() == plain.get_desc()) return;
  dnnl::reorder(result, plain).execute(s, result, plain);
}

// Weights in a primitive's layout, kept between calls of the inference ops (the reorder of a
// large weight matrix costs as much as its product with a small batch). An entry is used only
// while the plain weights are bit-for-bit the copy it was made from, so a training step, a
// checkpoint load or any other write in between makes the next call rebuild it. At most
// kMaxBytes of copies are kept; past that, entries unused for kStaleSeconds make room, else the
// weights are reordered for the call only.
class PackedWeights {
 public:
  dnnl::memory Get(const dnnl::memory &plain, const dnnl::memory::desc &want, dnnl::stream &s, Scratch &scratch) {
    if (plain.get_desc() == want) return plain;
    const char *ptr = static_cast<const char *>(plain.get_data_handle());
    const size_t bytes = plain.get_desc().get_size();
    const auto now = std::chrono::steady_clock::now();
    std::lock_guard<std::mutex> lock(mutex_);
    Entry *entry = nullptr;
    for (auto &e : entries_) {
      if (e.ptr == ptr && e.want == want) entry = &e;
    }
    if (entry != nullptr && entry->plain.size() == bytes && Equal(entry->plain.data(), ptr, bytes)) {
      entry->used = now;
      return entry->packed;
    }
    const size_t cost = bytes + want.get_size();
    if (entry == nullptr && !MakeRoom(cost, now)) return ToLayout(plain, want, s, scratch);
    if (entry == nullptr) {
      entries_.push_back(Entry{ptr, want, {}, dnnl::memory(want, Engine()), now});
      entry = &entries_.back();
      bytes_ += cost;
    }
    entry->plain.assign(ptr, ptr + bytes);
    entry->used = now;
    dnnl::reorder(plain, entry->packed).execute(s, const_cast<dnnl::memory &>(plain), entry->packed);
    return entry->packed;
  }

 private:
  struct Entry {
    const char *ptr;
    dnnl::memory::desc want;
    std::vector<char> plain;
    dnnl::memory packed;
    std::chrono::steady_clock::time_point used;
  };
  // memcmp(a, b, n) == 0, in slices on the pool's threads for large n
  static bool Equal(const char *a, const char *b, size_t n) {
    const int slices = n >= (size_t(1) << 17) ? Pool().get_num_threads() : 1;
    if (slices <= 1) return std::memcmp(a, b, n) == 0;
    std::atomic<bool> same{true};
    Pool().parallel_for(slices, [&](int i, int k) {
      const size_t lo = n * i / k, hi = n * (i + 1) / k;
      if (same.load(std::memory_order_relaxed) && std::memcmp(a + lo, b + lo, hi - lo) != 0) same = false;
    });
    return same.load();
  }
  bool MakeRoom(size_t cost, std::chrono::steady_clock::time_point now) {
    for (auto it = entries_.begin(); it != entries_.end() && bytes_ + cost > kMaxBytes;) {
      if (now - it->used > std::chrono::seconds(kStaleSeconds)) {
        bytes_ -= it->plain.size() + it->want.get_size();
        it = entries_.erase(it);
      } else {
        ++it;
      }
    }
    return bytes_ + cost <= kMaxBytes;
  }
  static constexpr size_t kMaxBytes = size_t(256) << 20;
  static constexpr int kStaleSeconds = 30;
  std::mutex mutex_;
  std::list<Entry> entries_;
  size_t bytes_ = 0;
};

inline PackedWeights &Packed() {
  static PackedWeights *cache = new PackedWeights();  // never destroyed (see Pool())
  return *cache;
}

template <typename F>
inline int Guarded(F f) {
  try {
    f();
    return 0;
  } catch (...) {
    return 1;
  }
}

}  // namespace convmlp

#endif  // CONVMLP_CSRC_ONEDNN_COMMON_H_
