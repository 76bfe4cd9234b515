/// \file request.h
/// \brief Request: the state of one call of a Program (cf. autograd's GraphTask).
///
/// Note [Chrion error propagation]
/// Lanes never throw across their loop. A step that fails stores the first error on its
/// Request (later ones are dropped), and from then on the request's remaining tasks are
/// popped and skipped without running, so `outstanding` still drains to zero and the caller
/// wakes. The caller rethrows the first error on its own thread as StepError, which the Python
/// binding turns into torch_chrion.errors.ExecutionError naming node, lane and operator; a
/// Python step's own exception object rides along and becomes the ExecutionError's __cause__,
/// type and traceback intact. Warnings (TORCH_WARN) raised on lane threads are collected on
/// the request and re-raised on the caller's thread. The lanes and the Program are untouched
/// by a failure, so the next call works.
#pragma once

#include <ATen/ThreadLocalState.h>
#include <ATen/core/ivalue.h>
#include <c10/core/Event.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "lane.h"
#include "program.h"
#include "trace.h"

namespace chrion {

struct Core;

/// \brief A Python object (an exception) that may be dropped on any thread: the last owner
/// takes the GIL to release it.
using PyObjectRef = std::shared_ptr<PyObject>;

/// \brief The first operator failure of a request, rethrown on the caller's thread.
struct StepError : std::runtime_error {
  StepError(const std::string& message, std::string node, std::string lane, std::string op,
            PyObjectRef cause = nullptr)
      : std::runtime_error(message), node(std::move(node)), lane(std::move(lane)),
        op(std::move(op)), cause(std::move(cause)) {}
  std::string node, lane, op;
  PyObjectRef cause;  ///< a Python step's exception (with its traceback), else null
};

/// \brief run() on an executor that was stopped.
struct StoppedError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// \brief Collects the warnings raised while a request's steps run on lane threads.
class RequestWarnings : public c10::WarningHandler {
 public:
  void process(const c10::Warning& warning) override {
    std::lock_guard<std::mutex> lock(mutex_);
    warnings_.push_back(warning);
  }
  std::vector<c10::Warning> take() {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::move(warnings_);
  }

 private:
  std::mutex mutex_;
  std::vector<c10::Warning> warnings_;
};

/// \brief Per-call state; lanes share nothing mutable across requests.
struct Request {
  Request(std::shared_ptr<Core> core, const Program& program, uint64_t id, bool tracing)
      : core(std::move(core)), program(program), id(id), values(program.num_slots),
        pending(new std::atomic<int32_t>[program.steps.size()]),
        uses(new std::atomic<int32_t>[program.num_slots]), tracing(tracing) {
    for (size_t i = 0; i < program.steps.size(); ++i) {
      pending[i].store(program.steps[i].num_dependencies, std::memory_order_relaxed);
    }
    for (int32_t i = 0; i < program.num_slots; ++i) {
      uses[i].store(program.initial_uses[i], std::memory_order_relaxed);
    }
    if (tracing) trace.resize(program.lanes.size());
  }

  const std::shared_ptr<Core> core;  ///< lanes, streams, program: alive while any task is
  const Program& program;
  const uint64_t id;
  std::vector<c10::IValue> values;                    ///< one per slot, freed after last read
  std::unique_ptr<std::atomic<int32_t>[]> pending;    ///< per step: dependencies not yet done
  std::unique_ptr<std::atomic<int32_t>[]> uses;       ///< per slot: reads not yet done
  std::vector<std::unique_ptr<c10::Event>> events;    ///< per step: recorded after it, if needed
  std::atomic<int64_t> outstanding{1};                ///< queued or running tasks (+1 caller)
  std::atomic<bool> failed{false};
  const bool tracing;
  std::vector<std::vector<TraceEvent>> trace;         ///< per lane, written by that lane only
  RequestWarnings warnings;
  /// The caller's thread-local state (profiler callbacks among it), captured only while the
  /// caller has thread-local record_function callbacks (torch.profiler): lanes run the steps
  /// under it, as autograd's engine does for its worker threads, so the profile shows them.
  std::unique_ptr<at::ThreadLocalState> caller_state;
  /// The lane whose steps the caller runs while it waits (Note [Chrion caller lane] in
  /// executor.cpp), or -1; set before any step is scheduled.
  int32_t caller_lane = -1;

  /// \brief Keep the first error; later ones are dropped.
  void set_error(const StepError& error) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!error_) error_ = std::make_unique<StepError>(error);
    failed.store(true, std::memory_order_release);
  }

  /// \brief One queued task (or the caller's token) is finished; wakes the caller at zero.
  void finish_one() {
    if (outstanding.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
      done_cv_.notify_all();  // under the lock: the caller may free us once it sees done_
    }
  }

  /// \brief A ready step of the caller's lane, counted in `outstanding`: the waiting caller
  /// runs it.
  void hand_to_caller(int32_t step) {
    std::lock_guard<std::mutex> lock(mutex_);
    for_caller_.push_back(step);
    handed_.fetch_add(1, std::memory_order_release);
    done_cv_.notify_all();
  }

  /// \brief Block until every task is finished, running each step handed to the caller with
  /// `run_here` meanwhile; rethrow the first error.
  void wait(const std::function<void(int32_t step)>& run_here) {
    while (true) {
      // Note [Chrion spin before park] (lane.h): the last steps usually end within the spin.
      spin_until([this] {
        return outstanding.load(std::memory_order_acquire) == 0 ||
               handed_.load(std::memory_order_acquire) > 0;
      });
      int32_t step;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        done_cv_.wait(lock, [this] { return done_ || !for_caller_.empty(); });
        if (for_caller_.empty()) {
          if (error_) throw *error_;
          return;
        }
        step = for_caller_.front();
        for_caller_.pop_front();
        handed_.fetch_sub(1, std::memory_order_relaxed);
      }
      run_here(step);
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable done_cv_;
  bool done_ = false;  // never while a step handed to the caller waits: it counts as outstanding
  std::unique_ptr<StepError> error_;
  std::deque<int32_t> for_caller_;
  std::atomic<int32_t> handed_{0};
};

}  // namespace chrion
