// The worker pool of a library's kernels (declared in common.h): compiled into each library that
// uses it, so each has one pool, made on first use. Kept out of the header so that the kernels'
// files do not compile the thread machinery each.
#include <sched.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#include "common.h"

namespace convmlp {
namespace {

// Cores this process may run on (its CPU affinity), at least 1.
int CoresAvailable() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

// Threads of the pool: $CONVMLP_CONV_THREADS, else the cores this process may use.
int UsableCores() {
  if (const char *env = std::getenv("CONVMLP_CONV_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  return CoresAvailable();
}

struct Job {
  void (*task)(void *, int);
  void *ctx;
};

class WorkerPool {
 public:
  explicit WorkerPool(int threads) : threads_(threads < 1 ? 1 : threads) {
    for (int t = 1; t < threads_; ++t) workers_.emplace_back([this] { Work(); });
  }
  int threads() const { return threads_; }
  bool inside() const { return inside_; }
  void Run(int n, Job job) {
    if (n <= 0) return;
    if (threads_ == 1 || n == 1 || inside_) {
      for (int i = 0; i < n; ++i) job.task(job.ctx, i);
      return;
    }
    std::lock_guard<std::mutex> serial(submit_);  // one job at a time
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = job;
      has_job_ = true;
      n_ = n;
      next_.store(0);
      done_.store(0);
      ++generation_;
    }
    wake_.notify_all();
    Take(job, n);
    std::unique_lock<std::mutex> lock(mutex_);
    // every index done and every worker that joined this job out of it: only then may the
    // next job reset the shared counters
    finished_.wait(lock, [&] { return done_.load() == n && active_ == 0; });
    has_job_ = false;
  }

 private:
  void Take(Job job, int n) {
    inside_ = true;
    for (int i = next_.fetch_add(1); i < n; i = next_.fetch_add(1)) {
      job.task(job.ctx, i);
      done_.fetch_add(1);
    }
    inside_ = false;
  }
  void Work() {
    uint64_t seen = 0;
    for (;;) {
      Job job;
      int n;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (!has_job_) continue;  // woke after that job ended
        job = job_;
        n = n_;
        ++active_;
      }
      Take(job, n);
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
  Job job_{nullptr, nullptr};
  bool has_job_ = false;
  int n_ = 0;
  int active_ = 0;
  std::atomic<int> next_{0}, done_{0};
  uint64_t generation_ = 0;
  static thread_local bool inside_;
};

thread_local bool WorkerPool::inside_ = false;

// Never destroyed: joining workers from a static destructor at process exit could wait on a
// thread MindSpore is still tearing down; the OS ends them with the process.
WorkerPool &Workers() {
  static WorkerPool *pool = new WorkerPool(UsableCores());
  return *pool;
}

}  // namespace

int PoolThreads() { return Workers().threads(); }
bool PoolInside() { return Workers().inside(); }
void PoolRun(int n, void (*task)(void *ctx, int i), void *ctx) { Workers().Run(n, Job{task, ctx}); }

}  // namespace convmlp
