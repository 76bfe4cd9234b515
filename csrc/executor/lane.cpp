/// \file lane.cpp
/// \brief The lane thread: set up device state once, then pop and run ready steps.
#include "lane.h"

#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/thread_name.h>

#include <chrono>

namespace chrion {

Lane::Lane(int32_t index, LaneSpec spec, TaskHandler handler)
    : index_(index), spec_(std::move(spec)), handler_(std::move(handler)) {
  if (spec_.device.type() != c10::kCPU) {
    c10::impl::VirtualGuardImpl impl(spec_.device.type());
    stream_ = impl.getStreamFromGlobalPool(spec_.device, /*isHighPriority=*/false);
  }
  thread_ = std::thread([this] { main(); });
  std::unique_lock<std::mutex> lock(mutex_);
  wake_.wait(lock, [this] { return started_; });
}

Lane::~Lane() { stop(/*timeout_s=*/10.0); }

bool Lane::push(Task task) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) return false;
    queue_.push(std::move(task));
    queued_.fetch_add(1, std::memory_order_relaxed);
  }
  wake_.notify_one();
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
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) break;  // stopping and drained
      task = queue_.top();
      queue_.pop();
      queued_.fetch_sub(1, std::memory_order_relaxed);
      cancelled = stopping_;
    }
    handler_(task, cancelled);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  exited_ = true;
  exited_cv_.notify_all();
}

bool Lane::stop(double timeout_s) {
  if (!thread_.joinable()) return true;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  bool finished;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    finished = exited_cv_.wait_for(lock, std::chrono::duration<double>(timeout_s),
                                   [this] { return exited_; });
  }
  if (finished) {
    thread_.join();
  } else {
    thread_.detach();  // stuck inside an operator: joining would hang the caller forever
  }
  return finished;
}

}  // namespace chrion
