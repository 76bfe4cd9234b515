"""torch_chrion's converters, registered in its copy of onnx2torch's registry when imported.

rnn: LSTM / GRU / RNN. control_flow: If / Loop / Scan. sequences: Sequence* and Optional*
(what If and Loop carry). unsigned: Add/Sub/Mul/Div on wide unsigned types. shape_ops: shape-taking operators
that read constant inputs at conversion time. normalization: LayerNormalization and Dropout
with inference semantics. newer_opsets: schema versions onnx2torch
lacks (ReduceX-18/20, Cast-19+, and every version bump that only adds types); it goes last
because it fills the versions nothing else registered.
"""

from __future__ import annotations

import importlib

from . import (  # noqa: F401
    control_flow,
    matrix_ops,
    normalization,
    sequences,
    shape_ops,
    unsigned,
)

try:
    rnn = importlib.import_module(f"{__name__}.rnn")
except ModuleNotFoundError as exc:  # only while the recurrent converters are not written yet
    if exc.name != f"{__name__}.rnn":
        raise

from . import newer_opsets  # noqa: E402,F401
