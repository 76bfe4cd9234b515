/// \file executor.cpp
/// \brief Running requests: scheduling ready steps onto lanes, the boxed calls, copies.
///
/// Note [Chrion copy steps]
/// lowering.py inserts an explicit copy step on every edge between physical devices (CPU lanes
/// share memory, so an edge between two CPU lanes is only ordering). Each device has two copy
/// streams, one per direction, so host-to-device and device-to-host copies overlap. The stream
/// protocol follows autograd's Note [Autograd Producer-Consumer Stream Syncs]:
///  - device -> host is issued by the producer's lane right after the producer (lowering puts
///    it there): the to-host stream waits for the event recorded after the producer, copies
///    into a page-locked tensor from the caching host allocator with non_blocking=true, and
///    records a "landed" event; the source's block is recorded on the copy stream so the
///    caching allocator does not reuse it early. The lane goes on at once. The CPU consumers
///    become ready when the data has landed: the device lane's completer thread waits for the
///    landed event and then releases them. No lane ever blocks on device work.
///  - host -> device (and device -> device) is issued by the device consumer's lane: pageable
///    sources are staged into a page-locked tensor, copied with non_blocking=true on the
///    to-device stream, the lane's stream waits on the copy's event, and the new tensor is
///    recorded on the lane's stream.
///  - at the start of a call every device stream waits for the caller's current stream (the
///    inputs were made there), and at the end the caller's stream waits for the lane and copy
///    streams, and outputs are recorded on the caller's stream.
/// CPU has no events: CPU lanes order work by the executor's own dependency counts. A copy of
/// a device input read on a CPU lane (where the input lives is only known per call) waits on
/// that lane.
///
/// Note [Chrion fake device]
/// A test-only lane kind ("fake:N") runs the same protocol without a GPU: its memory is apart
/// from the host's (lowering inserts copies), its tensors are CPU tensors, and a copy out of it
/// to the host lands later, on the fake lane's completer: the destination is allocated (filled
/// with NaN, so a consumer released too early reads garbage) and filled only once the fake
/// device's gate is open. Tests close the gate to hold a copy in flight.
#include "executor.h"

#include "elementwise.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/csrc/jit/python/pybind_utils.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>
#include <thread>

namespace chrion {
namespace {

std::string describe(const Step& step, const LaneSpec& lane, const std::string& what) {
  return "node '" + step.name + "' (" + step.op_name + ") on lane " + lane.name +
         " failed: " + what;
}

StepError step_error(const Step& step, const LaneSpec& lane, const std::string& what) {
  return StepError(describe(step, lane, what), step.name, lane.name, step.op_name);
}

void record_on_stream(const at::Tensor& t, const c10::Stream& stream) {
  if (!t.defined() || !t.has_storage() || t.device() != stream.device()) return;
  c10::impl::VirtualGuardImpl(stream.device_type())
      .recordDataPtrOnStream(t.storage().data_ptr(), stream);
}

void for_each_tensor(const c10::IValue& v, const std::function<void(const at::Tensor&)>& fn) {
  if (v.isTensor()) {
    fn(v.toTensor());
  } else if (v.isList()) {
    for (const auto& x : v.toListRef()) for_each_tensor(x, fn);
  } else if (v.isTuple()) {
    for (const auto& x : v.toTupleRef().elements()) for_each_tensor(x, fn);
  }
}

PyObjectRef hold_python(PyObject* owned) {
  return PyObjectRef(owned, [](PyObject* p) {
    if (!Py_IsInitialized()) return;  // interpreter gone: leak rather than crash
    pybind11::gil_scoped_acquire gil;
    Py_DECREF(p);
  });
}

// Note [Chrion fake device]: the gate, shared by every fake lane of the process.
struct FakeGate {
  std::mutex mutex;
  std::condition_variable changed;
  bool open = true;
  int64_t timeouts = 0;
} g_fake_gate;

void wait_for_fake_gate() {
  std::unique_lock<std::mutex> lock(g_fake_gate.mutex);
  if (!g_fake_gate.changed.wait_for(lock, std::chrono::seconds(5),
                                    [] { return g_fake_gate.open; })) {
    g_fake_gate.timeouts += 1;  // a test that never opens it fails on this count, not a hang
  }
}

// A Program holds Python callables: it is freed under the GIL, wherever the last request ends.
std::shared_ptr<const Program> make_program(const pybind11::dict& description) {
  return std::shared_ptr<const Program>(new Program(Program::build(description)),
                                        [](const Program* p) {
                                          if (!Py_IsInitialized()) return;
                                          pybind11::gil_scoped_acquire gil;
                                          delete p;
                                        });
}

}  // namespace

void set_fake_gate(bool open) {
  {
    std::lock_guard<std::mutex> lock(g_fake_gate.mutex);
    g_fake_gate.open = open;
  }
  g_fake_gate.changed.notify_all();
}

int64_t fake_gate_timeouts() {
  std::lock_guard<std::mutex> lock(g_fake_gate.mutex);
  return g_fake_gate.timeouts;
}

void run_task(Task& task, bool cancelled) {
  const Core& core = *task.request->core;  // the request keeps its core alive
  core.handle(task, cancelled);
}

Executor::Executor(const pybind11::dict& description)
    : program_(make_program(description)), transfers_(std::make_shared<TransferStats>()) {
  core_ = build_core();
}

Executor::~Executor() {
  if (PyGILState_Check()) {  // freed by Python: a lane may need the GIL to finish its step
    pybind11::gil_scoped_release no_gil;
    stop(10.0);
  } else {
    stop(10.0);
  }
}

std::shared_ptr<Core> Executor::build_core() const {
  auto core = std::make_shared<Core>();
  core->program = program_;
  core->transfers = transfers_;
  core->generation = process_generation();
  for (const auto& spec : program_->lanes) {
    core->lanes.push_back(LanePool::acquire(spec));
    if (spec.fake || spec.device.type() == c10::kCPU) continue;
    const auto& known = core->copy_streams;
    if (std::any_of(known.begin(), known.end(), [&](const auto& s) { return s.device == spec.device; })) {
      continue;
    }
    c10::impl::VirtualGuardImpl impl(spec.device.type());
    core->copy_streams.push_back(CopyStreams{spec.device,
                                             impl.getStreamFromGlobalPool(spec.device, false),
                                             impl.getStreamFromGlobalPool(spec.device, false)});
  }
  for (const auto& step : program_->steps) core->needs_events |= step.record_event;
  return core;
}

std::shared_ptr<Core> Executor::core() {
  std::lock_guard<std::mutex> lock(core_mutex_);
  if (core_->generation != process_generation()) {
    // A forked child: the parent's lanes have no threads here (Note [Chrion lanes]). Calls of
    // the parent's threads will never finish here either.
    core_ = build_core();
    in_flight_.store(0);
  }
  return core_;
}

bool Executor::stop(double timeout_s) {
  int expected = 0;
  if (!stop_state_.compare_exchange_strong(expected, 1)) {
    while (stop_state_.load() != 2) std::this_thread::sleep_for(std::chrono::microseconds(200));
    return stop_result_.load();
  }
  std::shared_ptr<Core> core;
  {
    std::lock_guard<std::mutex> lock(core_mutex_);
    core = core_;
  }
  bool ok = true;
  if (core->generation == process_generation()) {  // a forked child has nothing to wait for
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (in_flight_.load() > 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    ok = in_flight_.load() == 0;
    for (const auto& lane : core->lanes) {
      auto left = std::chrono::duration<double>(deadline - std::chrono::steady_clock::now());
      ok &= LanePool::release(lane, std::max(0.0, left.count()));
    }
  }
  stop_result_.store(ok);
  stop_state_.store(2);
  return ok;
}

std::vector<TraceEvent> Executor::last_trace() {
  std::lock_guard<std::mutex> lock(trace_mutex_);
  return last_trace_;
}

std::vector<c10::IValue> Executor::run(std::vector<c10::IValue> inputs, bool trace) {
  const Program& program = *program_;
  TORCH_CHECK_VALUE((int32_t)inputs.size() == program.num_inputs, "expected ",
                    program.num_inputs, " inputs, got ", inputs.size());
  std::shared_ptr<Core> core = this->core();
  in_flight_.fetch_add(1);
  struct Leave {
    std::atomic<int64_t>& count;
    ~Leave() { count.fetch_sub(1); }
  } leave{in_flight_};
  if (stop_state_.load() != 0) {
    throw StoppedError("this module's executor was stopped; build a new module");
  }
  auto request = std::make_shared<Request>(core, program, next_id_.fetch_add(1), trace);
  for (size_t i = 0; i < inputs.size(); ++i) request->values[i] = std::move(inputs[i]);
  if (core->needs_events) request->events.resize(program.steps.size());
  if (at::hasThreadLocalCallbacks()) request->caller_state = std::make_unique<at::ThreadLocalState>();
  request->caller_lane = core->caller_lane();
  core->sync_with_caller(*request, /*at_start=*/true);

  if (!core->run_inline(request)) {
    for (int32_t step : program.ready_at_start) core->schedule(request, step);
  }
  request->finish_one();  // the caller's token: done can only fire after all are queued
  try {
    // throws the first StepError
    request->wait([&](int32_t step) { core->run_for_caller(request, step); });
  } catch (...) {
    for (const auto& w : request->warnings.take()) c10::warn(w);
    throw;
  }
  for (const auto& w : request->warnings.take()) c10::warn(w);  // on the caller's thread

  std::vector<c10::IValue> outputs;
  outputs.reserve(program.outputs.size());
  for (const auto& [slot, element] : program.outputs) {
    Arg ref;
    ref.kind = Arg::Kind::kSlot;
    ref.slot = slot;
    ref.element = element;
    outputs.push_back(core->resolve(*request, ref));
  }
  core->sync_with_caller(*request, /*at_start=*/false);
  for (const auto& streams : core->copy_streams) {
    c10::Stream caller =
        c10::impl::VirtualGuardImpl(streams.device.type()).getStream(streams.device);
    for (const auto& v : outputs) {
      for_each_tensor(v, [&](const at::Tensor& t) { record_on_stream(t, caller); });
    }
  }
  if (trace) {
    std::vector<TraceEvent> merged;
    for (auto& lane_events : request->trace) {
      merged.insert(merged.end(), lane_events.begin(), lane_events.end());
    }
    std::sort(merged.begin(), merged.end(),
              [](const TraceEvent& a, const TraceEvent& b) { return a.start_ns < b.start_ns; });
    std::lock_guard<std::mutex> lock(trace_mutex_);
    last_trace_ = std::move(merged);
  }
  return outputs;
}

const CopyStreams& Core::streams(c10::Device device) const {
  for (const auto& s : copy_streams) {
    if (s.device == device) return s;
  }
  TORCH_CHECK(false, "no lane on device ", device, ": cannot copy there");
}

// Note [Chrion copy steps]: the caller's stream <-> lane and copy streams.
void Core::sync_with_caller(Request& request, bool at_start) const {
  for (const auto& streams : copy_streams) {
    const c10::Device device = streams.device;
    c10::impl::VirtualGuardImpl impl(device.type());
    c10::Stream caller = impl.getStream(device);
    std::vector<c10::Stream> ours{streams.to_device, streams.to_host};
    for (const auto& lane : lanes) {
      if (lane->stream() && lane->spec().device == device) ours.push_back(*lane->stream());
    }
    if (at_start) {
      c10::Event ready(device.type());
      ready.record(caller);
      for (const auto& s : ours) ready.block(s);
      for (int32_t i = 0; i < program->num_inputs; ++i) {
        for_each_tensor(request.values[i], [&](const at::Tensor& t) {
          for (const auto& s : ours) record_on_stream(t, s);
        });
      }
    } else {
      for (const auto& s : ours) {
        c10::Event done(device.type());
        done.record(s);
        done.block(caller);
      }
    }
  }
}

void Core::schedule(const std::shared_ptr<Request>& request, int32_t step) const {
  const Step& s = program->steps[step];
  request->outstanding.fetch_add(1, std::memory_order_relaxed);
  if (s.lane == request->caller_lane) {
    request->hand_to_caller(step);
    return;
  }
  if (!lanes[s.lane]->push(Task{request, step, request->id})) {
    request->set_error(step_error(s, program->lanes[s.lane], "the executor was stopped"));
    request->finish_one();
  }
}

void Core::handle(Task& task, bool cancelled) const {
  std::shared_ptr<Request> owner = std::move(task.request);
  Request& request = *owner;
  int32_t current = task.step;
  const int32_t lane_index = program->steps[current].lane;
  const LaneSpec& spec = program->lanes[lane_index];
  Lane& lane = *lanes[lane_index];
  while (true) {
    const Step& step = program->steps[current];
    if (cancelled) request.set_error(step_error(step, spec, "the executor was stopped"));
    int32_t next = -1;
    if (!request.failed.load(std::memory_order_acquire)) {
      run_step(owner, current, lane_index);
      if (!request.failed.load(std::memory_order_acquire)) {
        // Note [Chrion plan order]: the lane's next step waits for this one to have run.
        if (step.lane_next >= 0 &&
            request.pending[step.lane_next].fetch_sub(1, std::memory_order_acq_rel) == 1) {
          next = step.lane_next;
        }
        // Note [Chrion wide steps]: the lanes a wide step held go on with their next steps.
        for (int32_t held : step.held_next) {
          if (request.pending[held].fetch_sub(1, std::memory_order_acq_rel) == 1) {
            schedule(owner, held);
          }
        }
        if (!step.lands_later) {  // else its consumers are released when the data lands
          int32_t ready_here = release_consumers(owner, step, lane_index);
          if (ready_here >= 0) next = ready_here;
        }
      }
    }
    // The lane's next step runs right here when no other request waits on the lane (a chain,
    // the common case): no queue round trip. Otherwise it queues behind earlier requests; and
    // a wide step that this lane held for goes to its own lane (Note [Chrion wide steps]).
    if (next >= 0 && (!lane.idle() || program->steps[next].lane != lane_index)) {
      schedule(owner, next);
      next = -1;
    }
    if (next < 0) {
      owner.reset();  // drop our reference before the caller may wake
      request.finish_one();
      return;
    }
    current = next;  // the finished step's count passes on to `next`
  }
}

void Core::run_step(const std::shared_ptr<Request>& owner, int32_t index, int32_t lane) const {
  Request& request = *owner;
  const Step& step = program->steps[index];
  int64_t start = request.tracing ? trace_now_ns() : 0;
  try {
    c10::WarningUtils::WarningHandlerGuard warnings(&request.warnings);
    execute(owner, step, lane);
  } catch (const StepError& e) {
    request.set_error(e);
  } catch (const std::exception& e) {
    request.set_error(step_error(step, program->lanes[lane], e.what()));
  }
  if (request.tracing && step.chain.empty()) {  // a chain traces each of its members
    request.trace[lane].push_back(TraceEvent{index, lane, request.id, start, trace_now_ns()});
  }
}

// Note [Chrion inline requests]
// A program whose steps all run on one CPU lane (Program::inline_lane: every plan that puts
// the whole graph on one lane, or wide over every lane) needs no other thread: the caller runs
// the steps itself, in the lane's plan order, when the lane is free (nothing queued, and its
// turn taken) and the caller's intra-op thread count is the lane's. That saves the two
// hand-offs of a queued request, lane wake-up and caller wake-up, each a futex wake-up that on
// a virtual machine whose idle cores halt took ~45 us (bench/predict.py's calibration): a
// batch-1 2-layer LSTM's calls, alternating inline and queued, were 65 us (4%) faster inline
// at load average 2, and 6 us of a 34 us two-op call. The lane's turn keeps one step at a
// time on its core: a request queued meanwhile waits for the caller's last step, as it would
// for the lane's own. Otherwise (something queued, the lane's thread holding a task, or another
// thread count) the request is queued as usual: a caller never overtakes a queued request,
// which could otherwise wait while callers took the turn one after another.
bool Core::run_inline(const std::shared_ptr<Request>& request) const {
  const int32_t index = program->inline_lane;
  if (index < 0) return false;
  Lane& lane = *lanes[index];
  if (at::get_num_threads() != lane.spec().threads || !lane.free()) return false;
  std::unique_lock<std::mutex> turn(lane.turn(), std::try_to_lock);
  if (!turn.owns_lock()) return false;
  c10::AutoGradMode no_grad(false);  // as on the lane's own thread
  for (int32_t step : program->lane_steps[index]) {
    run_step(request, step, index);
    if (request->failed.load(std::memory_order_acquire)) break;
    release_reads(*request, program->steps[step]);
  }
  return true;
}

// Note [Chrion caller lane]
// A CPU lane of several intra-op threads (the wide lane of Note [Chrion wide steps]) runs its
// steps' ATen operators in parallel regions, and with ATen's OpenMP backend every thread that
// opens one becomes the master of an OpenMP team of its own, which lives as long as the thread.
// Once the process's teams hold more threads than there are cores, libgomp throttles every
// team's spin-wait (GOMP_SPINCOUNT: 1000 polls instead of 300000) and its workers sleep in the
// kernel between regions. Then each small parallel operator of the caller's own torch code pays
// a futex wake-up: a 16x256 tanh beside a live wide lane took 78-151 us instead of 11, an eager
// BiGRU 2.3x its time (bench/eager_beside.py measures it). So the caller, which waits for its
// request anyway, runs the wide lane's steps itself, inside its own team, when it has the
// lane's thread count: the process then has the one team it had without torch_chrion, and the
// wide lane's thread never opens a region. The caller takes the lane's turn for each step, as
// the lane's thread would, so the held lanes' cores still run one thing at a time. A caller
// with another thread count leaves the steps to the lane's thread (its team then exists).
int32_t Core::caller_lane() const {
  const int32_t lane = program->caller_lane;
  if (lane < 0 || at::get_num_threads() != program->lanes[lane].threads) return -1;
  return lane;
}

void Core::run_for_caller(const std::shared_ptr<Request>& request, int32_t step) const {
  const int32_t lane = program->steps[step].lane;
  std::lock_guard<std::mutex> turn(lanes[lane]->turn());
  c10::AutoGradMode no_grad(false);  // as on the lane's own thread
  Task task{request, step, request->id};
  handle(task, /*cancelled=*/false);
}

int32_t Core::release_consumers(const std::shared_ptr<Request>& request, const Step& step,
                                int32_t lane) const {
  release_reads(*request, step);
  int32_t here = -1;
  for (int32_t c : step.consumers) {
    if (request->pending[c].fetch_sub(1, std::memory_order_acq_rel) != 1) continue;
    // On its own lane, a ready consumer is that lane's next step in plan order (the only step
    // of this request that lane may run now): the caller may run it in place.
    if (program->steps[c].lane == lane && here < 0) {
      here = c;
    } else {
      schedule(request, c);
    }
  }
  return here;
}

void Core::release_reads(Request& request, const Step& step) const {
  for (int32_t slot : step.reads) {
    if (request.uses[slot].fetch_sub(1, std::memory_order_acq_rel) == 1) {
      request.values[slot] = c10::IValue();
    }
  }
  for (int32_t k = 0; k < step.num_outputs; ++k) {  // outputs nobody reads (h_n of an LSTM, ...)
    int32_t slot = step.first_output + k;
    if (program->initial_uses[slot] == 0) request.values[slot] = c10::IValue();
  }
}

c10::IValue Core::resolve(const Request& request, const Arg& arg) const {
  switch (arg.kind) {
    case Arg::Kind::kSlot: {
      const c10::IValue& v = request.values[arg.slot];
      if (arg.element < 0) return v;
      if (v.isTuple()) return v.toTupleRef().elements().at(arg.element);
      if (v.isList()) return v.toListRef().at(arg.element);
      TORCH_CHECK(false, "element ", arg.element, " of a ", v.tagKind(), " value");
    }
    case Arg::Kind::kConstant:
      return arg.constant;
    case Arg::Kind::kList: {
      c10::impl::GenericList list(arg.element_type);
      list.reserve(arg.items.size());
      for (const auto& item : arg.items) list.push_back(resolve(request, item));
      return list;
    }
  }
  TORCH_INTERNAL_ASSERT(false, "unknown argument kind");
}

void Core::execute(const std::shared_ptr<Request>& owner, const Step& step, int32_t lane) const {
  Request& request = *owner;
  std::optional<at::ThreadLocalStateGuard> caller_state;
  if (request.caller_state) caller_state.emplace(*request.caller_state);
  RECORD_USER_SCOPE(step.name.c_str());  // the node's name in torch.profiler and its traces
  switch (step.kind) {
    case StepKind::kOp: {
      if (!step.chain.empty()) {  // Note [Chrion elementwise chains]
        request.values[step.first_output] = run_elementwise_chain(
            *program, step, [&](const Arg& arg) { return resolve(request, arg); },
            request.tracing ? &request.trace[lane] : nullptr, request.id);
        break;
      }
      thread_local torch::jit::Stack stack;  // reused: no allocation per step once warm
      stack.clear();
      for (const auto& arg : step.args) {
        if (arg.movable && request.uses[arg.slot].load(std::memory_order_acquire) == 1) {
          stack.push_back(std::move(request.values[arg.slot]));  // every other reader is done
        } else {
          stack.push_back(resolve(request, arg));
        }
      }
      step.op->callBoxed(stack);
      TORCH_INTERNAL_ASSERT((int32_t)stack.size() == step.num_outputs);
      for (int32_t k = 0; k < step.num_outputs; ++k) {
        request.values[step.first_output + k] = std::move(stack[k]);
      }
      stack.clear();
      break;
    }
    case StepKind::kPython:
      run_python(request, step);
      break;
    case StepKind::kCopy:
      copy(owner, step, lane);
      break;
  }
  if (step.record_event) {
    const Lane& l = *lanes[lane];
    auto event = std::make_unique<c10::Event>(l.spec().device.type());
    event->record(*l.stream());
    request.events[&step - program->steps.data()] = std::move(event);
  }
}

void Core::run_python(Request& request, const Step& step) const {
  pybind11::gil_scoped_acquire gil;
  try {
    pybind11::tuple args(step.args.size());
    for (size_t i = 0; i < step.args.size(); ++i) {
      args[i] = torch::jit::toPyObject(resolve(request, step.args[i]));
    }
    pybind11::object result = step.fn(*args);
    request.values[step.first_output] = python_to_ivalue(result);
  } catch (pybind11::error_already_set& e) {
    // Keep the exception itself (type, traceback) for the caller: it becomes the cause.
    pybind11::object value = e.value();
    if (e.trace()) PyException_SetTraceback(value.ptr(), e.trace().ptr());
    std::string what = pybind11::str(pybind11::type::handle_of(value).attr("__name__"));
    what += ": " + std::string(pybind11::str(value));
    const LaneSpec& spec = program->lanes[step.lane];
    throw StepError(describe(step, spec, what), step.name, spec.name, step.op_name,
                    hold_python(value.release().ptr()));
  }
}

void Core::land_later(const std::shared_ptr<Request>& owner, const Step& step,
                      std::function<void()> wait) const {
  Lane& source = *lanes[program->steps[step.source_step].lane];
  owner->outstanding.fetch_add(1, std::memory_order_relaxed);
  transfers->in_flight.fetch_add(1);
  bool queued = source.complete_later([owner, &step, wait = std::move(wait)] {
    const Core& core = *owner->core;
    try {
      wait();
    } catch (const std::exception& e) {
      owner->set_error(step_error(step, core.program->lanes[step.lane], e.what()));
    }
    core.transfers->in_flight.fetch_sub(1);
    if (!owner->failed.load(std::memory_order_acquire)) core.release_consumers(owner, step, -1);
    owner->finish_one();
  });
  if (!queued) {
    transfers->in_flight.fetch_sub(1);
    owner->outstanding.fetch_sub(1, std::memory_order_relaxed);  // the running task still holds one
    TORCH_CHECK(false, "the executor was stopped");
  }
}

// Note [Chrion copy steps]
void Core::copy(const std::shared_ptr<Request>& owner, const Step& step, int32_t lane_index) const {
  Request& request = *owner;
  const Lane& lane = *lanes[lane_index];
  c10::IValue value = resolve(request, step.args[0]);
  TORCH_CHECK(value.isTensor(), "a copy between devices needs a tensor, got ", value.tagKind());
  at::Tensor src = value.toTensor();
  c10::IValue& out = request.values[step.first_output];
  const c10::Device to = step.target;
  if (step.target_fake) {  // Note [Chrion fake device]: its memory is apart from the host's
    out = src.clone();
    transfers->host_to_device.fetch_add(1);
    transfers->bytes.fetch_add(src.nbytes());
    return;
  }
  if (step.lands_later && program->lanes[program->steps[step.source_step].lane].fake) {
    at::Tensor host = src.is_floating_point() ? at::full_like(src, NAN) : at::empty_like(src);
    out = host;
    transfers->device_to_host.fetch_add(1);
    transfers->bytes.fetch_add(src.nbytes());
    land_later(owner, step, [src, host]() mutable {
      wait_for_fake_gate();
      host.copy_(src);
    });
    return;
  }
  if (src.device() == to) {  // e.g. an input that already lives there
    out = src;
    if (step.lands_later) land_later(owner, step, [] {});
    return;
  }
  if (to.is_cpu()) {  // device -> host
    c10::Stream stream = streams(src.device()).to_host;
    if (step.source_step >= 0 && request.events[step.source_step]) {
      request.events[step.source_step]->block(stream);
    }
    at::Tensor host = at::empty(src.sizes(), src.options().device(c10::kCPU).pinned_memory(true));
    {
      c10::StreamGuard guard(stream);
      host.copy_(src, /*non_blocking=*/true);
    }
    record_on_stream(src, stream);
    auto landed = std::make_shared<c10::Event>(src.device().type());
    landed->record(stream);
    transfers->device_to_host.fetch_add(1);
    transfers->pinned.fetch_add(host.is_pinned() ? 1 : 0);
    transfers->bytes.fetch_add(src.nbytes());
    out = host;
    if (step.lands_later) {
      land_later(owner, step, [landed] { landed->synchronize(); });
    } else {
      landed->synchronize();  // an input of this call, read on this CPU lane
    }
    return;
  }
  TORCH_CHECK(lane.stream() && lane.spec().device == to, "copy to ", to, " must run on a lane of ",
              to, ", not ", lane.spec().name);
  c10::Stream stream = streams(to).to_device;
  at::Tensor host_or_src = src;
  if (src.is_cpu()) {  // host -> device, on the device consumer's lane
    if (!src.is_pinned()) {
      host_or_src = at::empty(src.sizes(), src.options().pinned_memory(true));
      host_or_src.copy_(src);
    }
    transfers->host_to_device.fetch_add(1);
    transfers->pinned.fetch_add(host_or_src.is_pinned() ? 1 : 0);
  } else if (step.source_step >= 0 && request.events[step.source_step]) {
    request.events[step.source_step]->block(stream);  // device -> another device
  }
  at::Tensor dst;
  {
    c10::StreamGuard guard(stream);
    dst = at::empty(src.sizes(), src.options().device(to));
    dst.copy_(host_or_src, /*non_blocking=*/true);
  }
  if (!src.is_cpu()) record_on_stream(src, stream);
  c10::Event copied(to.type());
  copied.record(stream);
  copied.block(*lane.stream());
  record_on_stream(dst, *lane.stream());
  transfers->bytes.fetch_add(src.nbytes());
  out = dst;
}

}  // namespace chrion
