// Python module of the kernels extension: importing it registers the chrion:: operators.
#include <torch/extension.h>

#include "../build_info.h"
#include "packed_weights.h"
#include "recurrent_cpu.h"
#include "schedule_probe.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("build_info", &chrion::build_info);
  m.def(
      "recurrent_cpu_isa", [] { return std::string(chrion::recurrent::cpu_kernels().name); },
      "The instruction set chrion's CPU recurrent kernels run with (AVX512, AVX2 or DEFAULT).");
  m.def(
      "recurrent_bf16_product",
      [] {
        return std::string(chrion::recurrent::cpu_kernels().bf16_dot() ? "vdpbf16ps" : "widened");
      },
      "How recurrent_dtype=\"bfloat16\" multiplies W_hh on this CPU: vdpbf16ps (AVX512-BF16) or "
      "widened to float32.");
  m.def("packed_weights_hold", &chrion::packed_weights_hold,
        "Whether the CPU kernels' cache holds a current packed form of this weight.");
  m.def("packed_weight_sizes", &chrion::packed_weight_sizes,
        "The sizes of the cached packed form of this weight, or None: which packing ran.");
  m.def("packed_weights_cached", &chrion::packed_weights_cached,
        "How many packed weights the CPU kernels' cache holds.");
  m.def(
      "probe_schedule",
      [](int64_t stages, int64_t blocks, int threads, int directions, bool balanced,
         double caller_us, double helper_us) {
        std::vector<std::tuple<int, int64_t, int64_t, int64_t, bool, int64_t, int64_t>> out;
        {
          py::gil_scoped_release release;
          for (const auto& c : chrion::recurrent::probe_schedule(
                   stages, blocks, threads, directions, balanced, caller_us, helper_us)) {
            out.emplace_back(c.chain, c.stage, c.first_block, c.end_block, c.by_caller, c.start,
                             c.end);
          }
        }
        return out;
      },
      py::arg("stages"), py::arg("blocks"), py::arg("threads"), py::arg("directions"),
      py::arg("balanced"), py::arg("caller_us"), py::arg("helper_us"),
      "Tests: the recurrent schedule on synthetic chains whose blocks spin caller_us on the "
      "calling thread and helper_us on a helper; every claim as (chain, stage, first_block, "
      "end_block, by_caller, start, end).");
}
