/// \file executor.cpp
/// \brief Running requests: scheduling ready steps onto lanes, the boxed calls, copies.
///
/// Note [Chrion copy steps]
/// lowering.py inserts an explicit copy step on every edge between physical devices (CPU lanes
/// share memory, so an edge between two CPU lanes is only ordering). The stream protocol follows
/// autograd's Note [Autograd Producer-Consumer Stream Syncs]:
///  - device -> host runs on the CPU consumer's lane: the copy stream waits for the event the
///    producer's lane recorded after the producer, copies into a page-locked tensor from the
///    caching host allocator (a pool: no cudaHostAlloc once warm) with non_blocking=true, the
///    source's block is recorded on the copy stream so the caching allocator does not reuse it
///    early, and the lane waits on a copy-done event before the CPU consumer may read it.
///  - host -> device runs on the device consumer's lane: pageable sources are staged into a
///    page-locked tensor, copied with non_blocking=true on the copy stream, the lane's stream
///    waits on the copy's event, and the new tensor is recorded on the lane's stream. (The host
///    allocator itself records the copy on its pinned block, so the staging tensor can go.)
///  - at the start of a call every device stream waits for the caller's current stream (the
///    inputs were made there), and at the end the caller's stream waits for the lane and copy
///    streams, and outputs are recorded on the caller's stream.
/// CPU has no events: CPU lanes order work by the executor's own dependency counts.
#include "executor.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/csrc/jit/python/pybind_utils.h>

#include <algorithm>

namespace chrion {
namespace {

std::string describe(const Step& step, const LaneSpec& lane, const char* what) {
  return "node '" + step.name + "' (" + step.op_name + ") on lane " + lane.name +
         " failed: " + what;
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

}  // namespace

Executor::Executor(const pybind11::dict& description) : program_(Program::build(description)) {
  for (const auto& spec : program_.lanes) {
    if (spec.device.type() == c10::kCPU) continue;
    if (std::find(devices_.begin(), devices_.end(), spec.device) != devices_.end()) continue;
    devices_.push_back(spec.device);
    c10::impl::VirtualGuardImpl impl(spec.device.type());
    copy_streams_.emplace_back(spec.device, impl.getStreamFromGlobalPool(spec.device, false));
  }
  for (const auto& step : program_.steps) needs_events_ |= step.record_event;
  // Note [Chrion lanes]: at::set_num_threads on a lane thread sets that thread's OpenMP and MKL
  // thread counts, but also the process-wide default that threads initialising ATen later
  // inherit (and the shared pthreadpool's size): put the caller's value back once lanes are up.
  const int caller_threads = at::get_num_threads();
  for (size_t i = 0; i < program_.lanes.size(); ++i) {
    lanes_.push_back(std::make_unique<Lane>(
        (int32_t)i, program_.lanes[i], [this](Task& task, bool cancelled) { handle(task, cancelled); }));
  }
  at::set_num_threads(caller_threads);
}

Executor::~Executor() { stop(10.0); }

bool Executor::stop(double timeout_s) {
  stopped_.store(true);
  bool all = true;
  for (auto& lane : lanes_) all &= lane->stop(timeout_s);
  return all;
}

c10::Stream Executor::copy_stream(c10::Device device) const {
  for (const auto& [d, s] : copy_streams_) {
    if (d == device) return s;
  }
  TORCH_CHECK(false, "no lane on device ", device, ": cannot copy there");
}

std::vector<TraceEvent> Executor::last_trace() {
  std::lock_guard<std::mutex> lock(trace_mutex_);
  return last_trace_;
}

// Note [Chrion copy steps]: the caller's stream <-> lane and copy streams.
void Executor::sync_with_caller(Request& request, bool at_start) {
  for (const auto& device : devices_) {
    c10::impl::VirtualGuardImpl impl(device.type());
    c10::Stream caller = impl.getStream(device);
    std::vector<c10::Stream> ours{copy_stream(device)};
    for (const auto& lane : lanes_) {
      if (lane->spec().device == device) ours.push_back(*lane->stream());
    }
    if (at_start) {
      c10::Event ready(device.type());
      ready.record(caller);
      for (const auto& s : ours) ready.block(s);
      for (int32_t i = 0; i < program_.num_inputs; ++i) {
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

std::vector<c10::IValue> Executor::run(std::vector<c10::IValue> inputs, bool trace) {
  TORCH_CHECK(!stopped_.load(), "this module's executor was stopped; build a new module");
  TORCH_CHECK_VALUE((int32_t)inputs.size() == program_.num_inputs, "expected ",
                    program_.num_inputs, " inputs, got ", inputs.size());
  auto request = std::make_shared<Request>(program_, next_id_.fetch_add(1), trace);
  for (size_t i = 0; i < inputs.size(); ++i) request->values[i] = std::move(inputs[i]);
  if (needs_events_) request->events.resize(program_.steps.size());
  sync_with_caller(*request, /*at_start=*/true);

  for (int32_t step : program_.ready_at_start) schedule(request, step);
  request->finish_one();  // the caller's token: done can only fire after all are queued
  request->wait();        // throws the first StepError

  std::vector<c10::IValue> outputs;
  outputs.reserve(program_.outputs.size());
  for (const auto& [slot, element] : program_.outputs) {
    Arg ref;
    ref.kind = Arg::Kind::kSlot;
    ref.slot = slot;
    ref.element = element;
    outputs.push_back(resolve(*request, ref));
  }
  sync_with_caller(*request, /*at_start=*/false);
  for (const auto& device : devices_) {
    c10::Stream caller = c10::impl::VirtualGuardImpl(device.type()).getStream(device);
    for (const auto& v : outputs) for_each_tensor(v, [&](const at::Tensor& t) { record_on_stream(t, caller); });
  }
  if (trace) {
    std::vector<TraceEvent> merged;
    for (auto& lane_events : request->trace) merged.insert(merged.end(), lane_events.begin(), lane_events.end());
    std::sort(merged.begin(), merged.end(),
              [](const TraceEvent& a, const TraceEvent& b) { return a.start_ns < b.start_ns; });
    std::lock_guard<std::mutex> lock(trace_mutex_);
    last_trace_ = std::move(merged);
  }
  return outputs;
}

void Executor::schedule(const std::shared_ptr<Request>& request, int32_t step) {
  const Step& s = program_.steps[step];
  request->outstanding.fetch_add(1, std::memory_order_relaxed);
  if (!lanes_[s.lane]->push(Task{request, step, request->id, s.rank})) {
    request->set_error(StepError(describe(s, program_.lanes[s.lane], "the executor was stopped"),
                                 s.name, program_.lanes[s.lane].name, s.op_name));
    request->finish_one();
  }
}

void Executor::handle(Task& task, bool cancelled) {
  std::shared_ptr<Request> owner = std::move(task.request);
  Request& request = *owner;
  int32_t current = task.step;
  while (true) {
    const Step& step = program_.steps[current];
    const LaneSpec& spec = program_.lanes[step.lane];
    Lane& lane = *lanes_[step.lane];
    if (cancelled) {
      request.set_error(StepError(describe(step, spec, "the executor was stopped"), step.name,
                                  spec.name, step.op_name));
    }
    int32_t next = -1;
    if (!request.failed.load(std::memory_order_acquire)) {
      int64_t start = request.tracing ? trace_now_ns() : 0;
      try {
        execute(request, step, lane);
      } catch (const std::exception& e) {
        request.set_error(
            StepError(describe(step, spec, e.what()), step.name, spec.name, step.op_name));
      }
      if (request.tracing) {
        request.trace[step.lane].push_back(
            TraceEvent{current, step.lane, request.id, start, trace_now_ns()});
      }
      if (!request.failed.load(std::memory_order_acquire)) {
        release_reads(request, step);
        for (int32_t c : step.consumers) {
          if (request.pending[c].fetch_sub(1, std::memory_order_acq_rel) != 1) continue;
          // A ready consumer on this lane runs right here when nothing else waits on the lane
          // (a chain, the common case): no queue round trip. Others go through the queues.
          const Step& consumer = program_.steps[c];
          if (consumer.lane == step.lane && lane.idle() &&
              (next < 0 || consumer.rank < program_.steps[next].rank)) {
            if (next >= 0) schedule(owner, next);
            next = c;
          } else {
            schedule(owner, c);
          }
        }
      }
    }
    if (next < 0) {
      owner.reset();  // drop our reference before the caller may wake
      request.finish_one();
      return;
    }
    current = next;  // the finished step's count passes on to `next`
  }
}

void Executor::release_reads(Request& request, const Step& step) {
  for (int32_t slot : step.reads) {
    if (request.uses[slot].fetch_sub(1, std::memory_order_acq_rel) == 1) request.values[slot] = c10::IValue();
  }
  for (int32_t k = 0; k < step.num_outputs; ++k) {  // outputs nobody reads (h_n of an LSTM, ...)
    int32_t slot = step.first_output + k;
    if (program_.initial_uses[slot] == 0) request.values[slot] = c10::IValue();
  }
}

c10::IValue Executor::resolve(const Request& request, const Arg& arg) const {
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

void Executor::execute(Request& request, const Step& step, Lane& lane) {
  switch (step.kind) {
    case StepKind::kOp: {
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
    case StepKind::kPython: {
      pybind11::gil_scoped_acquire gil;
      try {
        pybind11::tuple args(step.args.size());
        for (size_t i = 0; i < step.args.size(); ++i) {
          args[i] = torch::jit::toPyObject(resolve(request, step.args[i]));
        }
        pybind11::object result = step.fn(*args);
        request.values[step.first_output] = python_to_ivalue(result);
      } catch (pybind11::error_already_set& e) {
        throw std::runtime_error(e.what());  // message taken while we hold the GIL
      }
      break;
    }
    case StepKind::kCopy:
      copy(request, step, lane);
      break;
  }
  if (step.record_event) {
    auto event = std::make_unique<c10::Event>(lane.spec().device.type());
    event->record(*lane.stream());
    request.events[&step - program_.steps.data()] = std::move(event);
  }
}

// Note [Chrion copy steps]
void Executor::copy(Request& request, const Step& step, Lane& lane) {
  c10::IValue value = resolve(request, step.args[0]);
  TORCH_CHECK(value.isTensor(), "a copy between devices needs a tensor, got ", value.tagKind());
  at::Tensor src = value.toTensor();
  c10::IValue& out = request.values[step.first_output];
  const c10::Device to = step.target;
  if (src.device() == to) {  // e.g. an input that already lives there
    out = src;
    return;
  }
  if (to.is_cpu()) {  // device -> host, on the CPU consumer's lane
    c10::Stream stream = copy_stream(src.device());
    if (step.source_step >= 0 && request.events[step.source_step]) {
      request.events[step.source_step]->block(stream);
    }
    at::Tensor host = at::empty(src.sizes(), src.options().device(c10::kCPU).pinned_memory(true));
    {
      c10::StreamGuard guard(stream);
      host.copy_(src, /*non_blocking=*/true);
    }
    record_on_stream(src, stream);
    c10::Event copied(src.device().type());
    copied.record(stream);
    copied.synchronize();
    transfers_.device_to_host.fetch_add(1);
    transfers_.pinned.fetch_add(host.is_pinned() ? 1 : 0);
    transfers_.bytes.fetch_add(src.nbytes());
    out = host;
    return;
  }
  TORCH_CHECK(lane.stream() && lane.spec().device == to, "copy to ", to, " must run on a lane of ",
              to, ", not ", lane.spec().name);
  c10::Stream stream = copy_stream(to);
  at::Tensor host_or_src = src;
  if (src.is_cpu()) {  // host -> device, on the device consumer's lane
    if (!src.is_pinned()) {
      host_or_src = at::empty(src.sizes(), src.options().pinned_memory(true));
      host_or_src.copy_(src);
    }
    transfers_.host_to_device.fetch_add(1);
    transfers_.pinned.fetch_add(host_or_src.is_pinned() ? 1 : 0);
  } else if (step.source_step >= 0 && request.events[step.source_step]) {
    request.events[step.source_step]->block(stream);  // device -> another device
  }
  at::Tensor dst;
  {
    c10::StreamGuard guard(stream);
    dst = at::empty(src.sizes(), src.options().device(to));
    dst.copy_(host_or_src, /*non_blocking=*/true);
  }
  if (!src.is_cpu()) record_on_stream(src, c10::Stream(stream));
  c10::Event copied(to.type());
  copied.record(stream);
  copied.block(*lane.stream());
  record_on_stream(dst, *lane.stream());
  transfers_.bytes.fetch_add(src.nbytes());
  out = dst;
}

}  // namespace chrion
