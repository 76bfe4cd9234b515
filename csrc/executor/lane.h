/// \file lane.h
/// \brief A lane: one long-lived worker thread for one device, with a ready queue; and the
/// process-wide pool that shares lanes between executors.
///
/// Note [Chrion lanes]
/// A lane owns one std::thread, a priority queue of ready steps and, on a device with streams
/// (CUDA), one stream from the pool that is the thread's current stream for its whole life, so
/// every kernel the lane issues is ordered on it. CPU lanes set their own intra-op thread count
/// (at::set_num_threads on the lane thread: with ATen's OpenMP backend this sets the calling
/// thread's OpenMP ICV, so each lane's parallel regions get their own team size).
///
/// Lanes belong to the process, not to a program: LanePool hands out one lane per LaneSpec
/// (name, device, threads) and every executor, of every shape of every model, that asks for it
/// shares it; per-call state lives in Request (cf. autograd's ReadyQueue / GraphTask split). A
/// lane's thread stops when its last user releases it. A lane of a device whose work completes
/// asynchronously (CUDA, the test-only fake device) has a second thread, its completer, that
/// waits for device work to land and then runs what depends on it (Note [Chrion copy steps]).
///
/// Shutdown: stop() joins with a timeout. A thread stuck inside an operator past the timeout
/// is detached, and it keeps its Lane alive (the thread holds a shared_ptr to it), so nothing it
/// may still read is freed. After fork() the child has no lane threads: the pool's child
/// handler abandons every lane of the parent (never touched or freed again: their mutexes may be
/// held, their threads do not exist) and bumps the generation, so executors rebuild their lanes
/// on their next call and stop() never waits for a thread that does not exist.
#pragma once

#include <c10/core/Stream.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <queue>
#include <thread>
#include <tuple>
#include <vector>

#include "program.h"

namespace chrion {

struct Request;

/// \brief A ready step of one request, waiting on a lane.
struct Task {
  std::shared_ptr<Request> request;
  int32_t step = 0;
  uint64_t request_id = 0;  ///< earlier requests first (a request has one ready step per lane)
};

/// \brief Runs a task on a lane thread; `cancelled` when the lane is stopping (executor.cpp).
void run_task(Task& task, bool cancelled);

/// Note [Chrion spin before park]
/// A thread parked on a condition variable takes a futex wake-up to resume: a system call on
/// the waker's side and, on the woken side, however long the scheduler takes to run it again
/// (tens of microseconds on a loaded machine, more than a small operator). So a lane thread
/// whose queue ran empty, and a caller waiting for its request, first poll for a while
/// (yielding the core at each poll, so a runnable thread of this machine goes first) and only
/// then park. Work that arrives within the spin is picked up at once, and the waker's notify
/// finds nobody parked, which costs it no system call either. The spin is process-wide
/// (set_spin_before_park_us; 0 parks at once), from kSpinBeforeParkNs (spin_before_park.h says
/// why 300 us).

/// \brief How long a lane or a caller polls before it parks, in microseconds (default 300).
void set_spin_before_park_us(double us);
double spin_before_park_us();
/// \brief Poll `ready` (yielding between polls) for the spin time. \return whether it became
/// true.
bool spin_until(const std::function<bool()>& ready);

/// \brief Process generation: bumped in a forked child, whose lanes must be rebuilt.
uint64_t process_generation();

class Lane : public std::enable_shared_from_this<Lane> {
 public:
  /// \brief A lane with its thread (and completer) running.
  static std::shared_ptr<Lane> start(const LaneSpec& spec);
  ~Lane();
  Lane(const Lane&) = delete;
  Lane& operator=(const Lane&) = delete;

  /// \brief Queue a ready task. Returns false (and queues nothing) once the lane is stopping.
  bool push(Task task);

  /// \brief Run `work` (wait for device work to land, then act on it) on the completer thread,
  /// in the order given: one stream's events land in order. False once the lane is stopping.
  bool complete_later(std::function<void()> work);

  /// \brief Stop taking tasks, cancel the queued ones, finish pending completions, and join.
  /// \return false when a thread did not finish within `timeout_s` (it is then detached).
  bool stop(double timeout_s);

  /// \brief Nothing queued right now (a hint read without the lock).
  bool idle() const { return queued_.load(std::memory_order_relaxed) == 0; }

  /// \brief Held by whoever runs steps on this lane: its thread, task by task, or a caller
  /// running its whole request itself (Note [Chrion inline requests] in executor.cpp), so the
  /// lane's core still runs one step at a time.
  std::mutex& turn() { return turn_; }
  /// \brief Nothing queued and no task taken by the lane's thread: a caller may take the turn
  /// without overtaking a request that waits for it.
  bool free() const { return idle() && !busy_.load(); }

  const LaneSpec& spec() const { return spec_; }
  /// \brief The lane's stream (CUDA lanes only).
  const std::optional<c10::Stream>& stream() const { return stream_; }
  /// \brief The process generation the lane's threads were started in.
  uint64_t generation() const { return generation_; }

 private:
  friend class LanePool;
  explicit Lane(LaneSpec spec);
  void main();
  void completer_main();

  struct Later {
    bool operator()(const Task& a, const Task& b) const { return a.request_id > b.request_id; }
  };

  LaneSpec spec_;
  uint64_t generation_;
  std::optional<c10::Stream> stream_;
  std::mutex mutex_;
  std::mutex turn_;
  std::condition_variable wake_;
  std::condition_variable exited_cv_;
  std::priority_queue<Task, std::vector<Task>, Later> queue_;
  std::deque<std::function<void()>> completions_;
  std::atomic<int64_t> queued_{0};
  std::atomic<bool> busy_{false};  ///< its thread holds a task (waiting for the turn, or running)
  int users_ = 0;  ///< executors holding the lane (guarded by the pool's mutex)
  bool stopping_ = false;
  bool started_ = false;
  int running_ = 0;  ///< threads not yet exited (lane thread, completer)
  std::thread thread_;
  std::thread completer_;
};

/// \brief One lane per LaneSpec in the process, shared by every executor that names it.
class LanePool {
 public:
  /// \brief The lane for `spec`, started if nobody holds one; the caller becomes a user.
  static std::shared_ptr<Lane> acquire(const LaneSpec& spec);
  /// \brief Drop one use; the last user stops the lane's threads within `timeout_s`.
  /// \return false when the lane was stopped and a thread missed the timeout.
  static bool release(const std::shared_ptr<Lane>& lane, double timeout_s);
  /// \brief Lanes alive in this process (for tests and stats).
  static int64_t live_lanes();
  /// \brief fork() handlers: lock the pool across fork, then unlock (parent) or abandon the
  /// parent's lanes and start a new generation (child).
  static void before_fork();
  static void after_fork_parent();
  static void after_fork_child();
};

}  // namespace chrion
