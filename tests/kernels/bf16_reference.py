"""An eager reference for chrion's bfloat16 recurrent kernels (Note [bf16 recurrent weights] in
csrc/kernels/recurrent_cpu_impl.h): PyTorch's cell equations step by step, with W_hh and the
hidden state rounded to bfloat16 only where they enter the recurrent product, which is computed
in float32 (bfloat16 values are exact floats), and everything else in float32."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def to_bf16(t: Tensor) -> Tensor:
    """``t`` rounded to bfloat16 (nearest even), as float32."""
    return t.to(torch.bfloat16).float()


def _cell(kind: str, gx: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None, c: Tensor | None):
    hidden_product = to_bf16(h) @ to_bf16(w_hh).t()
    if kind == "gru":
        hidden = h.shape[-1]
        b_hn = b_hh[2 * hidden :] if b_hh is not None else 0.0
        r, z, n = gx.chunk(3, -1)
        hr, hz, hn = hidden_product.chunk(3, -1)
        r, z = torch.sigmoid(r + hr), torch.sigmoid(z + hz)
        n = torch.tanh(n + r * (hn + b_hn))
        return (h - n) * z + n, None
    pre = gx + hidden_product
    if kind == "lstm":
        i, f, g, o = pre.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    return (torch.tanh(pre) if kind == "rnn_tanh" else torch.relu(pre)), None


def _direction(kind: str, x: Tensor, h: Tensor, c: Tensor | None, weights: list[Tensor], reverse):
    """One layer direction over time-major ``x`` [T, B, F]: (outputs [T, B, H], h_T, c_T)."""
    w_ih, w_hh = weights[0], weights[1]
    b_ih, b_hh = (weights[2], weights[3]) if len(weights) == 4 else (None, None)
    gx = x @ w_ih.t()
    if b_ih is not None:
        gx = gx + b_ih
        if kind == "gru":  # b_hn goes inside r * (W_hn h + b_hn)
            hidden = h.shape[-1]
            gx = gx + torch.cat([b_hh[: 2 * hidden], torch.zeros_like(b_hh[2 * hidden :])])
        else:
            gx = gx + b_hh
    outputs = [torch.empty(0)] * x.shape[0]
    for t in reversed(range(x.shape[0])) if reverse else range(x.shape[0]):
        h, c = _cell(kind, gx[t], h, w_hh, b_hh, c)
        outputs[t] = h
    return torch.stack(outputs), h, c


def run_bf16_reference(
    kind: str, module: nn.Module, x: Tensor, h0: Tensor, c0: Tensor | None, batch_first: bool
) -> tuple[Tensor, ...]:
    """(output, h_n[, c_n]) of ``module`` on batched ``x`` with bfloat16 recurrent products."""
    dirs = 2 if module.bidirectional else 1
    per_layer = len(module._flat_weights) // (module.num_layers * dirs)
    layer_in = x.transpose(0, 1) if batch_first else x
    h_n, c_n = [], []
    for layer in range(module.num_layers):
        outs = []
        for d in range(dirs):
            index = layer * dirs + d
            weights = module._flat_weights[index * per_layer : (index + 1) * per_layer]
            c = c0[index] if c0 is not None else None
            out, h, c = _direction(kind, layer_in, h0[index], c, weights, reverse=d == 1)
            outs.append(out)
            h_n.append(h)
            c_n.append(c)
        layer_in = torch.cat(outs, -1)
    out = layer_in.transpose(0, 1) if batch_first else layer_in
    states = (torch.stack(h_n),) + ((torch.stack(c_n),) if kind == "lstm" else ())
    return (out, *states)
