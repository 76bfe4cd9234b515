"""Weights that a pass derives from the model's own, kept equal to them after capture.

Note [Derived weights follow the model]
Some passes hand a node a tensor computed from the model's weights instead of the weights
themselves: a batch norm folded into its convolution (fold_batch_norm), a channels-last copy of
a convolution's weight (channels_last_convolutions), a bfloat16 copy of W_hh
(bf16_recurrent_weights). Computed once at capture, such a tensor did not see the model's
weights change afterwards: after ``load_state_dict`` into a conv + batch-norm model compiled
with torch.compile or compile_graph, every later call returned the old model's outputs (off by
up to 170 here), with no error. Now each one is made by ``derived_weight``, which remembers how:
the function and the source tensors (the model's own parameters and buffers, or another
derived weight), with each source's version counter and data pointer. ``refresher_for(gm)``
gives a graph's check, which ChrionModule runs before every call: a source written in place
(its version moved: load_state_dict, an optimizer step) or rebound (its data pointer moved:
``param.data = other``) has each weight derived from it computed again and copied into the
tensor the graph and its executables hold, sources first. The copy bumps that tensor's own
version, so the kernels' packed forms of it repack (Note [Packed weights follow the model] in
csrc/kernels/packed_weights.h). An inference tensor (made under torch.inference_mode) has no
version counter, so writes into one are not seen, as the packed weights do not see them. The
check reads two integers per distinct source: 4 us a call for three convolutions and two batch
norms (14 sources), nothing for a model without derived weights.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import fx
from torch.utils.weak import WeakIdKeyDictionary

from .nodes import fetch_attr, shares_storage


@dataclass
class _Derived:
    derive: Callable[..., torch.Tensor]
    sources: tuple[torch.Tensor, ...]
    stamps: list[tuple[int, int]]
    order: int  # made after every derived weight it reads


_DERIVED = WeakIdKeyDictionary()  # derived tensor -> _Derived (tensors compare elementwise)
# a result that views its sources -> those sources (which may be derived weights themselves)
_VIEWS = WeakIdKeyDictionary()
_ORDER = itertools.count()
_LOCK = threading.Lock()


def _stamps(sources: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
    # an inference tensor has no version counter: only its rebinding is seen
    return [(-1 if s.is_inference() else s._version, s.data_ptr()) for s in sources]


def derived_weight(
    derive: Callable[..., torch.Tensor], sources: Sequence[torch.Tensor]
) -> torch.Tensor:
    """``derive(*sources)``, detached, remembered so that ``refresher_for`` computes it again
    when a source changes. A result that views a source's storage follows it by itself (it is
    only remembered as a view, so a derived weight it views is still found)."""
    detached = tuple(s.detach() for s in sources)
    with torch.no_grad():
        value = derive(*detached).detach()
    if shares_storage(value, detached):
        _VIEWS[value] = tuple(sources)
    else:
        _DERIVED[value] = _Derived(derive, tuple(sources), _stamps(sources), next(_ORDER))
    return value


def refresher_for(gm: fx.GraphModule) -> Callable[[], None]:
    """A check to run before each call of ``gm``: recomputes, in place, every derived weight
    ``gm`` reads whose sources changed since it was computed (Note [Derived weights follow the
    model])."""
    found: dict[int, tuple[torch.Tensor, _Derived]] = {}
    pending = [fetch_attr(gm, str(n.target)) for n in gm.graph.nodes if n.op == "get_attr"]
    while pending:  # and the derived weights those are derived from (a folded batch norm's)
        value = pending.pop()
        if not isinstance(value, torch.Tensor) or id(value) in found:
            continue
        pending.extend(_VIEWS.get(value, ()))
        derived = _DERIVED.get(value)
        if derived is not None:
            found[id(value)] = (value, derived)
            pending.extend(derived.sources)
    if not found:
        return _nothing
    # sources first: a weight is derived after every derived weight it reads
    entries = sorted(found.values(), key=lambda entry: entry[1].order)
    return _Refresher(entries)


def _nothing() -> None:
    pass


class _Refresher:
    def __init__(self, entries: list[tuple[torch.Tensor, _Derived]]) -> None:
        self.entries = entries
        # each source once (a folded batch norm's weight and bias read the same six)
        self.sources = list({id(s): s for _, d in entries for s in d.sources}.values())
        self.seen: list[tuple[int, int]] | None = None  # the sources' stamps at the last check

    def __call__(self) -> None:
        if _stamps(self.sources) == self.seen:
            return
        with _LOCK, torch.no_grad():
            for value, derived in self.entries:
                stamps = _stamps(derived.sources)
                if stamps != derived.stamps:
                    value.copy_(derived.derive(*(s.detach() for s in derived.sources)))
                    derived.stamps = stamps
            self.seen = _stamps(self.sources)  # after the copies into derived sources
