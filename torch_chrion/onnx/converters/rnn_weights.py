"""Re-ordering ONNX recurrent weights (LSTM / GRU / RNN) into the forms the converters run.

ONNX stacks gates as LSTM ``[i, o, f, c]``, GRU ``[z, r, h]``; PyTorch's kernels expect LSTM
``[i, f, g, o]``, GRU ``[r, z, n]``. ONNX ``B`` is ``concat(Wb, Rb)`` per direction. Every
function here is plain tensor code (``chunk``/``cat``, no sizes read from tensors), so the same
code re-orders constant weights once at conversion time and runtime weights inside ``forward``,
under make_fx and torch.fx alike.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

GATE_COUNT = {"LSTM": 4, "GRU": 3, "RNN": 1}

# For each PyTorch gate block, the ONNX gate block it comes from.
TORCH_FROM_ONNX_GATES = {
    "LSTM": (0, 2, 3, 1),  # torch i, f, g, o  <-  onnx i(0), f(2), c(3), o(1)
    "GRU": (1, 0, 2),  # torch r, z, n  <-  onnx r(1), z(0), h(2)
    "RNN": (0,),
}


def _regate(op: str, t: Tensor, dim: int = 0) -> Tensor:
    """Re-order the gate blocks of ``t`` along ``dim`` from ONNX to PyTorch order."""
    order = TORCH_FROM_ONNX_GATES[op]
    if len(order) == 1:
        return t
    blocks = t.chunk(len(order), dim)
    return torch.cat([blocks[k] for k in order], dim)


def torch_flat_weights(
    op: str, w: Tensor, r: Tensor, b: Tensor | None, num_directions: int
) -> list[Tensor]:
    """PyTorch's flat weight list (``nn.LSTM._flat_weights`` order) for one ONNX layer.

    Args:
        op: "LSTM", "GRU" or "RNN".
        w: ONNX ``W``, shape ``[num_directions, gates*hidden, input]``.
        r: ONNX ``R``, shape ``[num_directions, gates*hidden, hidden]``.
        b: ONNX ``B`` (``[num_directions, 2*gates*hidden]``) or None for no biases.
        num_directions: 1 or 2.

    Returns:
        ``[w_ih, w_hh, b_ih, b_hh]`` per direction (biases left out when ``b`` is None),
        contiguous, gates in PyTorch order.
    """
    params: list[Tensor] = []
    for d in range(num_directions):
        params.append(_regate(op, w[d]).contiguous())
        params.append(_regate(op, r[d]).contiguous())
        if b is not None:
            wb, rb = b[d].chunk(2, 0)
            params.append(_regate(op, wb).contiguous())
            params.append(_regate(op, rb).contiguous())
    return params


def exact_cell_weights(
    op: str,
    w: Tensor,
    r: Tensor,
    b: Tensor | None,
    p: Tensor | None,
    direction: int,
) -> list[Tensor]:
    """The tensors the exact cell loop of one direction reads, in ONNX gate order.

    Returns ``[w_t, input_bias, r_t, ...]``:

    - LSTM / RNN: ``[W^T, Wb + Rb, R^T]`` plus, for LSTM with peepholes, ``P`` as ``[3, hidden]``
      (rows i, o, f).
    - GRU: ``[W^T, input_bias, R_zr^T, R_h^T, Rb_h]`` where ``input_bias`` is
      ``[Wb_z + Rb_z, Wb_r + Rb_r, Wb_h]``: ``Rb_h`` stays apart because, with
      ``linear_before_reset=0``, it is added after the reset gate and the ``R_h`` product.

    A missing ``B`` gives zero biases (the spec's default).
    """
    w_d, r_d = w[direction], r[direction]
    if b is None:
        wb = w_d.new_zeros(w_d.shape[0])
        rb = wb
    else:
        wb, rb = b[direction].chunk(2, 0)
    if op == "GRU":
        w_bz, w_br, w_bh = wb.chunk(3, 0)
        r_bz, r_br, r_bh = rb.chunk(3, 0)
        r_z, r_r, r_h = r_d.chunk(3, 0)
        input_bias = torch.cat([w_bz + r_bz, w_br + r_br, w_bh])
        r_zr_t = torch.cat([r_z, r_r], 0).t().contiguous()
        return [w_d.t().contiguous(), input_bias, r_zr_t, r_h.t().contiguous(), r_bh]
    tensors = [w_d.t().contiguous(), wb + rb, r_d.t().contiguous()]
    if op == "LSTM" and p is not None:
        tensors.append(p[direction].reshape(3, -1))
    return tensors
