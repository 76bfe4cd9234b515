"""Pass counts over ONNX's node test suite: torch_chrion, plain onnx2torch, onnxruntime.

Every node case of the installed onnx (built in memory by onnx >= 1.23) runs through each
backend as onnx.backend.test.BackendTest runs it (torch_chrion.onnx.suite.run_case). Each
backend runs in its own process: importing torch_chrion.onnx adds converters to
onnx2torch's registry, and plain onnx2torch must be measured without them.

    .venv/bin/python bench/onnx_coverage.py [--write]  # table to stdout (and
                                                       # bench/results/onnx_coverage.md)
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

BACKENDS = ("torch_chrion", "onnx2torch", "onnxruntime")
RESULTS = Path(__file__).resolve().parent / "results" / "onnx_coverage.md"


class PlainOnnx2Torch:
    """onnx2torch 1.5.x as a user would run it: onnx2torch.convert, outputs as returned."""

    class Rep:
        def __init__(self, module) -> None:
            self.module = module

        def run(self, inputs):
            import numpy as np
            import torch

            with torch.inference_mode():
                outputs = self.module(*[torch.from_numpy(np.array(x)) for x in inputs])
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            return tuple(o.numpy() if isinstance(o, torch.Tensor) else o for o in outputs)

    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):
        import onnx2torch

        return cls.Rep(onnx2torch.convert(model))


def _backend(name: str):
    if name == "torch_chrion":
        from torch_chrion.onnx.backend import ChrionBackend

        return ChrionBackend
    if name == "onnxruntime":
        import onnxruntime.backend

        return onnxruntime.backend
    return PlainOnnx2Torch


def worker(name: str) -> None:
    """Run every node case through one backend; print {case: error or ""} as JSON."""
    import logging
    import os

    os.environ.setdefault("ORT_LOGGING_LEVEL", "3")
    logging.disable(logging.WARNING)
    suite = _load_suite()
    cases = suite.node_cases()
    backend = _backend(name)
    if name == "onnxruntime":
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
    started = time.perf_counter()
    results = {r.name: r.error for r in suite.run_cases(backend, cases)}
    print(json.dumps({"seconds": time.perf_counter() - started, "results": results}))


def _measure(name: str) -> dict:
    command = [sys.executable, __file__, "--worker", name]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{name} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--write", action="store_true", help="save bench/results/onnx_coverage.md")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return

    measured = {name: _measure(name) for name in BACKENDS}
    import onnx

    suite = _load_suite()
    cases = suite.node_cases()
    selection = {case.name for case in suite.select(cases)}
    recurrent = {case.name for case in suite.select(cases, suite.RECURRENT_OPS)}
    groups = {
        f"all node cases ({len(cases)})": {case.name for case in cases},
        f"recurrent-model ops selection ({len(selection)})": selection,
        f"LSTM / GRU / RNN ({len(recurrent)})": recurrent,
    }
    lines = [
        "# ONNX node test suite: pass counts",
        "",
        f"onnx {onnx.__version__}, {_versions()}; CPU; each case run as "
        "onnx.backend.test.BackendTest runs it (torch_chrion.onnx.suite.run_case).",
        "",
        "| cases | " + " | ".join(BACKENDS) + " |",
        "|---|" + "---:|" * len(BACKENDS),
    ]
    for label, names in groups.items():
        counts = [
            sum(1 for n in names if measured[b]["results"].get(n, "missing") == "")
            for b in BACKENDS
        ]
        lines.append(f"| {label} | " + " | ".join(str(c) for c in counts) + " |")
    lines.append(
        "| run time (s) | " + " | ".join(f"{measured[b]['seconds']:.1f}" for b in BACKENDS) + " |"
    )
    ours, ort = measured["torch_chrion"]["results"], measured["onnxruntime"]["results"]
    lost = sorted(n for n in ours if ours[n] and not ort.get(n))
    won = sorted(n for n in ours if not ours[n] and ort.get(n))
    lines += [
        "",
        f"Cases onnxruntime passes and torch_chrion fails: {len(lost)}; the reverse: {len(won)}.",
        "",
        "Why torch_chrion fails the cases it fails (first words of the error, most common first):",
        "",
    ]
    reasons = collections.Counter(_reason(error) for error in ours.values() if error)
    for reason, count in reasons.most_common(25):
        lines.append(f"- {count}: {reason}")
    lines += [
        "",
        "Excluded from the selection in tests/onnx/test_backend_suite.py: test_loop16_seq_none "
        "(onnx's assert_similar_outputs recurses into the output sequence with bare arrays and "
        "calls len() on a 0-d one, so every backend fails it; torch_chrion's output is checked "
        "element by element in test_loop_with_sequence_output instead).",
        "",
        "Failed selection cases:",
        "",
    ]
    for backend in BACKENDS:
        failed = sorted(n for n in selection if measured[backend]["results"].get(n))
        lines.append(f"- {backend}: {', '.join(failed) or 'none'}")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        RESULTS.write_text(text)


def _load_suite():
    """torch_chrion/onnx/suite.py loaded by path: importing it as torch_chrion.onnx.suite
    would run torch_chrion.onnx's __init__, which registers our converters in onnx2torch's
    registry, and plain onnx2torch must be measured without them. suite.py imports only
    onnx."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "torch_chrion" / "onnx" / "suite.py"
    spec = importlib.util.spec_from_file_location("chrion_onnx_suite", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _reason(error: str) -> str:
    if "cannot convert (" in error:
        return "unsupported operator(s): " + error.split("cannot convert (")[1].split(")")[0][:80]
    return error[:110]


def _versions() -> str:
    from importlib.metadata import version

    import onnxruntime
    import torch

    return (
        f"torch {torch.__version__}, onnx2torch {version('onnx2torch')}, "
        f"onnxruntime {onnxruntime.__version__}"
    )


if __name__ == "__main__":
    main()
