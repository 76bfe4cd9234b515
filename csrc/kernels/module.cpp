// Python module of the kernels extension: importing it registers the chrion:: operators.
#include <torch/extension.h>

#include "../build_info.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("build_info", &chrion::build_info);
}
