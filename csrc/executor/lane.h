/// \file lane.h
/// \brief A lane: one long-lived worker thread for one device, with a ready queue.
///
/// Note [Chrion lanes]
/// A lane owns one std::thread, a priority queue of ready steps and, on a device with streams
/// (CUDA), one stream from the pool that is the thread's current stream for its whole life, so
/// every kernel the lane issues is ordered on it. CPU lanes set their own intra-op thread count
/// (at::set_num_threads on the lane thread: with ATen's OpenMP backend this sets the calling
/// thread's OpenMP ICV, so each lane's parallel regions get their own team size). Lanes are
/// long-lived and shared by every request of a module; per-call state lives in Request
/// (cf. autograd's ReadyQueue / GraphTask split). stop() joins with a timeout: it never leaves a
/// thread running at interpreter exit unless an operator is stuck, and then says so.
#pragma once

#include <c10/core/Stream.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <queue>
#include <thread>
#include <vector>

#include "program.h"

namespace chrion {

struct Request;

/// \brief A ready step of one request, waiting on a lane.
struct Task {
  std::shared_ptr<Request> request;
  int32_t step = 0;
  uint64_t request_id = 0;  ///< earlier requests first...
  int64_t rank = 0;         ///< ...then the plan's order
};

/// \brief Runs a task on the lane thread; `cancelled` is true when the lane is stopping.
using TaskHandler = std::function<void(Task&, bool cancelled)>;

class Lane {
 public:
  /// \brief Start the lane's thread; returns once the thread has set its device, stream and
  /// thread count. \param index position of the lane in Program::lanes.
  Lane(int32_t index, LaneSpec spec, TaskHandler handler);
  ~Lane();
  Lane(const Lane&) = delete;
  Lane& operator=(const Lane&) = delete;

  /// \brief Queue a ready task. Returns false (and queues nothing) once the lane is stopping.
  bool push(Task task);

  /// \brief Stop taking tasks, cancel the queued ones, and join the thread.
  /// \return false when the thread did not finish within `timeout_s` (it is then detached).
  bool stop(double timeout_s);

  /// \brief Nothing queued right now (a hint read without the lock).
  bool idle() const { return queued_.load(std::memory_order_relaxed) == 0; }

  const LaneSpec& spec() const { return spec_; }
  /// \brief The lane's stream (CUDA lanes only; CPU lanes have none).
  const std::optional<c10::Stream>& stream() const { return stream_; }

 private:
  struct Later {
    bool operator()(const Task& a, const Task& b) const {
      return a.request_id != b.request_id ? a.request_id > b.request_id : a.rank > b.rank;
    }
  };
  void main();

  int32_t index_;
  LaneSpec spec_;
  TaskHandler handler_;
  std::optional<c10::Stream> stream_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable exited_cv_;
  std::priority_queue<Task, std::vector<Task>, Later> queue_;
  std::atomic<int64_t> queued_{0};
  bool stopping_ = false;
  bool started_ = false;
  bool exited_ = false;
  std::thread thread_;
};

}  // namespace chrion
