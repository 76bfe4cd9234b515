// The CPU recurrent time loop compiled for AVX-512 (see recurrent_cpu.h).
#include "recurrent_cpu.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#include "recurrent_cpu_isa_prelude.h"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#include "recurrent_cpu_avx2_macros.h"
// and the AVX-512 ones, for the same reason
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "recurrent_cpu_impl.h"

const chrion::recurrent::CpuKernels* chrion::recurrent::cpu_kernels_avx512() {
  return &AVX512::kKernels;
}
#else
const chrion::recurrent::CpuKernels* chrion::recurrent::cpu_kernels_avx512() { return nullptr; }
#endif
