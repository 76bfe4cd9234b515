"""ONNX's own node test cases (``onnx.backend.test``), run through any ONNX backend.

Used by the coverage benchmark (bench/onnx_coverage.py) and the tests, so both count the
same cases the same way: a case passes when ``prepare`` and ``run`` succeed on every data
set and ``BackendTest.assert_similar_outputs`` accepts the outputs with the case's own
tolerances -- exactly what ``onnx.backend.test.BackendTest`` checks.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import onnx

# The operators recurrent models use (torch_chrion issue 3): the selection is every node
# case whose graph is one node of these types.
RECURRENT_MODEL_OPS = (
    "LSTM", "GRU", "RNN", "If", "Loop", "Scan", "MatMul", "Gemm", "Sigmoid", "Tanh", "Add",
    "Mul", "Concat", "Slice", "Gather", "Split", "Transpose", "Reshape", "Softmax", "Squeeze",
    "Unsqueeze", "Pad",
)  # fmt: skip
RECURRENT_OPS = ("LSTM", "GRU", "RNN")


@dataclass(frozen=True)
class CaseResult:
    """One node case through one backend."""

    name: str
    passed: bool
    error: str = ""


def node_cases() -> list[Any]:
    """Every node test case of the installed onnx (built in memory by onnx >= 1.23)."""
    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators overflow casts on purpose
        return sorted(load_model_tests(kind="node"), key=lambda case: case.name)


def single_op_type(case: Any) -> str | None:
    """The op type of a one-node case's graph, else None."""
    nodes = case.model.graph.node
    return nodes[0].op_type if len(nodes) == 1 else None


def select(cases: Iterable[Any], op_types: Iterable[str] = RECURRENT_MODEL_OPS) -> list[Any]:
    """The cases whose graph is a single node of one of ``op_types``."""
    wanted = set(op_types)
    return [case for case in cases if single_op_type(case) in wanted]


def selection_regex(cases: Iterable[Any]) -> str:
    """A BackendTest ``include`` pattern matching exactly these cases (CPU variants)."""
    names = "|".join(re.escape(case.name) for case in cases)
    return rf"^({names})_cpu$"


def run_case(backend: Any, case: Any, device: str = "CPU") -> CaseResult:
    """Run one node case as BackendTest does; failures of any kind are a failed case."""
    from onnx.backend.test.runner import Runner

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = backend.prepare(case.model, device)
            for inputs, expected in case.data_sets:
                inputs = [_array(value) for value in inputs]
                expected = [_array(value) for value in expected]
                outputs = prepared.run(inputs)
                Runner.assert_similar_outputs(
                    expected, list(outputs), rtol=case.rtol, atol=case.atol
                )
    except Exception as exc:  # any failure is the backend's, and is reported per case
        first_line = (str(exc).strip().splitlines() or [""])[0]
        return CaseResult(case.name, False, f"{type(exc).__name__}: {first_line[:200]}")
    return CaseResult(case.name, True)


def _array(value: Any) -> Any:
    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    return value


def run_cases(backend: Any, cases: Iterable[Any], device: str = "CPU") -> list[CaseResult]:
    """Every case through the backend, in order."""
    return [run_case(backend, case, device) for case in cases]


def passed_names(results: Iterable[CaseResult]) -> set[str]:
    """Names of the cases that passed."""
    return {result.name for result in results if result.passed}


__all__ = [
    "RECURRENT_MODEL_OPS",
    "RECURRENT_OPS",
    "CaseResult",
    "node_cases",
    "passed_names",
    "run_case",
    "run_cases",
    "select",
    "selection_regex",
    "single_op_type",
]
