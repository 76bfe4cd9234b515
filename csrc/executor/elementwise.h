/// \file elementwise.h
/// \brief Chains of small elementwise CPU operators run as one step (Note [Chrion elementwise
/// chains]).
///
/// Note [Chrion elementwise chains]
/// A boxed dispatcher call of a tiny elementwise operator costs far more than its arithmetic
/// (TensorIterator setup, an output allocation, boxing): on a chain of such steps that cost is
/// the executor's per-node cost. Program::build therefore fuses runs of consecutive steps of one
/// CPU lane (consecutive in the plan's order) where each step is an add/sub (alpha 1), mul, neg
/// or relu whose value is read only by the next step of the run. The first step of a run, its
/// head, is the one scheduled: it reads what every member reads, writes the last member's
/// value, and its members are never scheduled themselves. Plan order is unchanged (the members
/// were consecutive on the lane already).
///
/// At run time the head checks that its operands fit the fast path: float32, CPU, contiguous,
/// one shape for every tensor operand (numbers are cast to float as TensorIterator does for a
/// wrapped number), and at most at::internal::GRAIN_SIZE elements (the size below which ATen
/// runs an elementwise op on one thread anyway). Then one output buffer is allocated and each
/// member's arithmetic runs in place over it; every operation is one IEEE operation in float,
/// as ATen's kernels do it, so results are bitwise equal to the unfused calls. Otherwise every
/// member runs as the ordinary boxed call, one after another: the same values either way.
/// A traced call records one event per member (each member's own loop, or its own call).
#pragma once

#include <ATen/core/stack.h>

#include <vector>

#include "program.h"
#include "trace.h"

namespace chrion {

/// \brief Mark fusable steps and fuse each run of them (see the Note). Called by
/// Program::build after the steps are parsed, before dependencies are counted.
void fuse_elementwise_chains(Program& program);

/// \brief Run a chain head and its members: the fast path when the operands allow it, else
/// each member's boxed call. `operands(arg)` resolves a non-chain argument. `trace`, when not
/// null, receives one event per member. Returns the last member's value.
c10::IValue run_elementwise_chain(const Program& program, const Step& head,
                                  const std::function<c10::IValue(const Arg&)>& operands,
                                  std::vector<TraceEvent>* trace, uint64_t request_id);

}  // namespace chrion
