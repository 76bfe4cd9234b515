/// \file trace.h
/// \brief One traced step: which node ran on which lane, from when to when.
#pragma once

#include <chrono>
#include <cstdint>

namespace chrion {

/// \brief Start and end of one step of one request, in host steady-clock nanoseconds.
///
/// On a CUDA lane these are the times the lane thread spent issuing the work, not the kernel's
/// time on the device (the lane does not synchronise after each step: that is the point).
struct TraceEvent {
  int32_t step = 0;        ///< index into Program::steps
  int32_t lane = 0;        ///< lane that ran it
  uint64_t request = 0;    ///< id of the request it belongs to
  int64_t start_ns = 0;    ///< when the lane started the step
  int64_t end_ns = 0;      ///< when the lane finished it
};

/// \brief Now, for trace events (steady clock, nanoseconds).
inline int64_t trace_now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace chrion
