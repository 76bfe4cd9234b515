/// \file executor.h
/// \brief Executor: a Program and the shared lanes it runs on; runs requests.
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
  std::atomic<int64_t> pinned{0};     ///< copies whose host side is page-locked
  std::atomic<int64_t> bytes{0};
  std::atomic<int64_t> in_flight{0};  ///< copies issued whose data has not landed yet
};

/// \brief Copy streams of one device, one per direction (Note [Chrion copy steps]).
struct CopyStreams {
  c10::Device device;
  c10::Stream to_device, to_host;
};

/// \brief What running a request needs: the program, its lanes and streams. Requests hold it,
/// so a lane thread still running a step (after a stop timeout) never reads freed memory.
struct Core {
  std::shared_ptr<const Program> program;
  std::vector<std::shared_ptr<Lane>> lanes;  ///< from LanePool, by Program::lanes index
  std::vector<CopyStreams> copy_streams;     ///< one per non-CPU device
  bool needs_events = false;
  uint64_t generation = 0;                   ///< process generation the lanes belong to
  std::shared_ptr<TransferStats> transfers;  ///< the Executor's

  void schedule(const std::shared_ptr<Request>& request, int32_t step) const;
  void handle(Task& task, bool cancelled) const;
  /// \brief Run every step of the request on the calling thread when the program allows it
  /// and its lane is free (Note [Chrion inline requests]). \return whether it did.
  bool run_inline(const std::shared_ptr<Request>& request) const;
  /// \brief The lane whose steps the calling thread may run itself (Note [Chrion caller
  /// lane]), or -1.
  int32_t caller_lane() const;
  /// \brief Run a step handed to the caller, and what follows it on its lane, on the calling
  /// thread.
  void run_for_caller(const std::shared_ptr<Request>& request, int32_t step) const;
  /// \brief Run one step on `lane`'s behalf: traced, its failure kept on the request.
  void run_step(const std::shared_ptr<Request>& request, int32_t step, int32_t lane) const;
  /// \brief The step's data has landed: free what it read, make its consumers ready.
  /// \return a consumer on `lane` that may run right away on the calling thread, or -1.
  int32_t release_consumers(const std::shared_ptr<Request>& request, const Step& step,
                            int32_t lane) const;
  /// \brief Run (or issue) one step.
  void execute(const std::shared_ptr<Request>& request, const Step& step, int32_t lane) const;
  void copy(const std::shared_ptr<Request>& request, const Step& step, int32_t lane) const;
  /// \brief Run `wait` on the source lane's completer, then release the copy's consumers.
  void land_later(const std::shared_ptr<Request>& request, const Step& step,
                  std::function<void()> wait) const;
  void run_python(Request& request, const Step& step) const;
  c10::IValue resolve(const Request& request, const Arg& arg) const;
  void release_reads(Request& request, const Step& step) const;
  const CopyStreams& streams(c10::Device device) const;
  void sync_with_caller(Request& request, bool at_start) const;
};

/// \brief Test-only (Note [Chrion fake device]): hold or release copies out of fake lanes.
void set_fake_gate(bool open);
/// \brief Copies out of fake lanes that landed because the gate stayed closed too long.
int64_t fake_gate_timeouts();

class Executor {
 public:
  /// \brief Build the Program from lowering.py's description and take its lanes from the pool.
  explicit Executor(const pybind11::dict& description);
  ~Executor();

  /// \brief Run one request. Call without the GIL; safe from many threads at once.
  /// \throws StepError for an operator failure, StoppedError after stop(), c10::Error for a
  /// bad call.
  std::vector<c10::IValue> run(std::vector<c10::IValue> inputs, bool trace);

  /// \brief Refuse new calls, wait for running ones, release the lanes (their threads stop when
  /// no other executor uses them). Safe from several threads at once; later calls return the
  /// first one's result. \return false if a call or a lane missed the timeout.
  bool stop(double timeout_s);

  const Program& program() const { return *program_; }
  const TransferStats& transfers() const { return *transfers_; }
  /// \brief Trace of the last traced request that finished (empty if none).
  std::vector<TraceEvent> last_trace();

 private:
  std::shared_ptr<Core> core();
  std::shared_ptr<Core> build_core() const;

  std::shared_ptr<const Program> program_;
  std::shared_ptr<TransferStats> transfers_;
  std::mutex core_mutex_;
  std::shared_ptr<Core> core_;  ///< rebuilt lazily in a forked child (Note [Chrion lanes])
  std::atomic<uint64_t> next_id_{0};
  std::atomic<int64_t> in_flight_{0};
  std::atomic<int> stop_state_{0};  ///< 0 running, 1 stopping, 2 stopped
  std::atomic<bool> stop_result_{true};
  std::mutex trace_mutex_;
  std::vector<TraceEvent> last_trace_;
};

}  // namespace chrion
