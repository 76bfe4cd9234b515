// Python module of the executor extension.
#include <torch/extension.h>

#include "../build_info.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("build_info", &chrion::build_info);
}
