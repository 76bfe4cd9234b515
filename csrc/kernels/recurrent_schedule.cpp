#include "recurrent_schedule.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <thread>

#include "spin_pause.h"
#include "worker_team.h"

namespace chrion::recurrent {
namespace {

using Clock = std::chrono::steady_clock;
// How long a slice must have been ready and unclaimed before a thread other than its owner
// takes it: an owner that is merely a step behind claims its slice within a microsecond. An
// owner that is away (not joined yet, or let its slice's previous stage go) gets no grace.
constexpr auto kStealGrace = std::chrono::microseconds(3);
// A thread that found nothing to do for this long yields its core between checks (on a loaded
// machine the thread it waits for may need that core).
constexpr auto kYieldAfter = std::chrono::microseconds(50);

struct alignas(64) Counter {
  std::atomic<int64_t> value{0};
};

struct ChainState {
  const Chain* chain = nullptr;
  int slices = 1;
  int directions = 1;
  std::unique_ptr<Counter[]> next;  // per slice: the first stage nobody has claimed
  // per slice: 1 while its last claimed stage was claimed by a thread other than its owner
  std::unique_ptr<Counter[]> taken_by_thief;
  Counter done;  // tasks (stage, slice) done

  bool complete() const {
    return done.value.load(std::memory_order_acquire) == slices * chain->stages;
  }
  int home = 0;  // chain->home among `directions`
  int owner(int slice) const { return slice * directions + home; }
};

class Schedule {
 public:
  // the chains are copied: a helper may still look at them after run_chains returned
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
      state.next = std::make_unique<Counter[]>(state.slices);
      state.taken_by_thief = std::make_unique<Counter[]>(state.slices);
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

  // the stage of `slice` that may run now, or -1
  int64_t ready_stage(const ChainState& state, int slice) const {
    const int64_t stage = state.next[slice].value.load(std::memory_order_acquire);
    if (stage >= state.chain->stages) return -1;
    if (stage > 0) {
      return state.done.value.load(std::memory_order_acquire) >= state.slices * stage ? stage
                                                                                       : -1;
    }
    for (int dep : state.chain->after) {
      if (dep >= 0 && !states_[dep].complete()) return -1;
    }
    return 0;
  }

  bool claim_and_run(ChainState& state, int slice, int64_t stage, bool thief) {
    int64_t expected = stage;
    if (!state.next[slice].value.compare_exchange_strong(expected, stage + 1,
                                                         std::memory_order_acq_rel)) {
      return false;
    }
    std::atomic<int64_t>& taken = state.taken_by_thief[slice].value;
    if ((taken.load(std::memory_order_relaxed) != 0) != thief) {
      taken.store(thief ? 1 : 0, std::memory_order_relaxed);
    }
    const Chain& chain = *state.chain;
    chain.run(chain.context, stage, chain.blocks * slice / state.slices,
              chain.blocks * (slice + 1) / state.slices);
    state.done.value.fetch_add(1, std::memory_order_acq_rel);
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
      if (stage >= 0 && claim_and_run(state, slice, stage, false)) return true;
    }
    return false;
  }

  // a ready slice of another thread that has stayed unclaimed for kStealGrace (the candidate
  // this thread watches), or one that no thread owns
  bool run_stolen(int rank, int first, Candidate& candidate) {
    if (candidate.chain >= first) {
      ChainState& state = states_[candidate.chain];
      if (ready_stage(state, candidate.slice) != candidate.stage) {
        candidate.chain = -1;  // its owner (or another thief) took it
      } else if (away(state, candidate.slice) || Clock::now() - candidate.since >= kStealGrace) {
        candidate.chain = -1;
        return claim_and_run(state, candidate.slice, candidate.stage, true);
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
        if (owner >= threads_ || away(state, slice)) {
          if (claim_and_run(state, slice, stage, true)) return true;
          continue;  // another thief was first
        }
        candidate = Candidate{i, slice, stage, Clock::now()};
        return false;
      }
    }
    return false;
  }

  // Whether the owner of `slice` is away: it has not joined the job (a parked helper still
  // waking up), or the slice's last stage was taken from it (descheduled, or still catching up
  // after a late join). Its slices are then taken at once, not after kStealGrace each: waiting
  // out the grace at every step cost an absent helper's caller ~3 us per step on top of doing
  // the whole step itself. A returning owner spins on its own slice, so it wins it back at the
  // next stage; advisory only (relaxed), whoever runs a slice computes the same.
  bool away(const ChainState& state, int slice) const {
    const int owner = state.owner(slice);
    return joined_[owner].value.load(std::memory_order_relaxed) == 0 ||
           state.taken_by_thief[slice].value.load(std::memory_order_relaxed) != 0;
  }

  int threads_;
  std::unique_ptr<Counter[]> joined_;  // per rank: 1 once it has entered `work`
  std::vector<Chain> chains_;
  std::vector<ChainState> states_;
};

}  // namespace

void run_chains(const std::vector<Chain>& chains, int threads, int directions) {
  threads = std::max(threads, 1);
  directions = std::clamp(directions, 1, threads);
  if (threads == 1) {
    Schedule(chains, 1, 1).work(0);
    return;
  }
  auto schedule = std::make_shared<Schedule>(chains, threads, directions);
  run_with_helpers(threads, std::make_shared<const std::function<void(int)>>(
                                [schedule](int rank) { schedule->work(rank); }));
}

}  // namespace chrion::recurrent
