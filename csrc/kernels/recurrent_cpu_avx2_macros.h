// The AVX2-level ISA macros, for a file compiled under `#pragma GCC target` with at least
// avx2,fma,f16c (include it after the pragma): GCC 12 does not define them for a target pragma,
// and Sleef's header needs them.
#pragma once

#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
