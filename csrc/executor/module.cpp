/// \file module.cpp
/// \brief Python module of the executor extension: the Executor class and build_info().
#include <pthread.h>
#include <sched.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/jit/python/pybind_utils.h>
#include <torch/extension.h>

#include <atomic>
#include <thread>

#include "../build_info.h"
#include "executor.h"

namespace py = pybind11;

namespace chrion {
namespace {

// Python entry: convert under the GIL, run without it (checked, as python_engine.cpp does),
// re-raise the lanes' warnings as Python warnings, and turn a StepError into
// torch_chrion.errors.ExecutionError carrying node, lane, op and the Python cause if any.
py::list run(Executor& executor, const py::sequence& inputs, bool trace) {
  std::vector<c10::IValue> values;
  values.reserve(inputs.size());
  for (auto x : inputs) values.push_back(chrion::python_to_ivalue(x));
  std::vector<c10::IValue> outputs;
  py::object errors = py::module_::import("torch_chrion.errors");
  try {
    torch::PyWarningHandler warnings;  // emits what run() re-raised, once the GIL is back
    try {
      py::gil_scoped_release no_gil;
      TORCH_INTERNAL_ASSERT(!PyGILState_Check(), "the executor must run without the GIL");
      outputs = executor.run(std::move(values), trace);
    } catch (...) {
      warnings.set_in_exception();
      throw;
    }
  } catch (const StepError& e) {
    py::object error = errors.attr("ExecutionError")(e.what());
    error.attr("node") = e.node;
    error.attr("lane") = e.lane;
    error.attr("op") = e.op;
    if (e.cause) {
      py::object cause = py::reinterpret_borrow<py::object>(e.cause.get());
      PyException_SetCause(error.ptr(), cause.inc_ref().ptr());  // steals the reference
    }
    PyErr_SetObject(error.get_type().ptr(), error.ptr());
    throw py::error_already_set();
  } catch (const StoppedError& e) {
    PyErr_SetString(errors.attr("ExecutionError").ptr(), e.what());
    throw py::error_already_set();
  }
  py::list result;
  for (auto& v : outputs) result.append(torch::jit::toPyObject(std::move(v)));
  return result;
}

py::list trace_events(Executor& executor) {
  py::list events;
  for (const auto& e : executor.last_trace()) {
    events.append(py::make_tuple(e.step, e.lane, e.request, e.start_ns, e.end_ns));
  }
  return events;
}

py::dict transfer_stats(const Executor& executor) {
  const auto& t = executor.transfers();
  py::dict stats;
  stats["host_to_device"] = t.host_to_device.load();
  stats["device_to_host"] = t.device_to_host.load();
  stats["pinned"] = t.pinned.load();
  stats["bytes"] = t.bytes.load();
  stats["in_flight"] = t.in_flight.load();
  return stats;
}

py::list step_info(const Executor& executor) {
  py::list steps;
  for (const auto& s : executor.program().steps) {
    steps.append(py::make_tuple(s.name, s.op_name, s.lane));
  }
  return steps;
}

// Note [Chrion elementwise chains]: the node names of each fused chain, head first.
py::list fused_chains(const Executor& executor) {
  const auto& steps = executor.program().steps;
  py::list chains;
  for (const auto& s : steps) {
    if (s.chain.empty()) continue;
    py::list names;
    names.append(s.name);
    for (int32_t m : s.chain) names.append(steps[m].name);
    chains.append(names);
  }
  return chains;
}

// The floor under the executor's per-node cost: the same boxed call in a bare C++ loop.
double boxed_call_ns(const std::string& name, const std::string& overload, const py::list& args,
                     int64_t iterations) {
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), overload.c_str());
  const auto& schema = op.schema();
  TORCH_CHECK_VALUE(args.size() == schema.arguments().size(), "expected ",
                    schema.arguments().size(), " arguments");
  std::vector<c10::IValue> inputs;
  torch::jit::ToIValueAllowNumbersAsTensors numbers_as_tensors(true);
  for (size_t i = 0; i < args.size(); ++i) {
    inputs.push_back(torch::jit::toIValue(args[i], schema.arguments()[i].type()));
  }
  py::gil_scoped_release no_gil;
  torch::jit::Stack stack;
  auto start = trace_now_ns();
  for (int64_t k = 0; k < iterations; ++k) {
    stack.assign(inputs.begin(), inputs.end());
    op.callBoxed(stack);
    stack.clear();
  }
  return double(trace_now_ns() - start) / double(iterations);
}

// Note [Cross-core round trip]
// The host of a VM moves its vCPUs: on this 2-vCPU machine a cache line went from one vCPU to
// the other and back in ~55 ns for seconds at a time, and in ~330 ns (cores of different CCDs)
// for the next seconds or minutes. Every plan step that makes the two cores wait on each other
// (a wide recurrent layer's per-step synchronisation, a hand-off between lanes) pays that, and
// the same build's plans ran 15-30% slower in the far state. This measures it now: a thread
// pinned to cpu_b answers the caller, pinned to cpu_a for the duration, `iterations` times.
double cross_core_round_trip_ns(int cpu_a, int cpu_b, int64_t iterations) {
  TORCH_CHECK_VALUE(iterations > 0, "iterations must be positive, got ", iterations);
  cpu_set_t allowed;
  TORCH_CHECK(pthread_getaffinity_np(pthread_self(), sizeof allowed, &allowed) == 0,
              "cannot read the calling thread's CPUs");
  auto usable = [&](int cpu) { return cpu >= 0 && cpu < CPU_SETSIZE && CPU_ISSET(cpu, &allowed); };
  TORCH_CHECK_VALUE(cpu_a != cpu_b && usable(cpu_a) && usable(cpu_b), "cpu_a=", cpu_a,
                    " and cpu_b=", cpu_b, " must be two different CPUs this thread may run on");
  auto pin = [](int cpu) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    pthread_setaffinity_np(pthread_self(), sizeof one, &one);
  };
  constexpr int64_t kWarmup = 100;  // the peer's start is not a round trip
  py::gil_scoped_release no_gil;
  alignas(64) std::atomic<int64_t> turn{0};  // odd: the peer's move
  std::thread peer([&] {
    pin(cpu_b);
    for (int64_t k = 0; k < kWarmup + iterations; ++k) {
      while (turn.load(std::memory_order_acquire) != 2 * k + 1) {
      }
      turn.store(2 * k + 2, std::memory_order_release);
    }
  });
  pin(cpu_a);
  int64_t start = 0;
  for (int64_t k = 0; k < kWarmup + iterations; ++k) {
    if (k == kWarmup) start = trace_now_ns();
    turn.store(2 * k + 1, std::memory_order_release);
    while (turn.load(std::memory_order_acquire) != 2 * k + 2) {
    }
  }
  const int64_t end = trace_now_ns();
  peer.join();
  pthread_setaffinity_np(pthread_self(), sizeof allowed, &allowed);
  return double(end - start) / double(iterations);
}

}  // namespace
}  // namespace chrion

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using chrion::Executor;
  m.def("build_info", &chrion::build_info);
  // module_local: a stale prebuilt copy of this extension, imported and rejected by
  // _extension.load, has already registered the same C++ type.
  py::class_<Executor>(m, "Executor", py::module_local())
      .def(py::init<const py::dict&>(), py::arg("description"),
           "Compile a description from torch_chrion/runtime/lowering.py and start the lanes.")
      .def("run", &chrion::run, py::arg("inputs"), py::arg("trace") = false,
           "Run one request; returns the flat outputs.")
      .def("stop", &Executor::stop, py::arg("timeout_s") = 10.0,
           py::call_guard<py::gil_scoped_release>(),
           "Stop and join the lanes; False if one missed the timeout.")
      .def("last_trace", &chrion::trace_events,
           "(step, lane, request, start_ns, end_ns) of the last traced request.")
      .def("transfer_stats", &chrion::transfer_stats)
      .def("steps", &chrion::step_info, "(name, op, lane) of every step, by step index.")
      .def("fused_chains", &chrion::fused_chains,
           "Node names of each chain of elementwise steps run as one step, head first.");
  m.def("live_lanes", &chrion::LanePool::live_lanes,
        "Lanes (worker threads, shared by every executor) alive in this process.");
  m.def("before_fork", &chrion::LanePool::before_fork);
  m.def("after_fork_in_parent", &chrion::LanePool::after_fork_parent);
  m.def("after_fork_in_child", &chrion::LanePool::after_fork_child,
        "In a forked child: forget the parent's lanes (they have no threads here); executors "
        "start new ones on their next call.");
  m.def("set_fake_gate", &chrion::set_fake_gate, py::arg("open"),
        "Test-only: hold (False) or let land (True) copies out of fake lanes.");
  m.def("fake_gate_timeouts", &chrion::fake_gate_timeouts,
        "Test-only: copies that landed because the fake gate stayed closed for 5 s.");
  m.def("set_spin_before_park_us", &chrion::set_spin_before_park_us, py::arg("us"),
        "How long lanes and callers poll for work before they park (process-wide; 0: never).");
  m.def("spin_before_park_us", &chrion::spin_before_park_us);
  m.def("boxed_call_ns", &chrion::boxed_call_ns, py::arg("op"), py::arg("overload"),
        py::arg("args"), py::arg("iterations"),
        "Mean ns of one boxed dispatcher call of op.overload(*args) in a bare C++ loop.");
  m.def("cross_core_round_trip_ns", &chrion::cross_core_round_trip_ns, py::arg("cpu_a"),
        py::arg("cpu_b"), py::arg("iterations"),
        "Mean ns for a cache line to go from CPU cpu_a to cpu_b and back, measured now (Note "
        "[Cross-core round trip]); the calling thread's CPUs are restored.");
}
