/// \file lane.cpp
/// \brief The lane threads (set up device state once, then pop and run ready steps; wait for
/// device work to land) and the process-wide lane pool with its fork handlers.
#include "lane.h"

#include "../spin_before_park.h"

#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/thread_name.h>

#include <chrono>

namespace chrion {
namespace {

using PoolKey = std::tuple<std::string, std::string, int, bool>;

struct PoolState {
  std::mutex mutex;
  std::map<PoolKey, std::shared_ptr<Lane>> lanes;
};

// Never freed: a forked child abandons the parent's pool (its mutex may be held, its lanes'
// threads do not exist), and lanes may outlive static destruction at exit.
PoolState* g_pool = new PoolState();
std::vector<std::shared_ptr<Lane>>* g_abandoned = new std::vector<std::shared_ptr<Lane>>();
std::atomic<uint64_t> g_generation{0};

PoolKey key_of(const LaneSpec& spec) {
  return {spec.name, spec.device.str(), spec.threads, spec.fake};
}

}  // namespace

uint64_t process_generation() { return g_generation.load(std::memory_order_acquire); }

namespace {
std::atomic<int64_t> g_spin_ns{kSpinBeforeParkNs};
}  // namespace

void set_spin_before_park_us(double us) {
  g_spin_ns.store(static_cast<int64_t>(std::max(0.0, us) * 1e3), std::memory_order_relaxed);
}

double spin_before_park_us() { return g_spin_ns.load(std::memory_order_relaxed) / 1e3; }

bool spin_until(const std::function<bool()>& ready) {
  const int64_t budget = g_spin_ns.load(std::memory_order_relaxed);
  if (budget <= 0) return ready();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::nanoseconds(budget);
  while (!ready()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::yield();  // a waiting thread of this machine gets the core first
  }
  return true;
}

Lane::Lane(LaneSpec spec) : spec_(std::move(spec)), generation_(process_generation()) {
  if (spec_.device.type() != c10::kCPU) {
    c10::impl::VirtualGuardImpl impl(spec_.device.type());
    stream_ = impl.getStreamFromGlobalPool(spec_.device, /*isHighPriority=*/false);
  }
}

std::shared_ptr<Lane> Lane::start(const LaneSpec& spec) {
  std::shared_ptr<Lane> lane(new Lane(spec));
  // Each thread holds the lane: a thread detached after a stop timeout frees nothing it reads.
  lane->running_ = lane->spec_.asynchronous() ? 2 : 1;
  lane->thread_ = std::thread([self = lane] { self->main(); });
  if (lane->spec_.asynchronous()) {
    lane->completer_ = std::thread([self = lane] { self->completer_main(); });
  }
  std::unique_lock<std::mutex> lock(lane->mutex_);
  lane->wake_.wait(lock, [&] { return lane->started_; });
  return lane;
}

Lane::~Lane() {
  // Only reached once both threads have exited (they hold the lane): nothing to join. A thread
  // object still joinable here belongs to a thread that ended without stop(); let it go.
  if (thread_.joinable()) thread_.detach();
  if (completer_.joinable()) completer_.detach();
}

bool Lane::push(Task task) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) return false;
    queue_.push(std::move(task));
    queued_.fetch_add(1, std::memory_order_relaxed);
  }
  wake_.notify_all();  // the lane thread and the completer share the condition variable
  return true;
}

bool Lane::complete_later(std::function<void()> work) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) return false;
    completions_.push_back(std::move(work));
  }
  wake_.notify_all();
  return true;
}

void Lane::main() {
  c10::setThreadName("chrion:" + spec_.name);
  c10::AutoGradMode no_grad(false);  // inference only: no autograd graph on lane threads
  if (stream_) {
    c10::impl::VirtualGuardImpl impl(spec_.device.type());
    impl.setDevice(spec_.device);
    impl.exchangeStream(*stream_);  // the lane's stream is this thread's current stream
  } else {
    // ATen initialises a thread's count lazily, on its first parallel op, from the process-wide
    // default; initialise first so that this thread's own count is the one that stays.
    (void)at::get_num_threads();
    at::set_num_threads(std::max(1, spec_.threads));
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    started_ = true;
  }
  wake_.notify_all();

  while (true) {
    Task task;
    bool cancelled = false;
    spin_until([this] { return queued_.load(std::memory_order_acquire) > 0; });
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) break;  // stopping and drained
      task = queue_.top();
      queue_.pop();
      busy_.store(true);  // before the count drops: free() never sees neither
      queued_.fetch_sub(1, std::memory_order_relaxed);
      cancelled = stopping_;
    }
    {
      std::lock_guard<std::mutex> turn(turn_);
      run_task(task, cancelled);
    }
    busy_.store(false);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  running_ -= 1;
  exited_cv_.notify_all();
}

void Lane::completer_main() {
  c10::setThreadName("chrion:" + spec_.name + ":done");
  c10::AutoGradMode no_grad(false);
  while (true) {
    std::function<void()> next;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !completions_.empty(); });
      if (completions_.empty()) break;  // stopping and drained: pending copies still land
      next = std::move(completions_.front());
      completions_.pop_front();
    }
    next();
  }
  std::lock_guard<std::mutex> lock(mutex_);
  running_ -= 1;
  exited_cv_.notify_all();
}

bool Lane::stop(double timeout_s) {
  if (generation_ != process_generation()) return true;  // a parent's lane in a forked child
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  const auto self = std::this_thread::get_id();
  if (self == thread_.get_id() || self == completer_.get_id()) {
    // Released from its own thread (a Python step dropped the last module): it exits once
    // the current step returns, holding the lane until then.
    if (thread_.joinable()) thread_.detach();
    if (completer_.joinable()) completer_.detach();
    return true;
  }
  bool finished;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    finished = exited_cv_.wait_for(lock, std::chrono::duration<double>(timeout_s),
                                   [this] { return running_ == 0; });
  }
  for (std::thread* t : {&thread_, &completer_}) {
    if (!t->joinable()) continue;
    if (finished) {
      t->join();
    } else {
      t->detach();  // stuck inside an operator: it keeps the lane alive until it returns
    }
  }
  return finished;
}

std::shared_ptr<Lane> LanePool::acquire(const LaneSpec& spec) {
  std::lock_guard<std::mutex> lock(g_pool->mutex);
  auto& slot = g_pool->lanes[key_of(spec)];
  if (!slot) {
    // at::set_num_threads on a lane thread sets that thread's OpenMP and MKL thread counts, but
    // also the process-wide default that threads initialising ATen later inherit (and the
    // shared pthreadpool's size): put the caller's value back once the lane is up.
    const int caller_threads = at::get_num_threads();
    slot = Lane::start(spec);
    at::set_num_threads(caller_threads);
  }
  slot->users_ += 1;
  return slot;
}

bool LanePool::release(const std::shared_ptr<Lane>& lane, double timeout_s) {
  if (lane->generation() != process_generation()) return true;
  {
    std::lock_guard<std::mutex> lock(g_pool->mutex);
    if (--lane->users_ > 0) return true;
    auto it = g_pool->lanes.find(key_of(lane->spec()));
    if (it != g_pool->lanes.end() && it->second == lane) g_pool->lanes.erase(it);
  }
  return lane->stop(timeout_s);
}

int64_t LanePool::live_lanes() {
  std::lock_guard<std::mutex> lock(g_pool->mutex);
  return (int64_t)g_pool->lanes.size();
}

void LanePool::before_fork() { g_pool->mutex.lock(); }

void LanePool::after_fork_parent() { g_pool->mutex.unlock(); }

void LanePool::after_fork_child() {
  // The parent's lanes have no threads here, and their mutexes may have been held by them:
  // keep them referenced forever (never destroyed, never waited on) and start afresh.
  for (auto& [key, lane] : g_pool->lanes) g_abandoned->push_back(lane);
  g_pool = new PoolState();
  g_generation.fetch_add(1, std::memory_order_acq_rel);
}

}  // namespace chrion
