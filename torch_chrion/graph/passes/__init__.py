"""Graph-to-graph passes over the aten graph, one per file, each ``(gm, ...) -> gm``."""

from .bf16_recurrent_weights import bf16_recurrent_weights
from .channels_last_convolutions import channels_last_convolutions
from .check_portable import check_portable
from .copy_aliased_outputs import copy_aliased_outputs
from .dense_products import dense_products
from .fold_batch_norm import fold_batch_norm
from .fold_input_free import fold_input_free
from .functionalize import functionalize_mutations
from .gather_rows import gather_rows
from .max_pool_windows import max_pool_windows
from .packed_convolutions import packed_convolutions
from .softmax_rows import softmax_rows
from .split_recurrent import split_recurrent
from .unpin_copies import unpin_copies

__all__ = [
    "SPEED_REWRITES",
    "bf16_recurrent_weights",
    "channels_last_convolutions",
    "check_portable",
    "copy_aliased_outputs",
    "dense_products",
    "fold_batch_norm",
    "fold_input_free",
    "functionalize_mutations",
    "gather_rows",
    "max_pool_windows",
    "packed_convolutions",
    "softmax_rows",
    "split_recurrent",
    "unpin_copies",
]

# The rewrites that make the graph faster on CPU and keep its values, in the order both capture
# paths (graph/capture.py, dynamo.py) run them: a folded batch norm leaves its convolution's
# output to the pools and layout that follow, and packed_convolutions takes the channels-last
# convolutions that channels_last_convolutions leaves.
SPEED_REWRITES = (
    fold_batch_norm,
    max_pool_windows,
    channels_last_convolutions,
    packed_convolutions,
    dense_products,
    gather_rows,
    softmax_rows,
)
