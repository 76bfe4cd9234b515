"""What the CPU recurrent kernel tests compare: chrion's operators called on an nn module's
weights, and the module itself (aten's lstm / gru / rnn)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from torch_chrion._extension import load
from torch_chrion.ops import ensure_loaded

TOL = {"rtol": 1e-5, "atol": 1e-6}
MODULES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN, "rnn_relu": nn.RNN}


def make_module(
    kind: str, features: int, hidden: int, layers: int, bidirectional: bool, bias: bool = True
) -> nn.Module:
    kwargs = {"nonlinearity": kind[4:]} if kind.startswith("rnn") else {}
    module = MODULES[kind](
        features, hidden, num_layers=layers, bidirectional=bidirectional, bias=bias, **kwargs
    )
    return module.eval()


def run_chrion(
    kind: str,
    module: nn.Module,
    x: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    batch_first: bool,
    reverse: bool = False,
) -> tuple[Tensor, ...]:
    ensure_loaded()
    flags = (module.bias, module.num_layers, module.bidirectional, batch_first, reverse)
    params = list(module._flat_weights)
    if kind == "lstm":
        return torch.ops.chrion.lstm(x, h0, c0, params, *flags)
    if kind == "gru":
        return torch.ops.chrion.gru(x, h0, params, *flags)
    return torch.ops.chrion.rnn(x, h0, params, *flags, kind[4:])


def ran_chrion_kernel(module: nn.Module) -> bool:
    """chrion's CPU kernel packed every weight matrix of ``module`` (the aten path packs
    none)."""
    weights = [w for name, w in module.named_parameters() if name.startswith("weight_")]
    return all(load("kernels").packed_weights_hold(w) for w in weights)


def run_reference(kind: str, module: nn.Module, x: Tensor, h0: Tensor, c0: Tensor | None) -> tuple:
    out, state = module(x, (h0, c0) if kind == "lstm" else h0)
    return (out, *state) if kind == "lstm" else (out, state)


def assert_reverse_matches_flipped_reference(
    kind: str, module: nn.Module, x: Tensor, h0: Tensor, c0: Tensor | None, batch_first: bool
) -> None:
    """chrion's ``reverse`` run (one half of a split bidirectional layer) equals aten on the
    input flipped in time."""
    time = 1 if batch_first else 0
    with torch.no_grad():
        got = run_chrion(kind, module, x, h0, c0, batch_first=batch_first, reverse=True)
        module.batch_first = batch_first
        want = run_reference(kind, module, x.flip(time), h0, c0)
    torch.testing.assert_close(got[0], want[0].flip(time), **TOL)
    for g, w in zip(got[1:], want[1:], strict=True):
        torch.testing.assert_close(g, w, **TOL)
