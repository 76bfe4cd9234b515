// Persistent helper threads for the CPU recurrent kernels of a build without OpenMP. A build with
// it (the default: torch_chrion/_sources.py) runs a call's threads as the calling thread's
// OpenMP team instead (Note [Recurrent threads are the caller's team] in recurrent_schedule.cpp).
//
// Note [Recurrent worker teams]
// A recurrent layer at batch 1 needs one synchronisation per time step (every hidden unit of
// h_t is read by every thread at t+1), a few microseconds apart. An OpenMP barrier in a process
// with several OpenMP teams (one per executor lane) throttles its spinning and sleeps in the
// kernel at every step, which made the old two-thread split slower than one thread. So the
// kernels bring their own helpers:
//  - a team is n-1 helper threads plus the calling thread (rank 0); a call takes a whole team
//    from a process-wide free list and gives it back when it returns, so concurrent callers
//    (two executor lanes) never share a team, and a caller reuses the team, hence the cores'
//    caches, of the calls before it;
//  - an idle helper polls for the idle spin (set_idle_spin_us; kSpinBeforeParkNs by default,
//    spin_before_park.h says why), then parks on a condition variable: the layers of one
//    model, and back-to-back calls of a batch-1 model, reach the kernel closer together than
//    that. After the first 50 us it yields its core at each check, so the next operator of a
//    wide step (a convolution's own threads) goes first; a parked helper costs no CPU between
//    requests;
//  - the caller never waits for a helper, neither to start nor to leave: `work` must be able to
//    finish the whole job alone (the scheduler in recurrent_schedule.h steals the slices of a
//    late helper), and must return at once, touching nothing but its own state, when it finds
//    the job complete. A helper descheduled on a busy machine then costs the caller nothing
//    once the job's tasks are done; the job (held by shared_ptr) lives until its last user
//    leaves it.
// After fork() the child starts with an empty pool (its parent's helper threads do not exist
// there). Teams live for the process and are never joined; parked helpers cost no CPU.
#pragma once

#include <functional>
#include <memory>

namespace chrion::recurrent {

/// Runs `(*work)(rank)` on the calling thread (rank 0) and on each of `threads - 1` helper
/// threads (ranks 1..threads-1) that joins before the caller's own call returns. `(*work)(0)`
/// must complete the job by itself if no helper joins; a helper's call may still be running
/// (finding the job complete) after this returns, which is why `work` is shared.
void run_with_helpers(int threads, std::shared_ptr<const std::function<void(int rank)>> work);

/// How long an idle helper polls for its next job before it parks, in microseconds
/// (process-wide; torch_chrion.runtime.spin_before_park sets it with the executor's).
void set_idle_spin_us(double us);
double idle_spin_us();

/// Helper threads started by this process so far (tests: teams are reused, not respawned).
int helper_threads_started();

}  // namespace chrion::recurrent
