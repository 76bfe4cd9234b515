// The CPU recurrent time loop compiled for the baseline instruction set (see recurrent_cpu.h):
// at::vec's portable Vectorized<float>, for CPUs (or ATEN_CPU_CAPABILITY=default) without AVX2.
#define CPU_CAPABILITY DEFAULT
#include "recurrent_cpu_impl.h"

const chrion::recurrent::CpuKernels* chrion::recurrent::cpu_kernels_default() {
  return &DEFAULT::kKernels;
}
