// How one call of a recurrent operator is spread over the calling thread and its helpers.
//
// Note [Recurrent schedule]
// A call is a list of chains. A chain is a sequence of stages (the time steps of one layer
// direction, each with its share of the input projection); each stage is cut into the same slices
// (ranges of hidden-unit blocks). Stage t of a chain may start when every slice of stage t-1 is
// done, and stage 0 when every chain it comes `after` is done: one synchronisation per step,
// through the chain's own counter of done tasks, and nothing else.
//
// Each thread owns, in the chains of its home direction, the same slice at every step, so its
// share of the packed weights stays in its core's L2 from step to step and call to call. A
// bidirectional layer on two threads is therefore split by direction (each thread runs one
// direction alone, no per-step synchronisation at all); one direction on n threads is split by
// rows (hidden units), n slices. A "direction" is any set of chains with threads of their own:
// recurrent.cpp also passes the parts of a one-direction layer's batch as directions (Note
// [Batch parts] in recurrent.cpp). A thread whose own slice is not ready claims blocks of a slice
// that another thread owns once its stage has been open for kStealGrace: the whole slice, or,
// in a balanced chain, one block at a time from its back while the owner works from the front
// (Note [Two-ended slices] in recurrent_schedule.cpp), so the faster of two uneven cores does
// more of each step. When the owner is away (has not joined the call yet, or claimed nothing of
// the slice's previous stage) it claims at once, half of what is left each time: a helper that
// is still waking up, or descheduled on this shared machine, costs its slices' time on another
// core, never a stall, and no grace at each step while it is gone. Every block of every stage
// is computed by exactly one thread with the same arithmetic whoever runs it, so results do not
// depend on the thread count or on who claimed what.
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

namespace chrion::recurrent {

/// One chain of stages (see the Note). `run(context, stage, first_block, end_block)` computes the
/// blocks [first_block, end_block) of one stage and must not throw.
struct Chain {
  int64_t stages = 0;
  int64_t blocks = 0;  ///< hidden-unit blocks cut into slices (fewer than 65536)
  int home = 0;        ///< direction: its slices belong to the ranks r with r % directions == home
  int after[2] = {-1, -1};  ///< chains (indices) that must be done before stage 0 (-1: none)
  /// claim its slices' blocks from both ends (Note [Two-ended slices]), or each slice's whole
  /// stage at once
  bool balanced = false;
  void (*run)(const void* context, int64_t stage, int64_t first_block, int64_t end_block) = nullptr;
  const void* context = nullptr;
};

/// Runs every chain on `threads` threads (the caller and threads-1 helpers: the rest of its
/// OpenMP team, Note [Recurrent threads are the caller's team] in recurrent_schedule.cpp) with
/// `directions` home directions; returns when all are done. Throws
/// std::length_error for a chain of 65536 blocks or more.
void run_chains(const std::vector<Chain>& chains, int threads, int directions);

}  // namespace chrion::recurrent
