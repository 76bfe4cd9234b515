/// \file executor.h
/// \brief Executor: a Program, its lanes and copy streams; runs requests on them.
#pragma once

#include <c10/core/Stream.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

#include "lane.h"
#include "program.h"
#include "request.h"
#include "trace.h"

namespace chrion {

/// \brief Counters of cross-device copies since the executor was built.
struct TransferStats {
  std::atomic<int64_t> host_to_device{0};
  std::atomic<int64_t> device_to_host{0};
  std::atomic<int64_t> pinned{0};   ///< copies whose host side is page-locked
  std::atomic<int64_t> bytes{0};
};

class Executor {
 public:
  /// \brief Build the Program from lowering.py's description and start one thread per lane.
  explicit Executor(const pybind11::dict& description);
  ~Executor();

  /// \brief Run one request. Call without the GIL; safe from many threads at once.
  /// \throws StepError for an operator failure, c10::Error for a bad call.
  std::vector<c10::IValue> run(std::vector<c10::IValue> inputs, bool trace);

  /// \brief Stop and join every lane. \return false if a lane missed the timeout.
  bool stop(double timeout_s);

  const Program& program() const { return program_; }
  const TransferStats& transfers() const { return transfers_; }
  /// \brief Trace of the last traced request that finished (empty if none).
  std::vector<TraceEvent> last_trace();

 private:
  void handle(Task& task, bool cancelled);
  void execute(Request& request, const Step& step, Lane& lane);
  void copy(Request& request, const Step& step, Lane& lane);
  void schedule(const std::shared_ptr<Request>& request, int32_t step);
  c10::IValue resolve(const Request& request, const Arg& arg) const;
  void release_reads(Request& request, const Step& step);
  c10::Stream copy_stream(c10::Device device) const;
  void sync_with_caller(Request& request, bool at_start);

  Program program_;
  std::vector<std::unique_ptr<Lane>> lanes_;
  std::vector<std::pair<c10::Device, c10::Stream>> copy_streams_;  ///< one per non-CPU device
  std::vector<c10::Device> devices_;                 ///< the non-CPU devices with lanes
  bool needs_events_ = false;
  std::atomic<uint64_t> next_id_{0};
  std::atomic<bool> stopped_{false};
  TransferStats transfers_;
  std::mutex trace_mutex_;
  std::vector<TraceEvent> last_trace_;
};

}  // namespace chrion
