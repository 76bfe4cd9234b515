#include "recurrent_schedule.h"

#ifndef _OPENMP
#error "the recurrent kernels run a call's threads on the caller's OpenMP team: -fopenmp"
#endif
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

#include "spin_pause.h"

namespace chrion::recurrent {
namespace {

using Clock = std::chrono::steady_clock;
// How long a slice's stage must have been open before a thread other than its owner claims from
// it: an owner that is merely a step behind claims its slice within a microsecond. An owner that
// is away (not joined yet, or claimed nothing of its slice's previous stage) gets no grace.
constexpr auto kStealGrace = std::chrono::microseconds(3);
// A thread that found nothing to do for this long yields its core between checks (on a loaded
// machine the thread it waits for may need that core).
constexpr auto kYieldAfter = std::chrono::microseconds(50);

struct alignas(64) Counter {
  std::atomic<int64_t> value{0};
};

// Note [Two-ended slices]
// In a balanced chain (Chain::balanced) a slice's blocks at one stage are claimed from both
// ends: its owner takes half of what is left from the front (half the slice, then a quarter,
// ...), a thief one block at a time from the back once the stage has been open kStealGrace.
// The two cores of this shared machine drift apart in speed by 10-20% from minute to minute;
// with a whole slice per owner the faster thread idled 6-17% of a two-thread layer at batch
// 8-32 (one synchronisation per step: the slower thread sets the pace), and a bidirectional
// layer's faster direction idled at its end. Now the faster thread takes the slower owner's
// last blocks of a step or, its own direction done, blocks of the other direction's steps:
// 5-11% less time at batch 4-32 and in bidirectional layers at batch 1 while the cores differ,
// the same while they do not (bench: paired calls, same process). A batch-1 row split stays
// unbalanced, each owner claiming its whole slice: there a stolen block's weights come from L3
// and push part of the thief's own slice out of its L2, which cost 3-7%.
// One word per slice holds its stage and its unclaimed blocks [front, back), so a claim is one
// compare-and-swap (an owner alone keeps that line in its own cache); a block is computed by the
// same code whoever claims it, so results still do not depend on who runs what.
struct alignas(64) SliceWord {
  std::atomic<uint64_t> value{0};
};

constexpr int64_t kMaxBlocks = 1 << 16;  // a slice word's front and back have 16 bits

constexpr uint64_t pack_word(int64_t stage, int64_t front, int64_t back) {
  return static_cast<uint64_t>(stage) << 32 | static_cast<uint64_t>(front) << 16 |
         static_cast<uint64_t>(back);
}
constexpr int64_t word_stage(uint64_t w) { return static_cast<int64_t>(w >> 32); }
constexpr int64_t word_front(uint64_t w) { return static_cast<int64_t>(w >> 16 & 0xffff); }
constexpr int64_t word_back(uint64_t w) { return static_cast<int64_t>(w & 0xffff); }

struct ChainState {
  const Chain* chain = nullptr;
  int slices = 1;
  int directions = 1;
  // per slice: its stage and its blocks not yet claimed at that stage (Note [Two-ended slices])
  std::unique_ptr<SliceWord[]> words;
  // per slice: the last stage its owner claimed a block of (-1: none yet), advisory
  std::unique_ptr<Counter[]> owner_stage;
  Counter done;  // blocks done, over every stage and slice

  bool complete() const {
    return done.value.load(std::memory_order_acquire) == chain->blocks * chain->stages;
  }
  int home = 0;  // chain->home among `directions`
  int owner(int slice) const { return slice * directions + home; }
  int64_t first_block(int slice) const { return chain->blocks * slice / slices; }
  int64_t slice_blocks(int slice) const { return first_block(slice + 1) - first_block(slice); }
};

class Schedule {
 public:
  Schedule(const std::vector<Chain>& chains, int threads, int directions)
      : threads_(threads), chains_(chains), states_(chains.size()) {
    for (size_t i = 0; i < chains.size(); ++i) {
      ChainState& state = states_[i];
      state.chain = &chains_[i];
      state.directions = directions;
      const int home = chains[i].home % directions;
      state.home = home;
      const int owners = threads > home ? (threads - home + directions - 1) / directions : 1;
      state.slices = static_cast<int>(std::clamp<int64_t>(chains[i].blocks, 1, owners));
      state.words = std::make_unique<SliceWord[]>(state.slices);
      state.owner_stage = std::make_unique<Counter[]>(state.slices);
      for (int slice = 0; slice < state.slices; ++slice) {
        state.words[slice].value.store(pack_word(0, 0, state.slice_blocks(slice)));
        state.owner_stage[slice].value.store(-1);
      }
    }
    joined_ = std::make_unique<Counter[]>(threads);
  }

  void work(int rank) {
    joined_[rank].value.store(1, std::memory_order_relaxed);
    const int n = static_cast<int>(states_.size());
    int first = 0;  // chains before it are done
    Candidate candidate;
    auto idle_since = Clock::time_point{};
    uint32_t idle_spins = 0;
    while (true) {
      while (first < n && states_[first].complete()) ++first;
      if (first == n) return;
      if (run_own(rank, first) || run_stolen(rank, first, candidate)) {
        idle_since = Clock::time_point{};
        continue;
      }
      spin_pause();
      if ((++idle_spins & 15) != 0) continue;
      const auto now = Clock::now();
      if (idle_since == Clock::time_point{}) idle_since = now;
      if (now - idle_since > kYieldAfter) std::this_thread::yield();
    }
  }

 private:
  struct Candidate {
    int chain = -1;
    int slice = 0;
    int64_t stage = 0;
    Clock::time_point since;
  };

  // The stage of `slice` whose blocks may be claimed now, or -1: the word's own stage while it
  // has unclaimed blocks, else the next one once every block of the word's stage is done.
  int64_t ready_stage(const ChainState& state, int slice) const {
    const uint64_t w = state.words[slice].value.load(std::memory_order_acquire);
    const int64_t stage = word_stage(w);
    if (word_front(w) < word_back(w)) {
      return stage > 0 || dependencies_done(state) ? stage : -1;
    }
    const int64_t next = stage + 1;
    if (next >= state.chain->stages) return -1;
    return state.done.value.load(std::memory_order_acquire) >= state.chain->blocks * next ? next
                                                                                         : -1;
  }

  bool dependencies_done(const ChainState& state) const {
    for (int dep : state.chain->after) {
      if (dep >= 0 && !states_[dep].complete()) return false;
    }
    return true;
  }

  // How much of what is left of a slice's stage one claim takes (Note [Two-ended slices]).
  enum class Take { all, half, one };

  static int64_t taken(Take take, int64_t left) {
    return take == Take::all ? left : take == Take::half ? (left + 1) / 2 : 1;
  }

  // Claims blocks of `stage` of `slice` (its owner from the front, a thief from the back) and
  // runs them.
  bool claim_and_run(ChainState& state, int slice, int64_t stage, bool thief, Take how) {
    std::atomic<uint64_t>& word = state.words[slice].value;
    uint64_t w = word.load(std::memory_order_acquire);
    int64_t front = word_front(w);
    int64_t back = word_back(w);
    if (word_stage(w) != stage) {  // opening the next stage: nothing of it claimed yet
      if (word_stage(w) + 1 != stage || front < back) return false;
      front = 0;
      back = state.slice_blocks(slice);
    }
    const int64_t left = back - front;
    if (left <= 0) return false;
    const int64_t take = taken(how, left);
    const int64_t from = thief ? back - take : front;
    const uint64_t claimed =
        thief ? pack_word(stage, front, back - take) : pack_word(stage, front + take, back);
    if (!word.compare_exchange_strong(w, claimed, std::memory_order_acq_rel)) return false;
    if (!thief) {
      std::atomic<int64_t>& mine = state.owner_stage[slice].value;
      if (mine.load(std::memory_order_relaxed) != stage) {
        mine.store(stage, std::memory_order_relaxed);
      }
    }
    const Chain& chain = *state.chain;
    const int64_t block = state.first_block(slice) + from;
    chain.run(chain.context, stage, block, block + take);
    state.done.value.fetch_add(take, std::memory_order_acq_rel);
    return true;
  }

  // a ready slice this thread owns, in the first chain that has one
  bool run_own(int rank, int first) {
    for (int i = first; i < static_cast<int>(states_.size()); ++i) {
      ChainState& state = states_[i];
      if (rank % state.directions != state.home) continue;
      const int slice = rank / state.directions;
      if (slice >= state.slices) continue;
      const int64_t stage = ready_stage(state, slice);
      const Take take = state.chain->balanced ? Take::half : Take::all;
      if (stage >= 0 && claim_and_run(state, slice, stage, false, take)) return true;
    }
    return false;
  }

  // blocks of a ready slice of another thread whose stage has stayed open for kStealGrace (the
  // candidate this thread watches), or at once, half of them, when its owner is away
  bool run_stolen(int rank, int first, Candidate& candidate) {
    if (candidate.chain >= first) {
      ChainState& state = states_[candidate.chain];
      if (ready_stage(state, candidate.slice) != candidate.stage) {
        candidate.chain = -1;  // its owner (or another thief) finished it
      } else if (away(state, candidate.slice, candidate.stage)) {
        return claim_and_run(state, candidate.slice, candidate.stage, true, Take::half);
      } else if (Clock::now() - candidate.since >= kStealGrace) {
        // the candidate stays: the next claim of a balanced chain's blocks needs no new grace
        return claim_and_run(state, candidate.slice, candidate.stage, true,
                             state.chain->balanced ? Take::one : Take::all);
      } else {
        return false;
      }
    }
    for (int i = first; i < static_cast<int>(states_.size()); ++i) {
      ChainState& state = states_[i];
      for (int slice = 0; slice < state.slices; ++slice) {
        const int owner = state.owner(slice);
        if (owner == rank) continue;
        const int64_t stage = ready_stage(state, slice);
        if (stage < 0) continue;
        if (owner >= threads_ || away(state, slice, stage)) {
          if (claim_and_run(state, slice, stage, true, Take::half)) return true;
          continue;  // another thief was first
        }
        candidate = Candidate{i, slice, stage, Clock::now()};
        return false;
      }
    }
    return false;
  }

  // Whether the owner of `slice` is away at `stage`: it has not joined the job (a helper still
  // waking up), or claimed no block of the stage before (descheduled, or still catching
  // up after a late join). Its slice is then taken at once, half of what is left per claim:
  // waiting out the grace at every step cost an absent helper's caller ~3 us per step on top
  // of doing the whole step itself. A returning owner claims its slice's next stage first, so
  // it wins it back; advisory only (relaxed), whoever runs a block computes the same.
  bool away(const ChainState& state, int slice, int64_t stage) const {
    const int owner = state.owner(slice);
    return joined_[owner].value.load(std::memory_order_relaxed) == 0 ||
           (stage > 0 &&
            state.owner_stage[slice].value.load(std::memory_order_relaxed) < stage - 1);
  }

  int threads_;
  std::unique_ptr<Counter[]> joined_;  // per rank: 1 once it has entered `work`
  const std::vector<Chain>& chains_;   // the caller's, alive until run_chains returns
  std::vector<ChainState> states_;
};

}  // namespace

void run_chains(const std::vector<Chain>& chains, int threads, int directions) {
  for (const Chain& chain : chains) {
    if (chain.blocks >= kMaxBlocks) {
      throw std::length_error("chrion recurrent kernel: " + std::to_string(chain.blocks) +
                              " blocks of hidden units, at most " + std::to_string(kMaxBlocks - 1));
    }
  }
  threads = std::max(threads, 1);
  directions = std::clamp(directions, 1, threads);
  if (threads == 1) {
    Schedule(chains, 1, 1).work(0);
    return;
  }
  // Note [Recurrent threads are the caller's team]
  // A call's threads are the calling thread's OpenMP team, the one its ATen operators use:
  // rank = the team's thread number, the caller rank 0. Built on helper threads of its own (its
  // first design, because an OpenMP barrier per step sleeps in a throttled libgomp), the kernel
  // shared the cores with that team's workers, which libgomp keeps spinning for milliseconds
  // after every parallel region: a convolution or a GEMM placed wide just before a recurrent
  // node left a worker spinning on the core the kernel's helper needed. In one process,
  // alternating the two (bench A/B on this machine): the CRDNN through torch.compile 47.7 ->
  // 42.6 ms, BiGRU 3x256 + Linear at batch 16 (its head GEMM wide) 27.2 -> 22.8 ms, the cpu_rnn
  // rows without wide ATen ops within 1.3%. Only per call does the team meet (at the region's
  // start and end); each step's synchronisation stays the schedule's own atomics, never an
  // OpenMP barrier. A team smaller than asked (a nested region) is fine: the schedule lets the
  // caller take the slices of ranks that never join. Every thread of the team has left the
  // region when it ends, so the schedule lives on this stack.
  Schedule schedule(chains, threads, directions);
#pragma omp parallel num_threads(threads)
  schedule.work(omp_get_thread_num());
}

}  // namespace chrion::recurrent
