// One iteration of a spin-wait: tells the core that this thread is spinning (x86 `pause`), so
// it yields pipeline resources and power to the work it is waiting for.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace chrion::recurrent {

inline void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace chrion::recurrent
