// What a build of an extension was made from, so the loader can tell a stale prebuilt module
// (other sources, other torch) from a current one. The macros come from torch_chrion/_sources.py
// as bare identifiers (quotes do not survive the shells and ninja on the way) and are stringized.
#pragma once
#include <pybind11/pybind11.h>

#ifndef CHRION_SOURCE_HASH
#define CHRION_SOURCE_HASH t_unknown
#endif
#ifndef CHRION_TORCH_VERSION
#define CHRION_TORCH_VERSION t_unknown
#endif
#define CHRION_STRINGIZE_(x) #x
#define CHRION_STRINGIZE(x) CHRION_STRINGIZE_(x)

namespace chrion {
inline pybind11::dict build_info() {
  pybind11::dict info;
  info["source_hash"] = CHRION_STRINGIZE(CHRION_SOURCE_HASH);
  info["torch_version"] = CHRION_STRINGIZE(CHRION_TORCH_VERSION);
  return info;
}
}  // namespace chrion
