"""Exact ONNX LSTM / GRU / RNN recurrences in plain torch ops (the path for nodes PyTorch's
recurrent kernels cannot run: other activations, clip, peepholes, input_forget, GRU with
``linear_before_reset=0``, per-batch ``sequence_lens``).

Everything here traces: the time loop runs over a static step count, choices depend only on
attributes, and per-batch sequence lengths act through masks and gathers, never ``.item()``.

Semantics follow the ONNX operator spec; where the spec is silent, onnxruntime's CPU kernels
decide (see the notes at ``run_direction``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# Canonical name -> (default alpha, default beta); None where the function takes no such value.
# Defaults are those of the ONNX operators of the same name (spec: "Default values are the same
# as of corresponding ONNX operators"). ScaledTanh's operator had no defaults; 1.0/1.0 makes it
# plain Tanh.
ACTIVATION_DEFAULTS: dict[str, tuple[float | None, float | None]] = {
    "Relu": (None, None),
    "Tanh": (None, None),
    "Sigmoid": (None, None),
    "Affine": (1.0, 0.0),
    "LeakyRelu": (0.01, None),
    "ThresholdedRelu": (1.0, None),
    "ScaledTanh": (1.0, 1.0),
    "HardSigmoid": (0.2, 0.5),
    "Elu": (1.0, None),
    "Softsign": (None, None),
    "Softplus": (None, None),
}
_CANONICAL = {name.lower(): name for name in ACTIVATION_DEFAULTS}


@dataclass(frozen=True)
class Activation:
    """One ONNX recurrent activation function with its alpha / beta."""

    name: str
    alpha: float = 0.0
    beta: float = 0.0

    def __call__(self, x: Tensor) -> Tensor:
        a, b = self.alpha, self.beta
        match self.name:
            case "Relu":
                return torch.relu(x)
            case "Tanh":
                return torch.tanh(x)
            case "Sigmoid":
                return torch.sigmoid(x)
            case "Affine":
                return x * a + b
            case "LeakyRelu":
                return torch.where(x >= 0, x, x * a)
            case "ThresholdedRelu":
                return torch.where(x >= a, x, torch.zeros_like(x))
            case "ScaledTanh":
                return torch.tanh(x * b) * a
            case "HardSigmoid":
                return torch.clamp(x * a + b, 0.0, 1.0)
            case "Elu":
                return torch.where(x >= 0, x, torch.expm1(x) * a)
            case "Softsign":
                return F.softsign(x)
            case "Softplus":
                return F.softplus(x)
        raise AssertionError(f"unreachable: activation {self.name!r} was validated")


def canonical_activation(name: str) -> str | None:
    """The spec's spelling of an activation name (matched case-insensitively), or None."""
    return _CANONICAL.get(name.lower())


def resolve_activations(
    names: Sequence[str], alphas: Sequence[float], betas: Sequence[float]
) -> list[Activation]:
    """Pair each activation with its alpha / beta.

    The spec says the values "are consumed in the order of activation functions": each function
    that takes an alpha (beta) takes the next unused one, or its default when the list has run
    out. Names must already be canonical (see ``canonical_activation``).
    """
    alpha_iter, beta_iter = iter(alphas), iter(betas)
    resolved = []
    for name in names:
        default_alpha, default_beta = ACTIVATION_DEFAULTS[name]
        alpha = next(alpha_iter, default_alpha) if default_alpha is not None else 0.0
        beta = next(beta_iter, default_beta) if default_beta is not None else 0.0
        resolved.append(Activation(name, float(alpha), float(beta)))
    return resolved


@dataclass(frozen=True)
class CellConfig:
    """What one direction's cell computes; all static, taken from the node's attributes.

    ``activations`` holds this direction's functions: (f, g, h) for LSTM, (f, g) for GRU, (f,)
    for RNN.
    """

    op: str
    activations: tuple[Activation, ...]
    clip: float | None = None
    input_forget: bool = False
    linear_before_reset: bool = False
    peepholes: bool = False

    def clipped(self, x: Tensor) -> Tensor:
        """The spec's cell clip, applied to the input of every gate activation."""
        if self.clip is None or math.isinf(self.clip):
            return x
        return torch.clamp(x, -self.clip, self.clip)


def lstm_cell(
    cfg: CellConfig, weights: list[Tensor], xw: Tensor, h: Tensor, c: Tensor
) -> tuple[Tensor, Tensor]:
    """One LSTM step; ``xw`` is ``Xt*W^T + Wb + Rb`` in ONNX gate order [i, o, f, c]."""
    f, g, h_act = cfg.activations
    gi, go, gf, gc = (xw + h @ weights[2]).chunk(4, -1)
    if cfg.peepholes:
        p_i, p_o, p_f = weights[3][0], weights[3][1], weights[3][2]
        gi = gi + p_i * c
    i = f(cfg.clipped(gi))
    if cfg.input_forget:  # coupled gates, as onnxruntime: f = 1 - i
        forget = 1 - i
    else:
        if cfg.peepholes:
            gf = gf + p_f * c
        forget = f(cfg.clipped(gf))
    c_new = forget * c + i * g(cfg.clipped(gc))
    if cfg.peepholes:
        go = go + p_o * c_new  # the output gate peeps at the new cell state Ct
    o = f(cfg.clipped(go))
    return o * h_act(c_new), c_new


def gru_cell(cfg: CellConfig, weights: list[Tensor], xw: Tensor, h: Tensor) -> Tensor:
    """One GRU step; ``xw`` is ``Xt*W^T + [Wb_z+Rb_z, Wb_r+Rb_r, Wb_h]`` in order [z, r, h]."""
    f, g = cfg.activations
    r_zr_t, r_h_t, r_bh = weights[2], weights[3], weights[4]
    xz, xr, xh = xw.chunk(3, -1)
    hz, hr = (h @ r_zr_t).chunk(2, -1)
    z = f(cfg.clipped(xz + hz))
    r = f(cfg.clipped(xr + hr))
    if cfg.linear_before_reset:
        candidate = xh + r * (h @ r_h_t + r_bh)
    else:
        candidate = xh + (r * h) @ r_h_t + r_bh
    return (1 - z) * g(cfg.clipped(candidate)) + z * h


def rnn_cell(cfg: CellConfig, weights: list[Tensor], xw: Tensor, h: Tensor) -> Tensor:
    """One simple-RNN step; ``xw`` is ``Xt*W^T + Wb + Rb``."""
    (f,) = cfg.activations
    return f(cfg.clipped(xw + h @ weights[2]))


def _reverse_within_lengths(t: Tensor, lens: Tensor, steps: int) -> Tensor:
    """Reverse each batch column of time-major ``t`` over its own first ``lens[b]`` steps.

    Steps past a sequence's length stay where they are. The map is its own inverse, so the
    same call also puts reversed outputs back in time order.
    """
    time = torch.arange(steps, device=t.device).unsqueeze(1)  # [T, 1]
    index = torch.where(time < lens, lens - 1 - time, time)  # [T, B]
    return torch.gather(t, 0, index.unsqueeze(-1).expand_as(t))


def run_direction(
    cfg: CellConfig,
    weights: list[Tensor],
    x: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    lens: Tensor | None,
    reverse: bool,
    steps: int,
    want_sequence: bool,
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """Run one direction of an ONNX recurrent layer over time-major ``x`` ``[T, B, input]``.

    Args:
        cfg: the cell's static configuration.
        weights: this direction's tensors from ``rnn_weights.exact_cell_weights``.
        x: the input sequence, ``[steps, batch, input]``.
        h0, c0: initial states ``[batch, hidden]`` (``c0`` only for LSTM).
        lens: per-batch sequence lengths ``[batch]`` or None (all ``steps`` long).
        reverse: read each sequence backwards, from its own last valid step.
        steps: the static number of time steps (``x.shape[0]``).
        want_sequence: whether to build the per-step output ``Y``.

    Returns:
        ``(y, h_last, c_last)``: ``y`` is ``[steps, batch, hidden]`` in time order (None when
        not wanted), zero past each sequence's length; ``h_last``/``c_last`` hold the state at
        each sequence's last valid step. As onnxruntime does, a sequence of length 0 has zero
        final states (the spec does not say).
    """
    xw = torch.matmul(x, weights[0]) + weights[1]  # all input projections at once
    mask = None
    if lens is not None:
        lens = lens.to(torch.int64).clamp(0, steps)
        if reverse:
            xw = _reverse_within_lengths(xw, lens, steps)
        mask = (torch.arange(steps, device=x.device).unsqueeze(1) < lens).unsqueeze(-1)
    elif reverse:
        xw = xw.flip(0)

    h, c = h0, c0
    outputs = []
    for step in range(steps):
        if cfg.op == "LSTM":
            h_new, c_new = lstm_cell(cfg, weights, xw[step], h, c)
        elif cfg.op == "GRU":
            h_new, c_new = gru_cell(cfg, weights, xw[step], h), None
        else:
            h_new, c_new = rnn_cell(cfg, weights, xw[step], h), None
        if mask is None:
            h, c, y = h_new, c_new, h_new
        else:
            valid = mask[step]
            h = torch.where(valid, h_new, h)
            if c_new is not None:
                c = torch.where(valid, c_new, c)
            y = torch.where(valid, h_new, torch.zeros_like(h_new))
        if want_sequence:
            outputs.append(y)

    y_all = torch.stack(outputs) if want_sequence else None
    if lens is not None:
        if reverse and y_all is not None:
            y_all = _reverse_within_lengths(y_all, lens, steps)
        nonempty = (lens > 0).unsqueeze(-1)
        h = torch.where(nonempty, h, torch.zeros_like(h))
        if c is not None:
            c = torch.where(nonempty, c, torch.zeros_like(c))
    elif reverse and y_all is not None:
        y_all = y_all.flip(0)
    return y_all, h, c
