/// \file program.cpp
/// \brief Program::build: from lowering.py's description to resolved steps.
#include "program.h"

#include "elementwise.h"

#include <torch/csrc/jit/python/pybind_utils.h>

#include <algorithm>

namespace py = pybind11;

namespace chrion {
namespace {

c10::TypePtr list_element_type(const c10::TypePtr& type) {
  c10::TypePtr t = type;
  if (auto opt = t->cast<c10::OptionalType>()) t = opt->getElementType();
  auto list = t->cast<c10::ListType>();
  TORCH_CHECK_VALUE(list, "expected a list argument, schema says ", type->str());
  return list->getElementType();
}

// One argument from its description: ("v", slot, element) | ("c", obj) | ("l", [items]) |
// ("d",) for the schema's default. `type` is the schema's type (nullptr for Python steps).
Arg parse_arg(const py::handle& desc, const c10::Argument* schema_arg, const c10::TypePtr& type) {
  auto tuple = desc.cast<py::tuple>();
  auto tag = tuple[0].cast<std::string>();
  Arg arg;
  if (tag == "v") {
    arg.kind = Arg::Kind::kSlot;
    arg.slot = tuple[1].cast<int32_t>();
    arg.element = tuple[2].cast<int32_t>();
  } else if (tag == "c") {
    arg.kind = Arg::Kind::kConstant;
    // make_fx records `x * 2` as mul.Tensor(x, 2): a number where the schema wants a Tensor
    // becomes a wrapped-number tensor, exactly as the Python binding does for eager calls.
    torch::jit::ToIValueAllowNumbersAsTensors numbers_as_tensors(true);
    arg.constant = type ? torch::jit::toIValue(tuple[1], type)
                        : python_to_ivalue(tuple[1]);
  } else if (tag == "d") {
    TORCH_CHECK_VALUE(schema_arg && schema_arg->default_value(), "argument '",
                      schema_arg ? schema_arg->name() : "?", "' is missing and has no default");
    arg.kind = Arg::Kind::kConstant;
    arg.constant = *schema_arg->default_value();
  } else if (tag == "l") {
    TORCH_CHECK_VALUE(type, "a list of values needs a schema type");
    arg.kind = Arg::Kind::kList;
    arg.element_type = list_element_type(type);
    for (auto item : tuple[1].cast<py::list>()) {
      arg.items.push_back(parse_arg(item, nullptr, arg.element_type));
    }
  } else {
    TORCH_CHECK_VALUE(false, "unknown argument tag '", tag, "'");
  }
  return arg;
}

void collect_reads(const Arg& arg, std::vector<int32_t>& reads) {
  if (arg.kind == Arg::Kind::kSlot) reads.push_back(arg.slot);
  for (const auto& item : arg.items) collect_reads(item, reads);
}

Step parse_step(const py::dict& d, const Program& program) {
  Step step;
  step.name = d["name"].cast<std::string>();
  step.lane = d["lane"].cast<int32_t>();
  step.rank = d["rank"].cast<int64_t>();
  step.first_output = d["first_output"].cast<int32_t>();
  step.num_outputs = d["num_outputs"].cast<int32_t>();
  TORCH_CHECK_VALUE(step.lane >= 0 && step.lane < (int32_t)program.lanes.size(), "node '",
                    step.name, "': lane ", step.lane, " does not exist");
  if (d.contains("hold")) {
    const LaneSpec& own = program.lanes[step.lane];
    TORCH_CHECK_VALUE(!own.asynchronous(), "node '", step.name, "': a wide step runs on a CPU ",
                      "lane, not ", own.name);
    for (auto h : d["hold"].cast<py::list>()) {
      int32_t lane = h.cast<int32_t>();
      TORCH_CHECK_VALUE(lane >= 0 && lane < (int32_t)program.lanes.size() && lane != step.lane &&
                            !program.lanes[lane].asynchronous() &&
                            std::find(step.hold.begin(), step.hold.end(), lane) == step.hold.end(),
                        "node '", step.name, "': a wide step holds distinct CPU lanes other than ",
                        "its own; lane ", lane, " is not one");
      step.hold.push_back(lane);
    }
  }
  auto kind = d["kind"].cast<std::string>();
  auto args = d["args"].cast<py::list>();
  if (kind == "op") {
    step.kind = StepKind::kOp;
    auto name = d["op"].cast<std::string>();
    auto overload = d["overload"].cast<std::string>();
    step.op = c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), overload.c_str());
    step.op_name = overload.empty() ? name : name + "." + overload;
    const auto& schema = step.op->schema();
    TORCH_CHECK_VALUE(args.size() == schema.arguments().size(), "node '", step.name,
                      "': ", args.size(), " arguments given, ", step.op_name, " takes ",
                      schema.arguments().size());
    TORCH_CHECK_VALUE((size_t)step.num_outputs == schema.returns().size(), "node '",
                      step.name, "': ", step.op_name, " returns ", schema.returns().size(),
                      " values, description says ", step.num_outputs);
    for (size_t i = 0; i < args.size(); ++i) {
      const auto& a = schema.arguments()[i];
      try {
        step.args.push_back(parse_arg(args[i], &a, a.type()));
      } catch (const std::exception& e) {
        TORCH_CHECK_VALUE(false, "node '", step.name, "' (", step.op_name, "), argument '",
                          a.name(), "': ", e.what());
      }
    }
  } else if (kind == "python") {
    step.kind = StepKind::kPython;
    step.fn = d["fn"];
    step.op_name = "python:" + d["op"].cast<std::string>();
    for (auto a : args) step.args.push_back(parse_arg(a, nullptr, nullptr));
  } else if (kind == "copy") {
    step.kind = StepKind::kCopy;
    step.op_name = "copy";
    auto target = d["target"].cast<std::string>();
    step.target_fake = target.rfind("fake", 0) == 0;
    step.target = step.target_fake ? c10::Device(c10::kCPU) : c10::Device(target);
    for (auto a : args) step.args.push_back(parse_arg(a, nullptr, nullptr));
    TORCH_CHECK_VALUE(step.args.size() == 1 && step.args[0].kind == Arg::Kind::kSlot,
                      "copy step '", step.name, "' must read exactly one value");
  } else {
    TORCH_CHECK_VALUE(false, "node '", step.name, "': unknown step kind '", kind, "'");
  }
  for (const auto& a : step.args) collect_reads(a, step.reads);
  // A whole-value argument that is the step's only reference to its slot may take the value
  // instead of copying it when this step is the slot's last reader (Executor::resolve).
  for (auto& a : step.args) {
    if (a.kind == Arg::Kind::kSlot && a.element < 0) {
      a.movable = std::count(step.reads.begin(), step.reads.end(), a.slot) == 1;
    }
  }
  std::sort(step.reads.begin(), step.reads.end());
  step.reads.erase(std::unique(step.reads.begin(), step.reads.end()), step.reads.end());
  return step;
}

}  // namespace

c10::IValue python_to_ivalue(py::handle value) {
  if (value.is_none()) return c10::IValue();
  if (THPVariable_Check(value.ptr())) return THPVariable_Unpack(value.ptr());
  if (PyBool_Check(value.ptr())) return value.cast<bool>();
  if (PyLong_Check(value.ptr())) return value.cast<int64_t>();
  if (PyFloat_Check(value.ptr())) return value.cast<double>();
  if (py::isinstance<py::tuple>(value)) {
    std::vector<c10::IValue> items;
    for (auto item : value) items.push_back(python_to_ivalue(item));
    return c10::ivalue::Tuple::create(std::move(items));
  }
  if (py::isinstance<py::list>(value)) {
    bool tensors = true;
    for (auto item : value) tensors &= THPVariable_Check(item.ptr());
    if (tensors) return torch::jit::toIValue(value, c10::ListType::ofTensors());
  }
  return torch::jit::toIValue(value, c10::PyObjectType::get());
}

Program Program::build(const py::dict& description) {
  Program p;
  for (auto lane : description["lanes"].cast<py::list>()) {
    auto d = lane.cast<py::dict>();
    LaneSpec spec;
    spec.name = d["name"].cast<std::string>();
    spec.device = c10::Device(d["device"].cast<std::string>());
    spec.threads = d["threads"].cast<int>();
    spec.fake = d.contains("fake") && d["fake"].cast<bool>();
    for (const auto& other : p.lanes) {
      // Two lanes' streams on one device would need an event between every pair of their
      // steps; a device has one lane (several CPU lanes share the host, which has no streams).
      TORCH_CHECK_VALUE(!spec.asynchronous() || other.device != spec.device ||
                            other.fake != spec.fake || (spec.fake && other.name != spec.name),
                        "lanes '", other.name, "' and '", spec.name, "' are both on device ",
                        spec.device, ": use one lane per GPU");
    }
    p.lanes.push_back(spec);
  }
  p.num_inputs = description["num_inputs"].cast<int32_t>();
  p.num_slots = description["num_slots"].cast<int32_t>();
  for (auto s : description["steps"].cast<py::list>()) {
    p.steps.push_back(parse_step(s.cast<py::dict>(), p));
  }
  for (auto out : description["outputs"].cast<py::list>()) {
    auto t = out.cast<py::tuple>();
    p.outputs.emplace_back(t[0].cast<int32_t>(), t[1].cast<int32_t>());
  }
  if (!description.contains("fuse_elementwise") || description["fuse_elementwise"].cast<bool>()) {
    fuse_elementwise_chains(p);  // Note [Chrion elementwise chains] (elementwise.h)
  }

  // Which step writes each slot; inputs have no producer.
  std::vector<int32_t> producer(p.num_slots, -1);
  for (int32_t i = 0; i < (int32_t)p.steps.size(); ++i) {
    const auto& s = p.steps[i];
    if (s.absorbed) continue;  // run by its chain's head, which writes the chain's value
    for (int32_t k = 0; k < s.num_outputs; ++k) {
      int32_t slot = s.first_output + k;
      TORCH_CHECK_VALUE(slot >= p.num_inputs && slot < p.num_slots && producer[slot] < 0,
                        "node '", s.name, "': output slot ", slot, " is invalid or taken");
      producer[slot] = i;
    }
  }

  p.initial_uses.assign(p.num_slots, 0);
  std::vector<std::vector<int32_t>> deps(p.steps.size());
  for (int32_t i = 0; i < (int32_t)p.steps.size(); ++i) {
    auto& s = p.steps[i];
    if (s.absorbed) continue;
    for (int32_t slot : s.reads) {
      TORCH_CHECK_VALUE(slot >= 0 && slot < p.num_slots, "node '", s.name, "' reads slot ",
                        slot, " which does not exist");
      TORCH_CHECK_VALUE(slot < p.num_inputs || producer[slot] >= 0, "node '", s.name,
                        "' reads slot ", slot, " which no step writes");
      p.initial_uses[slot] += 1;
      if (producer[slot] >= 0) deps[i].push_back(producer[slot]);
    }
    std::sort(deps[i].begin(), deps[i].end());
    deps[i].erase(std::unique(deps[i].begin(), deps[i].end()), deps[i].end());
    s.num_dependencies = (int32_t)deps[i].size();
    for (int32_t d : deps[i]) p.steps[d].consumers.push_back(i);
    if (s.kind == StepKind::kCopy) {
      s.source_step = producer[s.args[0].slot];
      const LaneSpec* from = s.source_step >= 0 ? &p.lanes[p.steps[s.source_step].lane] : nullptr;
      if (from && !from->fake && from->device.type() != c10::kCPU) {
        p.steps[s.source_step].record_event = true;
      }
      s.lands_later = from && from->asynchronous() && s.target.is_cpu() && !s.target_fake;
    }
  }

  for (const auto& [slot, element] : p.outputs) {
    TORCH_CHECK_VALUE(slot >= 0 && slot < p.num_slots && (slot < p.num_inputs || producer[slot] >= 0),
                      "output slot ", slot, " is not written by any step");
    p.initial_uses[slot] += 1;  // outputs are never freed by the steps
  }

  // Note [Chrion plan order]: each lane runs its steps in plan order (rank), for every request.
  // The order is made explicit as one more dependency per step, on its lane's previous step,
  // so a lane's next step becomes ready only when the step before it in the plan has run: the
  // dependency counts that already order data make the lane order too, with no extra locking.
  // (Running whatever became ready first made a lane's order depend on thread timing.)
  //
  // Note [Chrion wide steps]
  // A wide step (a node placed wide, Note [Chrion wide placement] in schedule/task_graph.py)
  // runs on a lane of its own, a thread whose intra-op thread count is that of all the CPU lanes
  // it holds (set once, when the lane starts, like every lane's), and it is also in the order
  // of each lane it holds. So it waits for the step before it on each of them, and the step
  // after it on each of them waits for it: while it runs, the lanes it holds run nothing (their
  // threads sleep), and their cores are its threads'. A thread of its own, rather than one of
  // the held lanes switching its count per step: at::set_num_threads also sets the count that
  // threads started later in the process inherit, and a lane must not change that. A caller
  // with that count runs the wide lane's steps itself (Note [Chrion caller lane] in
  // executor.cpp), so that the wide lane's thread needs no OpenMP team of its own.
  p.lane_steps.assign(p.lanes.size(), {});
  for (int32_t i = 0; i < (int32_t)p.steps.size(); ++i) {
    if (p.steps[i].absorbed) continue;  // Note [Chrion elementwise chains]
    p.lane_steps[p.steps[i].lane].push_back(i);
    for (int32_t held : p.steps[i].hold) p.lane_steps[held].push_back(i);
  }
  std::vector<std::vector<int32_t>> order_prev(p.steps.size());  // lane-order predecessors
  for (auto& order : p.lane_steps) {
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return p.steps[a].rank < p.steps[b].rank; });
    for (size_t k = 1; k < order.size(); ++k) {
      const int32_t before = order[k - 1], after = order[k];
      auto& prev = p.steps[before];
      const auto& c = prev.consumers;
      if (std::find(c.begin(), c.end(), after) != c.end()) continue;  // ordered by its data
      auto& seen = order_prev[after];
      if (std::find(seen.begin(), seen.end(), before) != seen.end()) continue;  // two lanes
      seen.push_back(before);
      // the successor on the step's own lane is lane_next (run in place); others are released
      // onto their lanes
      if (prev.lane_next < 0 && (p.steps[after].lane == prev.lane || prev.hold.empty())) {
        prev.lane_next = after;
      } else {
        prev.held_next.push_back(after);
      }
      p.steps[after].num_dependencies += 1;
    }
  }
  for (int32_t i = 0; i < (int32_t)p.steps.size(); ++i) {
    if (p.steps[i].num_dependencies == 0 && !p.steps[i].absorbed) p.ready_at_start.push_back(i);
  }

  // Every step must be reachable: a cycle (or a lane order against the data) would leave
  // steps waiting forever.
  std::vector<int32_t> remaining(p.steps.size());
  std::vector<int32_t> ready = p.ready_at_start;
  for (size_t i = 0; i < p.steps.size(); ++i) remaining[i] = p.steps[i].num_dependencies;
  size_t reached = std::count_if(p.steps.begin(), p.steps.end(),
                                 [](const Step& s) { return s.absorbed; });
  while (!ready.empty()) {
    int32_t i = ready.back();
    ready.pop_back();
    ++reached;
    const auto& s = p.steps[i];
    for (int32_t c : s.consumers) {
      if (--remaining[c] == 0) ready.push_back(c);
    }
    if (s.lane_next >= 0 && --remaining[s.lane_next] == 0) ready.push_back(s.lane_next);
    for (int32_t n : s.held_next) {
      if (--remaining[n] == 0) ready.push_back(n);
    }
  }
  TORCH_CHECK_VALUE(reached == p.steps.size(), "the graph has a cycle, or a lane's order runs a ",
                    "step before one it reads: ", p.steps.size() - reached, " steps can never run");

  // Note [Chrion inline requests] (executor.cpp): one CPU lane runs every step
  int32_t only = -1;
  bool one_lane = true;
  for (const auto& s : p.steps) {
    if (s.absorbed) continue;
    one_lane &= s.kind != StepKind::kCopy && (only < 0 || s.lane == only);
    only = s.lane;
  }
  if (one_lane && only >= 0 && !p.lanes[only].asynchronous()) p.inline_lane = only;

  // Note [Chrion caller lane] (executor.cpp): the one CPU lane with the most threads, if > 1
  int most = 1;
  for (int32_t i = 0; i < (int32_t)p.lanes.size(); ++i) {
    const LaneSpec& lane = p.lanes[i];
    if (lane.asynchronous()) continue;
    if (lane.threads > most) {
      most = lane.threads;
      p.caller_lane = i;
    } else if (lane.threads == most && most > 1) {
      p.caller_lane = -1;  // two lanes of as many threads: the caller could serve only one
    }
  }
  return p;
}

}  // namespace chrion
