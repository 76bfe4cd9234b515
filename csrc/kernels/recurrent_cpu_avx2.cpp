// The CPU recurrent time loop compiled for AVX2 + FMA (see recurrent_cpu.h).
#include "recurrent_cpu.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#include "recurrent_cpu_isa_prelude.h"
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#include "recurrent_cpu_avx2_macros.h"
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "recurrent_cpu_impl.h"

const chrion::recurrent::CpuKernels* chrion::recurrent::cpu_kernels_avx2() {
  return &AVX2::kKernels;
}
#else
const chrion::recurrent::CpuKernels* chrion::recurrent::cpu_kernels_avx2() { return nullptr; }
#endif
