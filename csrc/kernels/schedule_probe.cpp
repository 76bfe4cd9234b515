#include "schedule_probe.h"

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include "recurrent_schedule.h"
#include "spin_pause.h"

namespace chrion::recurrent {
namespace {

using Clock = std::chrono::steady_clock;

struct Probe {
  std::thread::id caller = std::this_thread::get_id();
  std::chrono::nanoseconds caller_block, helper_block;
  std::atomic<int64_t> sequence{0};
  std::mutex mutex;
  std::vector<ProbeClaim> claims;
};

struct ProbeChain {
  Probe* probe;
  int index;
};

void run_probe(const void* context, int64_t stage, int64_t first, int64_t end) {
  const auto& chain = *static_cast<const ProbeChain*>(context);
  Probe& probe = *chain.probe;
  const int64_t start = probe.sequence.fetch_add(1);
  const bool by_caller = std::this_thread::get_id() == probe.caller;
  // wall-clock spinning: a thread descheduled meanwhile still ends its blocks on time
  const auto until =
      Clock::now() + (end - first) * (by_caller ? probe.caller_block : probe.helper_block);
  while (Clock::now() < until) spin_pause();
  const int64_t finish = probe.sequence.fetch_add(1);
  std::lock_guard<std::mutex> lock(probe.mutex);
  probe.claims.push_back(ProbeClaim{chain.index, stage, first, end, by_caller, start, finish});
}

std::chrono::nanoseconds from_us(double us) {
  return std::chrono::nanoseconds(static_cast<int64_t>(us * 1e3));
}

}  // namespace

std::vector<ProbeClaim> probe_schedule(int64_t stages, int64_t blocks, int threads,
                                       int directions, bool balanced, double caller_us,
                                       double helper_us) {
  Probe probe;
  probe.caller_block = from_us(caller_us);
  probe.helper_block = from_us(helper_us);
  std::vector<ProbeChain> contexts(directions);
  std::vector<Chain> chains(directions);
  for (int d = 0; d < directions; ++d) {
    contexts[d] = ProbeChain{&probe, d};
    chains[d].stages = stages;
    chains[d].blocks = blocks;
    chains[d].home = d;
    chains[d].balanced = balanced;
    chains[d].run = &run_probe;
    chains[d].context = &contexts[d];
  }
  run_chains(chains, threads, directions);
  std::lock_guard<std::mutex> lock(probe.mutex);
  return probe.claims;
}

}  // namespace chrion::recurrent
