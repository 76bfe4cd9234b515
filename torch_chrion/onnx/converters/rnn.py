"""ONNX LSTM, GRU and RNN converters, registered in torch_chrion's converter registry.

onnx2torch has no recurrent converters. Importing this module adds ``LSTM`` (opsets 1, 7, 14,
22), ``GRU`` (1, 3, 7, 14, 22) and ``RNN`` (1, 7, 14, 22). Each node becomes one of two modules:

- ``OnnxRecurrentKernel`` when the node is exactly what PyTorch's recurrent kernels compute
  (see ``fits_torch_kernels``): ``forward`` is a single ``torch.ops.chrion.lstm/gru/rnn`` call on
  weights re-ordered once at conversion time, so make_fx and torch.export keep the layer whole
  and each device runs its own kernel (cuDNN, oneDNN).
- ``OnnxRecurrentLoop`` otherwise: the exact recurrence of the ONNX spec in plain torch ops
  (``rnn_cells``), traceable by make_fx and torch.fx.

Inputs that are constants (initializers or Constant nodes) are read at conversion time and held
by the module; the others arrive at ``forward``. Outputs follow the node: one tensor for a
single output, otherwise a tuple with one entry per declared output (None for an omitted ``''``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxMapping,
    OnnxToTorchModule,
    OperationConverterResult,
    get_const_value,
)
from torch import nn

from ...errors import ModelError, UnsupportedOperatorError
from ...ops import ensure_loaded
from .._onnx2torch import register_converter
from ..scope import OnnxScope
from .rnn_cells import (
    Activation,
    CellConfig,
    canonical_activation,
    resolve_activations,
    run_direction,
)
from .rnn_weights import exact_cell_weights, torch_flat_weights

Tensor = torch.Tensor

# Input slots in ONNX order; forward() takes them under these names, in this order.
INPUT_SLOTS = {
    "LSTM": ("x", "w", "r", "b", "sequence_lens", "initial_h", "initial_c", "p"),
    "GRU": ("x", "w", "r", "b", "sequence_lens", "initial_h"),
    "RNN": ("x", "w", "r", "b", "sequence_lens", "initial_h"),
}
DEFAULT_ACTIVATIONS = {
    "LSTM": ("Sigmoid", "Tanh", "Tanh"),
    "GRU": ("Sigmoid", "Tanh"),
    "RNN": ("Tanh",),
}
OPSET_VERSIONS = {"LSTM": (1, 7, 14, 22), "GRU": (1, 3, 7, 14, 22), "RNN": (1, 7, 14, 22)}
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}
WEIGHT_SLOTS = ("w", "r", "b", "p")


@dataclass(frozen=True)
class RecurrentSpec:
    """The attributes of one ONNX recurrent node, checked and with the spec's defaults."""

    op: str
    where: str  # "LSTM node 'name' (opset 14)", for messages
    direction: str
    num_directions: int
    layout: int
    hidden_size: int | None
    clip: float | None
    activations: tuple[tuple[Activation, ...], ...]  # per direction
    input_forget: bool
    linear_before_reset: bool
    outputs: tuple[str, ...]
    present: frozenset[str]  # input slots the node feeds (non-empty names)

    def cell(self, direction: int, peepholes: bool) -> CellConfig:
        """The cell configuration of one direction."""
        return CellConfig(
            op=self.op,
            activations=self.activations[direction],
            clip=self.clip,
            input_forget=self.input_forget,
            linear_before_reset=self.linear_before_reset,
            peepholes=peepholes,
        )


def _unsupported(where: str, attribute: str, value: object, allowed: object) -> None:
    op = where.split(" ", 1)[0]
    raise UnsupportedOperatorError(
        f"{where}: unsupported {attribute}={value!r} (supported: {allowed})", ops=[op]
    )


def parse_spec(node: OnnxNode, opset: int) -> RecurrentSpec:
    """Read and check a recurrent node's attributes.

    Raises:
        UnsupportedOperatorError: unknown direction, layout or activation name.
        ModelError: an activation list of the wrong length.
    """
    op = node.operation_type
    where = f"{op} node '{node.name or node.unique_name}' (opset {opset})"
    attrs = node.attributes
    direction = attrs.get("direction", "forward")
    if direction not in DIRECTIONS:
        _unsupported(where, "direction", direction, sorted(DIRECTIONS))
    num_directions = DIRECTIONS[direction]
    layout = int(attrs.get("layout", 0))
    if layout not in (0, 1):
        _unsupported(where, "layout", layout, [0, 1])

    per_direction = len(DEFAULT_ACTIVATIONS[op])
    names = list(attrs.get("activations", DEFAULT_ACTIVATIONS[op] * num_directions))
    canonical = []
    for name in names:
        spelled = canonical_activation(name)
        if spelled is None:
            _unsupported(where, "activations entry", name, sorted(DEFAULT_ACTIVATIONS["LSTM"]))
        canonical.append(spelled)
    resolved = resolve_activations(
        canonical, attrs.get("activation_alpha", []), attrs.get("activation_beta", [])
    )
    if len(resolved) != per_direction * num_directions:
        raise ModelError(
            f"{where}: activations lists {len(names)} functions; {op} with direction="
            f"{direction!r} needs {per_direction * num_directions}"
        )
    activations = tuple(
        tuple(resolved[d * per_direction : (d + 1) * per_direction]) for d in range(num_directions)
    )
    hidden_size = attrs.get("hidden_size")
    clip = attrs.get("clip")
    return RecurrentSpec(
        op=op,
        where=where,
        direction=direction,
        num_directions=num_directions,
        layout=layout,
        hidden_size=int(hidden_size) if hidden_size is not None else None,
        clip=float(clip) if clip is not None else None,
        activations=activations,
        input_forget=bool(attrs.get("input_forget", 0)),
        linear_before_reset=bool(attrs.get("linear_before_reset", 0)),
        outputs=tuple(node.output_values),
        present=frozenset(
            slot for slot, name in zip(INPUT_SLOTS[op], node.input_values, strict=False) if name
        ),
    )


def constant_inputs(node: OnnxNode, graph: OnnxScope) -> dict[str, Tensor]:
    """The node's inputs (other than X) known at conversion time, by slot name."""
    consts = {}
    for slot, name in zip(INPUT_SLOTS[node.operation_type], node.input_values, strict=False):
        if slot == "x" or not name:
            continue
        value = graph.constant(name)  # one tensor per constant, whatever its names
        if value is None:
            try:
                value = get_const_value(name, graph)
            except KeyError:
                continue
        if isinstance(value, torch.Tensor):
            consts[slot] = value
    return consts


def static_steps(node: OnnxNode, graph: OnnxGraph, layout: int) -> int | None:
    """The sequence length of X when the model's shapes fix it, else None."""
    info = graph.value_info.get(node.input_values[0])
    if info is None or not info.type.tensor_type.HasField("shape"):
        return None
    dims = info.type.tensor_type.shape.dim
    if len(dims) != 3 or not dims[layout].HasField("dim_value") or dims[layout].dim_value <= 0:
        return None
    return int(dims[layout].dim_value)


def fits_torch_kernels(spec: RecurrentSpec, consts: dict[str, Tensor], steps: int | None) -> bool:
    """Whether PyTorch's recurrent kernel computes this node exactly.

    True when: the default activations (RNN: Tanh or Relu, the same in both directions), no
    clip; LSTM without input_forget and with no peepholes (P absent or a constant of zeros);
    GRU with ``linear_before_reset=1``; ``sequence_lens`` absent, or a constant equal to the
    static sequence length for every batch entry.
    """
    names = {tuple(a.name for a in acts) for acts in spec.activations}
    if spec.op == "RNN":
        if names not in ({("Tanh",)}, {("Relu",)}):
            return False
    elif names != {DEFAULT_ACTIVATIONS[spec.op]}:
        return False
    if spec.clip is not None:
        return False
    if spec.op == "LSTM":
        if spec.input_forget:
            return False
        if "p" in spec.present and not ("p" in consts and not bool(consts["p"].any())):
            return False
    if spec.op == "GRU" and not spec.linear_before_reset:
        return False
    if "sequence_lens" in spec.present:
        lens = consts.get("sequence_lens")
        if lens is None or steps is None or not bool((lens == steps).all()):
            return False
    return True


class _OnnxRecurrent(nn.Module, OnnxToTorchModule):
    """What both recurrent modules share: constant inputs, layouts and the output tuple."""

    def __init__(self, spec: RecurrentSpec, consts: dict[str, Tensor], steps: int | None) -> None:
        super().__init__()
        self.spec = spec
        self.static_steps = steps
        hidden = spec.hidden_size
        if "r" in consts:
            if hidden is not None and consts["r"].shape[-1] != hidden:
                raise ModelError(
                    f"{spec.where}: hidden_size={hidden} but R has shape {tuple(consts['r'].shape)}"
                )
            hidden = int(consts["r"].shape[-1])
        for slot in ("w", "r"):
            if slot in consts and consts[slot].shape[0] != spec.num_directions:
                raise ModelError(
                    f"{spec.where}: direction={spec.direction!r} needs {slot.upper()} with "
                    f"{spec.num_directions} direction(s), got shape {tuple(consts[slot].shape)}"
                )
        self.hidden_size = hidden
        self.runtime_slots = tuple(
            slot for slot in INPUT_SLOTS[spec.op] if slot in spec.present and slot not in consts
        )
        for slot in ("initial_h", "initial_c"):
            if slot in consts:
                self.register_buffer(f"const_{slot}", consts[slot])

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor | None, ...]:
        """Run the node on its runtime inputs, given in ONNX input order (constants and omitted
        inputs left out; ``runtime_slots`` says which is which).

        Returns:
            One tensor when the node declares one output, else a tuple with one entry per
            declared output (None where the output is omitted).
        """
        given = dict(zip(self.runtime_slots, inputs, strict=True))
        return self._run(given["x"], given)

    def _run(self, x: Tensor, given: Mapping[str, Tensor]) -> Tensor | tuple[Tensor | None, ...]:
        """The node's outputs from X and the runtime inputs ``given`` by slot name."""
        raise NotImplementedError

    def _slot(self, slot: str, given: Mapping[str, Tensor]) -> Tensor | None:
        """An input's runtime value, else its constant, else None (omitted)."""
        runtime = given.get(slot)
        if runtime is not None:
            return runtime
        return getattr(self, f"const_{slot}", None)

    def _hidden(self, r: Tensor | None) -> int:
        return self.hidden_size if self.hidden_size is not None else r.shape[-1]

    def _initial_state(self, state: Tensor | None, x: Tensor, hidden: int) -> Tensor:
        """An initial state as ``[num_directions, batch, hidden]`` (zeros when omitted)."""
        if state is None:
            batch = x.shape[1] if self.spec.layout == 0 else x.shape[0]
            return x.new_zeros((self.spec.num_directions, batch, hidden))
        return state.transpose(0, 1).contiguous() if self.spec.layout == 1 else state

    def _outputs(
        self, y: Tensor | None, h: Tensor, c: Tensor | None
    ) -> Tensor | tuple[Tensor | None, ...]:
        """``(Y, Y_h, Y_c)`` as the node declares them; ``y`` is ``[T, D, B, H]`` and the states
        ``[D, B, H]``, both turned to the node's layout here."""
        if self.spec.layout == 1:
            y = y.permute(2, 0, 1, 3) if y is not None else None
            h = h.transpose(0, 1)
            c = c.transpose(0, 1) if c is not None else None
        values = (y, h, c)
        chosen = tuple(values[k] if name else None for k, name in enumerate(self.spec.outputs[:3]))
        return chosen[0] if len(chosen) == 1 else chosen


class OnnxRecurrentKernel(_OnnxRecurrent):
    """An ONNX recurrent node run as one ``torch.ops.chrion.lstm/gru/rnn`` call.

    ``derive(key, make)`` makes the converted weights (``OnnxScope.derive`` of the node's
    graph, so nodes on the same constants share them)."""

    def __init__(
        self,
        spec: RecurrentSpec,
        consts: dict[str, Tensor],
        steps: int | None,
        derive: Callable[[Hashable, Callable[[], Any]], Any],
    ) -> None:
        super().__init__(spec, consts, steps)
        ensure_loaded()  # the chrion:: kernels, built once per machine
        self.has_biases = "b" in spec.present
        self.n_params = 0
        if "w" in consts and "r" in consts and ("b" in consts or not self.has_biases):
            w, r, b = consts["w"], consts["r"], consts.get("b")
            params = derive(
                ("flat weights", spec.op, spec.num_directions, id(w), id(r), id(b)),
                lambda: torch_flat_weights(spec.op, w, r, b, spec.num_directions),
            )
            for k, param in enumerate(params):
                self.register_buffer(f"param_{k}", param)
            self.n_params = len(params)
        else:
            for slot in ("w", "r", "b"):
                if slot in consts:
                    self.register_buffer(f"const_{slot}", consts[slot])
        self.nonlinearity = spec.activations[0][0].name.lower()

    def _run(self, x: Tensor, given: Mapping[str, Tensor]) -> Tensor | tuple[Tensor | None, ...]:
        spec = self.spec
        # sequence_lens and P are not read: equal to the full length / zero, checked at conversion
        if self.n_params:
            params = [getattr(self, f"param_{k}") for k in range(self.n_params)]
            hidden = self.hidden_size
        else:
            r = self._slot("r", given)
            params = torch_flat_weights(
                spec.op, self._slot("w", given), r, self._slot("b", given), spec.num_directions
            )
            hidden = self._hidden(r)
        h0 = self._initial_state(self._slot("initial_h", given), x, hidden)
        flags = (
            self.has_biases,
            1,
            spec.num_directions == 2,
            spec.layout == 1,
            spec.direction == "reverse",
        )
        c_n = None
        if spec.op == "LSTM":
            c0 = self._initial_state(self._slot("initial_c", given), x, hidden)
            out, h_n, c_n = torch.ops.chrion.lstm(x, h0, c0, params, *flags)
        elif spec.op == "GRU":
            out, h_n = torch.ops.chrion.gru(x, h0, params, *flags)
        else:
            out, h_n = torch.ops.chrion.rnn(x, h0, params, *flags, self.nonlinearity)
        y = out.unflatten(-1, (spec.num_directions, hidden))  # [T, B, D, H] or [B, T, D, H]
        y = y.transpose(1, 2) if spec.layout == 0 else y.permute(1, 2, 0, 3)
        return self._outputs(y, h_n, c_n)


class OnnxRecurrentLoop(_OnnxRecurrent):
    """An ONNX recurrent node run as the spec's exact recurrence, one time step at a time."""

    def __init__(self, spec: RecurrentSpec, consts: dict[str, Tensor], steps: int | None) -> None:
        super().__init__(spec, consts, steps)
        if "sequence_lens" in consts:
            self.register_buffer("const_sequence_lens", consts["sequence_lens"])
        self.peepholes = "p" in spec.present
        self.cells = [spec.cell(d, self.peepholes) for d in range(spec.num_directions)]
        weight_slots = [slot for slot in WEIGHT_SLOTS if slot in spec.present]
        self.prepared = all(slot in consts for slot in weight_slots)
        self.n_weights = 0
        if self.prepared:  # constant weights: split and transpose once, here
            for d in range(spec.num_directions):
                weights = exact_cell_weights(
                    spec.op, consts["w"], consts["r"], consts.get("b"), consts.get("p"), d
                )
                for k, tensor in enumerate(weights):
                    self.register_buffer(f"dir{d}_{k}", tensor)
                self.n_weights = len(weights)
        else:
            for slot in weight_slots:
                if slot in consts:
                    self.register_buffer(f"const_{slot}", consts[slot])

    def _steps(self, length: int | torch.SymInt | object) -> int:
        """The static step count: the real length when tensors are concrete (eager, make_fx),
        else (torch.fx symbolic tracing) the length the model's shapes fix."""
        if isinstance(length, (int, torch.SymInt)):
            return int(length)
        if self.static_steps is None:
            raise ModelError(
                f"{self.spec.where}: the sequence length of X must be static to trace the "
                "exact recurrence symbolically (give X a fixed seq_length in the model)"
            )
        return self.static_steps

    def _run(self, x: Tensor, given: Mapping[str, Tensor]) -> Tensor | tuple[Tensor | None, ...]:
        spec = self.spec
        # prepared: every weight is a constant, split and transposed in __init__
        w, r, b, p = (None if self.prepared else self._slot(s, given) for s in ("w", "r", "b", "p"))
        hidden = self._hidden(r)
        h0 = self._initial_state(self._slot("initial_h", given), x, hidden)
        c0 = None
        if spec.op == "LSTM":
            c0 = self._initial_state(self._slot("initial_c", given), x, hidden)
        lens = self._slot("sequence_lens", given)
        x = x.transpose(0, 1) if spec.layout == 1 else x  # time-major from here on
        steps = self._steps(x.shape[0])
        want_sequence = bool(spec.outputs) and bool(spec.outputs[0])

        ys, hs, cs = [], [], []
        for d in range(spec.num_directions):
            if self.prepared:
                weights = [getattr(self, f"dir{d}_{k}") for k in range(self.n_weights)]
            else:
                weights = exact_cell_weights(spec.op, w, r, b, p, d)
            y, h, c = run_direction(
                self.cells[d],
                weights,
                x,
                h0[d],
                c0[d] if c0 is not None else None,
                lens,
                reverse=spec.direction == "reverse" or d == 1,
                steps=steps,
                want_sequence=want_sequence,
            )
            ys.append(y)
            hs.append(h)
            cs.append(c)
        y_all = torch.stack(ys, 1) if want_sequence else None  # [T, D, B, H]
        c_all = torch.stack(cs, 0) if c0 is not None else None
        return self._outputs(y_all, torch.stack(hs, 0), c_all)


def convert_recurrent(node: OnnxNode, graph: OnnxScope, opset: int) -> OperationConverterResult:
    """Convert one ONNX LSTM / GRU / RNN node (the converter registered for every opset).

    Args:
        node: the recurrent node.
        graph: its graph (for constant inputs and static shapes), the OnnxScope every
            converter gets (convert.py).
        opset: the operator version the converter was registered for (used in messages).

    Returns:
        The module and its mapping: constant inputs are held by the module, so the mapping
        passes only the inputs that vary at run time.

    Raises:
        UnsupportedOperatorError: an attribute value the spec does not define.
        ModelError: missing X/W/R, or shapes that contradict the attributes.
    """
    op = node.operation_type
    spec = parse_spec(node, opset)
    names = tuple(node.input_values)
    if len(names) < 3 or not all(names[:3]):
        raise ModelError(f"{spec.where}: inputs X, W and R are required, got {list(names)}")
    if len(names) > len(INPUT_SLOTS[op]):
        raise ModelError(
            f"{spec.where}: {len(names)} inputs; {op} takes at most {len(INPUT_SLOTS[op])}"
        )
    consts = constant_inputs(node, graph)
    steps = static_steps(node, graph, spec.layout)
    if fits_torch_kernels(spec, consts, steps):
        module = OnnxRecurrentKernel(spec, consts, steps, graph.derive)
    else:
        module = OnnxRecurrentLoop(spec, consts, steps)
    # Only runtime inputs travel: onnx2torch mistakes an empty input name for the node's own
    # omitted output ('' is registered as a node output), so no '' may appear here.
    slots = INPUT_SLOTS[op]
    inputs = [name for k, name in enumerate(names) if name and slots[k] in module.runtime_slots]
    return OperationConverterResult(
        torch_module=module,
        onnx_mapping=OnnxMapping(inputs=tuple(inputs), outputs=node.output_values),
    )


def _register() -> None:
    for op, versions in OPSET_VERSIONS.items():
        for version in versions:
            converter = functools.partial(convert_recurrent, opset=version)
            functools.update_wrapper(converter, convert_recurrent)
            register_converter(op, [version])(converter)


_register()
