// Included first by recurrent_cpu_avx512.cpp / recurrent_cpu_avx2.cpp, BEFORE they switch the
// compiler's target: the c10 / ATen headers that at::vec pulls in are compiled here for the
// baseline ISA. GCC applies `#pragma GCC target` to functions defined after it, so their inline
// functions (shared by name with every other translation unit) never get AVX code that the
// linker could pick for a CPU without it. Only at::vec's own code, which lives in a namespace
// per instruction set, is compiled for the wider target.
#pragma once

#include <ATen/AccumulateType.h>
#include <ATen/Config.h>
#include <ATen/NumericUtils.h>
#include <ATen/native/Math.h>
#include <ATen/native/cpu/zmath.h>
#include <ATen/native/quantized/AffineQuantizerBase.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16-math.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Float4_e2m1fn_x2.h>
#include <c10/util/Float8_e4m3fn.h>
#include <c10/util/Float8_e4m3fnuz.h>
#include <c10/util/Float8_e5m2.h>
#include <c10/util/Float8_e5m2fnuz.h>
#include <c10/util/Float8_e8m0fnu.h>
#include <c10/util/Half.h>
#include <c10/util/Load.h>
#include <c10/util/TypeCast.h>
#include <c10/util/complex.h>
#include <c10/util/irange.h>
#include <c10/util/qint32.h>
#include <c10/util/qint8.h>
#include <c10/util/quint2x4.h>
#include <c10/util/quint4x2.h>
#include <c10/util/quint8.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>
