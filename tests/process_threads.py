"""The operating-system threads of this process: lane threads, kernel and OpenMP workers are not
Python threads, so ``threading.enumerate`` does not see them."""

import os


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def os_thread_ids() -> set[int]:
    """The ids of this process's threads: a thread that some earlier test's object stops while
    a test runs (its lane released when the garbage collector frees it) leaves this set, where
    a thread the test starts joins it."""
    return {int(tid) for tid in os.listdir("/proc/self/task")}
