/// \file elementwise.cpp
/// \brief Note [Chrion elementwise chains]: finding the chains at build, running them.
#include "elementwise.h"

#include <ATen/ATen.h>
#include <ATen/TensorIterator.h>

#include <algorithm>
#include <unordered_map>

namespace chrion {
namespace {

struct OpInfo {
  Elementwise kind;
  size_t operands;  ///< leading arguments that are operands (the rest: alpha, checked = 1)
};

const std::unordered_map<std::string, OpInfo>& fusable_ops() {
  static const std::unordered_map<std::string, OpInfo> ops = {
      {"aten::add.Tensor", {Elementwise::kAdd, 2}}, {"aten::add.Scalar", {Elementwise::kAdd, 2}},
      {"aten::sub.Tensor", {Elementwise::kSub, 2}}, {"aten::sub.Scalar", {Elementwise::kSub, 2}},
      {"aten::mul.Tensor", {Elementwise::kMul, 2}}, {"aten::mul.Scalar", {Elementwise::kMul, 2}},
      {"aten::neg", {Elementwise::kNeg, 1}},        {"aten::relu", {Elementwise::kRelu, 1}},
  };
  return ops;
}

// A constant operand that acts as one float number against a float32 tensor: a number, or a
// 0-dim tensor of a kind that never raises the result above float32 (a wrapped number of any
// real kind; a plain 0-dim float32, integer or bool tensor). TensorIterator casts it to float.
std::optional<float> constant_number(const c10::IValue& v) {
  if (v.isInt() || v.isDouble() || v.isBool()) return v.toScalar().to<float>();
  if (!v.isTensor()) return std::nullopt;
  const at::Tensor& t = v.toTensor();
  if (!t.defined() || t.dim() != 0 || !t.is_cpu() || t.is_complex()) return std::nullopt;
  const bool wrapped = t.unsafeGetTensorImpl()->is_wrapped_number();
  const auto dtype = t.scalar_type();
  if (!wrapped && dtype != at::kFloat && !at::isIntegralType(dtype, /*includeBool=*/true)) {
    return std::nullopt;
  }
  return t.item().to<float>();
}

bool is_one(const c10::IValue& v) {
  return (v.isInt() && v.toInt() == 1) || (v.isDouble() && v.toDouble() == 1.0);
}

// Mark `step` fusable when its operator and constant arguments allow it.
void classify(Step& step, const LaneSpec& lane) {
  if (step.kind != StepKind::kOp || step.num_outputs != 1 || !step.hold.empty() || lane.fake ||
      !lane.device.is_cpu()) {
    return;  // a wide step (Note [Chrion wide steps]) keeps its own lane and threads
  }
  auto it = fusable_ops().find(step.op_name);
  if (it == fusable_ops().end()) return;
  const OpInfo& info = it->second;
  for (size_t i = info.operands; i < step.args.size(); ++i) {  // alpha
    const Arg& a = step.args[i];
    if (a.kind != Arg::Kind::kConstant || !is_one(a.constant)) return;
  }
  for (size_t i = 0; i < info.operands; ++i) {
    const Arg& a = step.args[i];
    if (a.kind == Arg::Kind::kList) return;
    if (a.kind == Arg::Kind::kConstant) {
      step.numbers[i] = constant_number(a.constant);
      if (!step.numbers[i] && !a.constant.isTensor()) return;  // a None, a string, ...
    }
  }
  step.elementwise = info.kind;
}

// The operand of `step` that reads slot `slot` whole, when it is the step's only read of it.
int32_t chain_operand(const Step& step, int32_t slot) {
  int32_t found = -1, count = 0;
  const size_t operands = step.elementwise == Elementwise::kNeg ||
                                  step.elementwise == Elementwise::kRelu
                              ? 1
                              : 2;
  for (size_t i = 0; i < step.args.size(); ++i) {
    const Arg& a = step.args[i];
    if (a.kind == Arg::Kind::kSlot && a.slot == slot) {
      count += 1;
      if (i < operands && a.element < 0) found = (int32_t)i;
    }
  }
  return count == 1 ? found : -1;
}

// ---- run time ----

struct Operand {
  const float* data = nullptr;  ///< a tensor's elements, or null for a number
  float number = 0.0f;
};

float apply(Elementwise op, float a, float b) {
  switch (op) {
    case Elementwise::kAdd: return a + b;
    case Elementwise::kSub: return a - b;
    case Elementwise::kMul: return a * b;
    case Elementwise::kNeg: return -a;
    // ATen's relu is clamp_min(x, 0): NaN and -0.0 pass through unchanged
    case Elementwise::kRelu: return a < 0.0f ? 0.0f : a;
    case Elementwise::kNone: break;
  }
  return a;
}

template <Elementwise op>
void loop(float* out, Operand a, Operand b, int64_t n) {
  if (a.data && b.data) {
    for (int64_t i = 0; i < n; ++i) out[i] = apply(op, a.data[i], b.data[i]);
  } else if (a.data) {
    for (int64_t i = 0; i < n; ++i) out[i] = apply(op, a.data[i], b.number);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = apply(op, a.number, b.data[i]);
  }
}

void compute(Elementwise op, float* out, Operand a, Operand b, int64_t n) {
  switch (op) {
    case Elementwise::kAdd: return loop<Elementwise::kAdd>(out, a, b, n);
    case Elementwise::kSub: return loop<Elementwise::kSub>(out, a, b, n);
    case Elementwise::kMul: return loop<Elementwise::kMul>(out, a, b, n);
    case Elementwise::kNeg: return loop<Elementwise::kNeg>(out, a, b, n);
    case Elementwise::kRelu: return loop<Elementwise::kRelu>(out, a, b, n);
    case Elementwise::kNone: break;
  }
}

// A tensor operand the fast path can read: float32 elements laid out as `sizes` says.
bool fits(const c10::IValue& v, c10::IntArrayRef sizes) {
  if (!v.isTensor()) return false;
  const at::Tensor& t = v.toTensor();
  return t.defined() && t.layout() == at::kStrided && t.is_cpu() &&
         t.scalar_type() == at::kFloat && !t.is_neg() && t.sizes() == sizes &&
         t.is_contiguous();
}

struct Fast {
  at::Tensor out;
  std::vector<c10::IValue> held;                   ///< tensor operands, alive while computing
  std::vector<std::array<Operand, 2>> operands;    ///< per member; data == out for the chain
};

// The fast path's operands for every member, or false when a member needs ATen's own call.
bool prepare(const Program& program, const Step& head,
             const std::function<c10::IValue(const Arg&)>& resolve, Fast& fast) {
  const size_t members = head.chain.size() + 1;
  fast.operands.assign(members, {});
  fast.held.reserve(members * 2);
  std::optional<c10::IntArrayRef> sizes;
  std::vector<std::pair<size_t, size_t>> tensors;  // (member, operand) read from `held`
  for (size_t m = 0; m < members; ++m) {
    const Step& s = m == 0 ? head : program.steps[head.chain[m - 1]];
    const size_t count =
        s.elementwise == Elementwise::kNeg || s.elementwise == Elementwise::kRelu ? 1 : 2;
    for (size_t i = 0; i < count; ++i) {
      if ((int32_t)i == s.chain_arg) continue;  // the running value: `out`
      if (s.numbers[i]) {
        fast.operands[m][i].number = *s.numbers[i];
        continue;
      }
      fast.held.push_back(resolve(s.args[i]));
      const c10::IValue& v = fast.held.back();
      if (!v.isTensor()) return false;
      if (!sizes) sizes = v.toTensor().sizes();
      if (!fits(v, *sizes)) return false;
      tensors.emplace_back(m, i);
    }
    if (m == 0 && tensors.empty()) return false;  // two numbers: ATen decides what they make
  }
  if ( c10::multiply_integers(*sizes) > at::internal::GRAIN_SIZE) return false;
  for (size_t k = 0; k < tensors.size(); ++k) {
    auto [m, i] = tensors[k];
    fast.operands[m][i].data = fast.held[k].toTensor().const_data_ptr<float>();
  }
  fast.out = at::empty(*sizes, at::TensorOptions().dtype(at::kFloat));
  return true;
}

}  // namespace

void fuse_elementwise_chains(Program& p) {
  for (auto& s : p.steps) classify(s, p.lanes[s.lane]);
  // How many steps read each slot, and whether the call returns it.
  std::vector<int32_t> readers(p.num_slots, 0);
  for (const auto& s : p.steps) {
    for (int32_t slot : s.reads) {
      if (slot >= 0 && slot < p.num_slots) readers[slot] += 1;
    }
  }
  std::vector<int32_t> order;
  for (size_t lane = 0; lane < p.lanes.size(); ++lane) {
    order.clear();
    for (int32_t i = 0; i < (int32_t)p.steps.size(); ++i) {  // a wide step holding it too
      const auto& hold = p.steps[i].hold;
      if (p.steps[i].lane == (int32_t)lane || std::count(hold.begin(), hold.end(), (int32_t)lane)) {
        order.push_back(i);
      }
    }
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return p.steps[a].rank < p.steps[b].rank; });
    int32_t head = -1;
    for (size_t k = 1; k < order.size(); ++k) {
      Step& prev = p.steps[order[k - 1]];
      Step& cur = p.steps[order[k]];
      const int32_t slot = prev.first_output;
      const bool fuse = prev.elementwise != Elementwise::kNone &&
                        cur.elementwise != Elementwise::kNone && slot >= 0 &&
                        slot < p.num_slots && readers[slot] == 1 &&
                        std::none_of(p.outputs.begin(), p.outputs.end(),
                                     [&](const auto& o) { return o.first == slot; }) &&
                        chain_operand(cur, slot) >= 0;
      if (!fuse) {
        head = -1;
        continue;
      }
      if (head < 0) head = order[k - 1];
      cur.chain_arg = chain_operand(cur, slot);
      cur.absorbed = true;
      p.steps[head].chain.push_back(order[k]);
    }
  }
  // A head reads what its members read (but not the values passed along the chain) and writes
  // the last member's value. Nothing is moved out of a slot: a member may read it after the head.
  for (auto& head : p.steps) {
    if (head.chain.empty()) continue;
    for (int32_t m : head.chain) {
      Step& member = p.steps[m];
      for (int32_t slot : member.reads) {
        if (slot != member.args[member.chain_arg].slot) head.reads.push_back(slot);
      }
      for (auto& a : member.args) a.movable = false;
    }
    for (auto& a : head.args) a.movable = false;
    std::sort(head.reads.begin(), head.reads.end());
    head.reads.erase(std::unique(head.reads.begin(), head.reads.end()), head.reads.end());
    head.first_output = p.steps[head.chain.back()].first_output;
  }
}

c10::IValue run_elementwise_chain(const Program& program, const Step& head,
                                  const std::function<c10::IValue(const Arg&)>& resolve,
                                  std::vector<TraceEvent>* trace, uint64_t request_id) {
  const int32_t head_index = (int32_t)(&head - program.steps.data());
  auto member = [&](size_t m) -> const Step& {
    return m == 0 ? head : program.steps[head.chain[m - 1]];
  };
  auto index = [&](size_t m) { return m == 0 ? head_index : head.chain[m - 1]; };
  const size_t members = head.chain.size() + 1;
  Fast fast;
  if (prepare(program, head, resolve, fast)) {
    float* out = fast.out.mutable_data_ptr<float>();
    const int64_t n = fast.out.numel();
    for (size_t m = 0; m < members; ++m) {
      const Step& s = member(m);
      std::array<Operand, 2> ops = fast.operands[m];
      if (s.chain_arg >= 0) ops[s.chain_arg].data = out;
      const int64_t start = trace ? trace_now_ns() : 0;
      compute(s.elementwise, out, ops[0], ops[1], n);
      if (trace) trace->push_back({index(m), head.lane, request_id, start, trace_now_ns()});
    }
    return fast.out;
  }
  c10::IValue value;
  torch::jit::Stack stack;
  for (size_t m = 0; m < members; ++m) {
    const Step& s = member(m);
    const int64_t start = trace ? trace_now_ns() : 0;
    stack.clear();
    for (size_t i = 0; i < s.args.size(); ++i) {
      stack.push_back((int32_t)i == s.chain_arg ? std::move(value) : resolve(s.args[i]));
    }
    s.op->callBoxed(stack);
    value = std::move(stack.at(0));
    if (trace) trace->push_back({index(m), head.lane, request_id, start, trace_now_ns()});
  }
  return value;
}

}  // namespace chrion
