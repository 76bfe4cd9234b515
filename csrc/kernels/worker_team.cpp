#include "worker_team.h"

#include <c10/util/thread_name.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "../spin_before_park.h"
#include "spin_pause.h"

namespace chrion::recurrent {
namespace {

using Clock = std::chrono::steady_clock;
// How long an idle helper polls before parking, in ns (Note [Recurrent worker teams]).
std::atomic<int64_t> g_idle_spin_ns{kSpinBeforeParkNs};
// Polling without yielding for this long first: a job a step away is picked up at once.
constexpr auto kEagerSpin = std::chrono::microseconds(50);

std::atomic<int> g_started{0};

using Work = std::shared_ptr<const std::function<void(int)>>;

class Team {
 public:
  explicit Team(int helpers) {
    for (int rank = 1; rank <= helpers; ++rank) {
      std::thread([this, rank] { helper_main(rank); }).detach();
      g_started.fetch_add(1);
    }
  }

  void run(const Work& work) {
    {
      std::lock_guard<std::mutex> lock(job_mutex_);
      job_ = work;
    }
    generation_.fetch_add(1);
    if (parked_.load() > 0) {
      std::lock_guard<std::mutex> lock(mutex_);
      wake_.notify_all();
    }
    // however work(0) ends, a helper that has not picked the job up by then never will
    struct Close {
      Team* team;
      ~Close() {
        std::lock_guard<std::mutex> lock(team->job_mutex_);
        team->job_.reset();
      }
    } close{this};
    (*work)(0);
  }

 private:
  void helper_main(int rank) {
    c10::setThreadName("chrion:rnn" + std::to_string(rank));
    uint64_t seen = 0;
    while (true) {
      seen = wait_for_job(seen);
      Work work;
      {
        std::lock_guard<std::mutex> lock(job_mutex_);
        work = job_;
      }
      if (work) (*work)(rank);
    }
  }

  // the generation of the next job after `seen`: poll for the idle spin, then park
  uint64_t wait_for_job(uint64_t seen) {
    const auto start = Clock::now();
    const auto spin = std::chrono::nanoseconds(g_idle_spin_ns.load(std::memory_order_relaxed));
    const auto until = start + spin;
    for (int i = 0;; ++i) {
      const uint64_t g = generation_.load();
      if (g != seen) return g;
      spin_pause();
      if ((i & 63) != 63) continue;
      const auto now = Clock::now();
      if (now > until) break;
      if (now - start > kEagerSpin) std::this_thread::yield();
    }
    std::unique_lock<std::mutex> lock(mutex_);
    parked_.fetch_add(1);
    wake_.wait(lock, [&] { return generation_.load() != seen; });
    parked_.fetch_sub(1);
    return generation_.load();
  }

  std::mutex job_mutex_;
  Work job_;  // the job in progress, if any
  // seq_cst: a helper's `parked_` increment and the caller's `generation_` increment must each
  // see the other's write, or a job posted as the helper parks would not wake it
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> parked_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
};

// Free teams by size. Leaked on purpose, as are the teams: helpers may still be parked at exit.
struct Pool {
  std::mutex mutex;
  std::map<int, std::vector<Team*>> free;
};

std::atomic<Pool*> g_pool{new Pool()};

void reset_pool_after_fork() { g_pool.store(new Pool()); }  // the parent's helpers are gone

[[maybe_unused]] const int g_atfork = pthread_atfork(nullptr, nullptr, &reset_pool_after_fork);

Team* acquire(int helpers) {
  Pool* pool = g_pool.load();
  {
    std::lock_guard<std::mutex> lock(pool->mutex);
    auto& free = pool->free[helpers];
    if (!free.empty()) {
      Team* team = free.back();
      free.pop_back();
      return team;
    }
  }
  return new Team(helpers);
}

void release(int helpers, Team* team) {
  Pool* pool = g_pool.load();
  std::lock_guard<std::mutex> lock(pool->mutex);
  pool->free[helpers].push_back(team);
}

}  // namespace

void run_with_helpers(int threads, std::shared_ptr<const std::function<void(int rank)>> work) {
  if (threads <= 1) {
    (*work)(0);
    return;
  }
  Team* team = acquire(threads - 1);
  struct Release {
    int helpers;
    Team* team;
    ~Release() { release(helpers, team); }
  } give_back{threads - 1, team};
  team->run(work);
}

void set_idle_spin_us(double us) {
  g_idle_spin_ns.store(static_cast<int64_t>(std::max(0.0, us) * 1e3), std::memory_order_relaxed);
}

double idle_spin_us() { return g_idle_spin_ns.load(std::memory_order_relaxed) / 1e3; }

int helper_threads_started() { return g_started.load(); }

}  // namespace chrion::recurrent
