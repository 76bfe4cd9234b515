"""Constant folding at the ONNX level, before conversion.

Exported recurrent models compute shapes with Shape -> Gather -> Unsqueeze -> Concat chains
(the legacy exporter does this for every initial state). With static input shapes those
chains are constants; ``onnxscript.optimizer`` folds them into Constant nodes, which our
shape-taking converters then read at conversion time (see ``converters/shape_ops``), so the
converted GraphModule has no shape arithmetic left and traces with
``make_fx(tracing_mode="real")``.
"""

from __future__ import annotations

import logging

import onnx

from ..errors import ModelError

_LOG = logging.getLogger(__name__)


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constant subgraphs (shape arithmetic on static shapes included).

    Raises:
        ModelError: the optimizer failed on the model.
    """
    import onnxscript.optimizer  # heavy; only for callers that ask for folding

    try:
        folded = onnxscript.optimizer.optimize(model)
    except Exception as exc:  # the optimizer raises assorted internal errors
        raise ModelError(f"constant folding (onnxscript.optimizer) failed: {exc}") from exc
    _LOG.info("folding: %d -> %d nodes", len(model.graph.node), len(folded.graph.node))
    return folded
