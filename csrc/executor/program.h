/// \file program.h
/// \brief A placed aten graph compiled once into steps that lanes run without Python.
///
/// Built by torch_chrion/runtime/lowering.py's description (see Program::build). Everything a
/// step needs is resolved here: the dispatcher handle, constants as IValues, which value slots it
/// reads, how many steps it waits for and which steps wait for it, and how many reads each value
/// gets so a request can free an intermediate after its last reader. After build a Program is
/// const and shared by every Request (cf. TVM GraphExecutor::Init; Run() is only a loop).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>
#include <c10/core/Device.h>
#include <pybind11/pybind11.h>

#include <array>
#include <optional>
#include <string>
#include <vector>

// Hidden like pybind11's own namespace: Step holds a py::object.
namespace chrion __attribute__((visibility("hidden"))) {

/// \brief One argument of a step: a value slot (or one element of a list/tuple value), a
/// constant converted once, or a list built at run time from slots and constants.
struct Arg {
  enum class Kind : uint8_t { kSlot, kConstant, kList };
  Kind kind = Kind::kConstant;
  int32_t slot = -1;           ///< kSlot: value-table index
  int32_t element = -1;        ///< kSlot: element of a list/tuple value, -1 for all of it
  bool movable = false;        ///< kSlot: the step's only reference to the slot (see resolve)
  c10::IValue constant;        ///< kConstant
  std::vector<Arg> items;      ///< kList: kSlot or kConstant items
  c10::TypePtr element_type;   ///< kList: element type of the list to build
};

/// \brief What a step does.
enum class StepKind : uint8_t {
  kOp,      ///< a boxed dispatcher call of one operator overload
  kPython,  ///< a Python callable run under the GIL (counted, see ChrionModule.python_nodes)
  kCopy,    ///< copy of a value to another device (see Note [Chrion copy steps] in executor.cpp)
};

/// \brief Configuration of one lane: its device and, for CPU lanes, intra-op thread count.
struct LaneSpec {
  std::string name;        ///< "cpu:0", "cuda:0", "fake:0", ...
  c10::Device device{c10::kCPU};  ///< where the lane's tensors live (CPU for a fake lane)
  int threads = 1;         ///< at::set_num_threads on the lane's thread (CPU and fake lanes)
  /// Test-only device whose memory is apart from the host's and whose copies out land later,
  /// on its completer thread (Note [Chrion fake device] in executor.cpp).
  bool fake = false;
  /// Work issued on the lane may land after the step returns: copies out of it complete
  /// asynchronously, on the lane's completer.
  bool asynchronous() const { return fake || device.type() != c10::kCPU; }
};

/// \brief An elementwise operator that a fused chain can compute itself (Note [Chrion
/// elementwise chains] in elementwise.h).
enum class Elementwise : uint8_t { kNone, kAdd, kSub, kMul, kNeg, kRelu };

/// \brief One unit of work of a Program.
struct Step {
  StepKind kind = StepKind::kOp;
  std::string name;                      ///< fx node name (or "copy:<value>-><device>")
  std::string op_name;                   ///< "aten::add.Tensor", "python:<fn>", "copy"
  int32_t lane = 0;
  int64_t rank = 0;                      ///< position in the plan: each lane runs by rank
  std::optional<c10::OperatorHandle> op; ///< kOp
  pybind11::object fn;                   ///< kPython: fn(*values) -> object
  c10::Device target{c10::kCPU};         ///< kCopy: destination device
  bool target_fake = false;              ///< kCopy: into a fake lane's memory
  std::vector<Arg> args;
  int32_t first_output = 0;              ///< outputs go to slots [first_output, +num_outputs)
  int32_t num_outputs = 0;
  std::vector<int32_t> reads;            ///< distinct slots read (each read once per run)
  std::vector<int32_t> consumers;        ///< distinct steps that read an output of this one
  int32_t num_dependencies = 0;          ///< distinct steps it reads from, +1 for lane_prev
  int32_t lane_next = -1;                ///< the next step of its lane in plan order, when it is
                                         ///< not also a consumer (Note [Chrion plan order])
  std::vector<int32_t> hold;             ///< a wide step: the lanes it holds (Note [Chrion wide
                                         ///< steps]); empty for every other step
  std::vector<int32_t> held_next;        ///< a wide step: the next step of each lane it holds,
                                         ///< when not a consumer or its lane_next
  bool record_event = false;             ///< a device lane step read by a copy step
  int32_t source_step = -1;              ///< kCopy: producer of the copied value (-1: an input)
  bool lands_later = false;              ///< kCopy out of an asynchronous lane to the host:
                                         ///< consumers wait for the data to land
  // Note [Chrion elementwise chains] (elementwise.h)
  Elementwise elementwise = Elementwise::kNone;  ///< kOp a chain may fuse
  std::array<std::optional<float>, 2> numbers;   ///< operands 0/1 that are number constants
  int32_t chain_arg = -1;                ///< chain member: the argument reading the previous value
  std::vector<int32_t> chain;            ///< chain head: the members it runs after itself
  bool absorbed = false;                 ///< chain member: run by its head, never scheduled
};

/// \brief The compiled graph: lanes, steps, value slots and outputs.
struct Program {
  std::vector<LaneSpec> lanes;
  std::vector<Step> steps;
  int32_t num_inputs = 0;                ///< slots [0, num_inputs) are the call's inputs
  int32_t num_slots = 0;
  std::vector<int32_t> initial_uses;     ///< reads of each slot per run (+1 for outputs)
  std::vector<int32_t> ready_at_start;   ///< steps with no dependency
  std::vector<std::vector<int32_t>> lane_steps;  ///< per lane, its steps in plan order
  /// The CPU lane that runs every step, which a caller may then run itself (Note [Chrion inline
  /// requests] in executor.cpp); -1 when the steps span lanes or a device.
  int32_t inline_lane = -1;
  /// The CPU lane of the most intra-op threads (a wide lane), whose steps a caller with as many
  /// threads runs itself (Note [Chrion caller lane] in executor.cpp); -1 when there is none.
  int32_t caller_lane = -1;
  std::vector<std::pair<int32_t, int32_t>> outputs;  ///< (slot, element)

  /// \brief Compile a description made by torch_chrion/runtime/lowering.py. Throws
  /// c10::Error (ValueError in Python) naming the node at fault.
  static Program build(const pybind11::dict& description);
};

/// \brief A Python value as an IValue without a schema: tensors, numbers, None, tuples and lists
/// of those; anything else is wrapped as a Python object. Needs the GIL.
c10::IValue python_to_ivalue(pybind11::handle value);

}  // namespace chrion
