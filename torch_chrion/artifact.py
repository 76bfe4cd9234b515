"""A deployable package: one directory holding everything a server needs to start without
capturing or profiling.

Layout (every file plain data; nothing is unpickled when it is read):

    manifest.json           format, model kind, inputs, outputs, batch axis, settings, the
                            machine identity it was made on, and one entry per shape
    model.onnx | model.pt2  the model: the ONNX file, or the torch.export program (chrion ops)
    graphs/N.json, N.pt     the captured aten graph of shape N (graph/serialize.py): JSON and a
                            tensor file read with torch.load(weights_only=True)
    plans/N.json            the plan of shape N's bucket
    profiles/N.json         the profile that plan was made from

``load_package`` rebuilds the captured graphs from graphs/ and uses the stored plans when the
machine matches the identity (torch and torch_chrion versions, CPU model and count, GPUs). On
another machine it profiles again, or with ``strict=True`` raises PackageMismatchError listing
every difference. Shapes not in the package are captured from the stored model on first use.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import ChrionError, ModelError, OptionError
from .module import ChrionModule, _bucket, _signature
from .settings import ChrionSettings

__all__ = ["PackageMismatchError", "PackagedModule", "load_package", "package"]

FORMAT = "torch_chrion.package/1"
MANIFEST = "manifest.json"
_log = logging.getLogger(__name__)


class PackageMismatchError(ChrionError, RuntimeError):
    """A package made on another machine, loaded with ``strict=True``; ``differences`` lists
    each field as (name, in the package, here)."""

    def __init__(self, message: str, differences: list[tuple[str, Any, Any]]) -> None:
        super().__init__(message)
        self.differences = differences


def machine_identity(devices: Sequence[str]) -> dict[str, Any]:
    """What profiles and plans depend on: versions, CPU model and count, GPUs used."""
    from . import __version__
    from .profile.devices import cpu_name

    gpus = sorted({int(d.partition(":")[2] or 0) for d in devices if d.startswith("cuda")})
    return {
        "torch": torch.__version__,
        "torch_chrion": __version__,
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpus": [
            torch.cuda.get_device_name(i) if i < torch.cuda.device_count() else None for i in gpus
        ],
    }


def _differences(stored: dict[str, Any], here: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    return [(k, stored.get(k), here.get(k)) for k in sorted(here) if stored.get(k) != here.get(k)]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ModelError(f"the package names an unknown dtype {name!r}")
    return dtype


def _settings_json(settings: ChrionSettings) -> dict[str, Any]:
    data = dataclasses.asdict(settings)
    data["cache_dir"] = None  # a path on the packaging machine means nothing elsewhere
    if data["devices"] is not None:
        data["devices"] = list(data["devices"])
    return data


def _input_sets(example_inputs: Sequence[Any], more_inputs: Sequence[Sequence[Any]]) -> list:
    sets = [tuple(example_inputs), *(tuple(s) for s in more_inputs)]
    for k, inputs in enumerate(sets):
        if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
            what = "example_inputs" if k == 0 else f"more_inputs[{k - 1}]"
            raise ModelError(f"{what} must be a non-empty sequence of tensors")
        if len(inputs) != len(sets[0]):
            raise ModelError(
                f"more_inputs[{k - 1}] has {len(inputs)} tensors; the model takes {len(sets[0])}"
            )
    return sets


def _with_batch(inputs: tuple, axis: int | None) -> tuple:
    """Inputs of batch size 2 where the example has 1: torch.export specialises a size-1
    dimension, and a served model must take batches."""
    if axis is None:
        return inputs
    return tuple(x.repeat_interleave(2, dim=axis) if x.shape[axis] == 1 else x for x in inputs)


def _export_torch(model: torch.nn.Module, example: tuple, batch_axis: int | None) -> Any:
    """The torch.export program of ``model`` calling the chrion recurrent ops, with every axis
    that the model lets vary left symbolic."""
    from .graph.recurrent_calls import RecurrentToChrion
    from .ops import ensure_loaded

    ensure_loaded()
    auto = torch.export.Dim.AUTO
    dynamic = tuple({d: auto for d in range(x.dim())} for x in example)
    try:
        with torch.no_grad(), RecurrentToChrion(), warnings.catch_warnings():
            # nn.LSTM re-assigns _flat_weights while traced; export warns about that attribute
            warnings.filterwarnings("ignore", message="The tensor attributes")
            return torch.export.export(
                model, _with_batch(example, batch_axis), dynamic_shapes=dynamic
            )
    except ChrionError:
        raise
    except Exception as exc:  # torch.export raises many types; all mean the same here
        raise ModelError(f"torch.export of {type(model).__name__} failed: {exc}") from exc


def _outputs_list(outputs: Any) -> list[torch.Tensor]:
    leaves = torch.utils._pytree.tree_leaves(outputs)
    if not all(isinstance(x, torch.Tensor) for x in leaves):
        raise ModelError("the model must return tensors (or tuples/lists of tensors)")
    return leaves


def package(
    model: torch.nn.Module | str | os.PathLike,
    example_inputs: Sequence[torch.Tensor],
    path: str | os.PathLike,
    *,
    more_inputs: Sequence[Sequence[torch.Tensor]] = (),
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    batch_axis: int | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Path:
    """Capture, profile and plan ``model``, and write everything a server needs to ``path``.

    Args:
        model: a PyTorch model (stored as its torch.export program, with the chrion recurrent
            ops) or the path of an ONNX file (stored as it is).
        example_inputs: the inputs of the first shape to plan for.
        path: the package directory to create.
        more_inputs: inputs of further shapes: each gets its captured graph and its bucket's
            plan in the package, so the server starts warm for them too.
        input_names, output_names: names of the tensors in the serving protocol; default the
            ONNX names, or the forward() parameter names and output_0, output_1, ...
        batch_axis: the axis along which every input and output is batched (e.g. 1 for
            time-major (T, N, F)); None means requests are never batched together.
        overwrite: replace an existing package at ``path``.
        **options: ChrionSettings fields (objective, slo_ms, devices, granularity, ...).

    Returns:
        The package directory. It is written to a temporary directory first and moved into
        place whole, so a failure leaves nothing half-written.
    """
    from . import graph, profile
    from .api import compile_onnx
    from .module import compile_graph, default_devices

    settings = ChrionSettings.from_options(options)
    target = Path(path)
    if target.exists() and not overwrite:
        raise OptionError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
    sets = _input_sets(example_inputs, more_inputs)
    if batch_axis is not None and not all(
        -x.dim() <= batch_axis < x.dim() for inputs in sets for x in inputs
    ):
        raise OptionError(f"batch_axis={batch_axis} is outside an input's dimensions")

    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent or "."))
    try:
        if isinstance(model, torch.nn.Module):
            model.eval()
            exported = _export_torch(model, sets[0], batch_axis)
            torch.export.save(exported, work / "model.pt2")
            source = exported.module()
            kind, model_file = "torch", "model.pt2"
            names = input_names or _forward_names(model, len(sets[0]))
            dynamic_axes = _exported_dynamic_axes(exported)
            module = compile_graph(source, sets[0], settings)
            default_outputs = None
        else:
            from . import onnx as chrion_onnx

            proto = chrion_onnx.load_model(model)
            shutil.copyfile(model, work / "model.onnx")
            initializers = {i.name for i in proto.graph.initializer}
            names = input_names or [v.name for v in proto.graph.input if v.name not in initializers]
            default_outputs = [v.name for v in proto.graph.output]
            dynamic_axes = [
                [
                    a
                    for a, d in enumerate(v.type.tensor_type.shape.dim)
                    if not d.HasField("dim_value")
                ]
                for v in proto.graph.input
                if v.name not in initializers
            ]
            kind, model_file = "onnx", "model.onnx"
            module = compile_onnx(proto, sets[0], settings)
            source = module.model
        if len(names) != len(sets[0]):
            raise OptionError(f"{len(names)} input names for {len(sets[0])} inputs")
        settings = module.settings  # "auto" granularity resolved: the package records the split
        devices = list(settings.devices or default_devices())
        shapes = []
        # each set's bucket gets its own profiled plan (a first call would borrow a neighbour's)
        module.warmup([[list(x.shape) for x in inputs] for inputs in sets[1:]])
        for k, inputs in enumerate(sets):
            with torch.no_grad():
                outputs = _outputs_list(module(*inputs))
            gm = graph.capture(
                source,
                inputs,
                granularity=settings.granularity,
                seq_chunks=settings.seq_chunks,
                recurrent_dtype=settings.recurrent_dtype,
            )
            bucket = _bucket(_signature(inputs))
            plan = module.plans[bucket]
            prof = profile.profile_graph(
                gm, inputs, devices, settings=settings, cache_dir=settings.cache_dir
            )
            for folder in ("graphs", "plans", "profiles"):
                (work / folder).mkdir(exist_ok=True)
            graph.save_graph(gm, work / f"graphs/{k}.json", work / f"graphs/{k}.pt")
            plan.save(work / f"plans/{k}.json")
            prof.save(work / f"profiles/{k}.json")
            shapes.append(
                {
                    "shapes": [list(x.shape) for x in inputs],
                    "dtypes": [_dtype_name(x.dtype) for x in inputs],
                    "graph": f"graphs/{k}.json",
                    "tensors": f"graphs/{k}.pt",
                    "plan": f"plans/{k}.json",
                    "profile": f"profiles/{k}.json",
                }
            )
            if k == 0:
                first_outputs = outputs
        outs = output_names or default_outputs or [f"output_{i}" for i in range(len(first_outputs))]
        if len(outs) != len(first_outputs):
            raise OptionError(f"{len(outs)} output names for {len(first_outputs)} outputs")
        manifest = {
            "format": FORMAT,
            "kind": kind,
            "model": model_file,
            "inputs": [
                {
                    "name": n,
                    "dtype": _dtype_name(x.dtype),
                    "shape": list(x.shape),
                    "dynamic_axes": axes,
                }
                for n, x, axes in zip(names, sets[0], dynamic_axes, strict=True)
            ],
            "outputs": [
                {"name": n, "dtype": _dtype_name(y.dtype), "shape": list(y.shape)}
                for n, y in zip(outs, first_outputs, strict=True)
            ],
            "batch_axis": batch_axis,
            "settings": _settings_json(settings),
            "identity": machine_identity(devices),
            "entries": shapes,
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if target.exists():
            shutil.rmtree(target)
        work.chmod(0o755)  # mkdtemp made it private
        work.rename(target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target


def _exported_dynamic_axes(exported: Any) -> list[list[int]]:
    """Per user input of a torch.export program, the axes it left symbolic (any size)."""
    from torch.fx.experimental.symbolic_shapes import is_concrete_int

    user = set(exported.graph_signature.user_inputs)
    return [
        [a for a, d in enumerate(node.meta["val"].shape) if not is_concrete_int(d)]
        for node in exported.graph.nodes
        if node.op == "placeholder" and node.name in user
    ]


def _forward_names(model: torch.nn.Module, count: int) -> list[str]:
    import inspect

    params = [
        p.name
        for p in inspect.signature(model.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return params[:count] if len(params) >= count else [f"input_{i}" for i in range(count)]


class PackagedModule(ChrionModule):
    """A ChrionModule started from a package: its captured graphs are read from the package,
    its plans are the package's when the machine matches. Shapes that are not in the package
    are captured from the packaged model on first use (loaded then, not before).

    Attributes:
        manifest: the package's manifest (inputs, outputs, batch_axis, settings, identity).
        differences: (field, packaged, here) for each identity field that differs.
    """

    def __init__(
        self,
        root: Path,
        manifest: dict[str, Any],
        graphs: dict[tuple, Any],
        plans: dict[tuple, Any],
        differences: list[tuple[str, Any, Any]],
        settings: ChrionSettings,
    ) -> None:
        self._root = root
        self._graphs = graphs
        self._packaged_plans = plans
        first = manifest["entries"][0]
        example = tuple(
            torch.zeros(shape, dtype=_dtype(dtype))
            for shape, dtype in zip(first["shapes"], first["dtypes"], strict=True)
        )
        self.manifest = manifest
        self.differences = differences
        super().__init__(torch.nn.Identity(), example, settings)
        self._source: torch.nn.Module | None = None

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.manifest["inputs"]]

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.manifest["outputs"]]

    @property
    def batch_axis(self) -> int | None:
        return self.manifest["batch_axis"]

    def _capture(self, signature: tuple, inputs: Sequence[Any]) -> torch.fx.GraphModule:
        stored = self._graphs.get(signature)
        if stored is not None:
            return stored
        if getattr(self, "_source", None) is None:
            _log.info("shape %s is not in the package: loading the model to capture it", signature)
            self._source = self._load_source()
            self.model = self._source
        return super()._capture(signature, inputs)

    def _load_source(self) -> torch.nn.Module:
        path = self._root / self.manifest["model"]
        if self.manifest["kind"] == "onnx":
            from . import onnx as chrion_onnx

            return chrion_onnx.to_fx(chrion_onnx.load_model(path))
        from .ops import ensure_loaded

        ensure_loaded()  # the program calls chrion ops: register them before loading it
        return torch.export.load(path).module()

    def _reusable_plan(self, bucket: tuple, gm: Any, shared: Any | None) -> Any | None:
        from .errors import PlanError

        plan = self._packaged_plans.get(bucket)
        if plan is not None:
            try:
                plan.validate(gm)
                return plan
            except PlanError:
                _log.warning("the package's plan for bucket %s does not fit; re-planning", bucket)
        return super()._reusable_plan(bucket, gm, shared)


def load_package(
    path: str | os.PathLike, *, strict: bool = False, cache_dir: str | None = None
) -> PackagedModule:
    """Start a model from a package written by ``package`` (or ``chrion package``).

    On the machine it was made on (same identity), no capture and no profiling run. Elsewhere
    its plans are not used: each shape is profiled and planned again here, unless ``strict``.

    Raises:
        ModelError: not a package, or a damaged one (naming the file).
        PackageMismatchError: ``strict`` and the machine differs; lists each difference.
    """
    from .graph.serialize import load_graph
    from .schedule.plan import Plan

    root = Path(path)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{root} is not a torch_chrion package: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelError(f"{root / MANIFEST} is not a {FORMAT} manifest")
    settings = ChrionSettings.from_options(manifest["settings"], cache_dir=cache_dir)
    from .module import default_devices

    devices = list(settings.devices or default_devices())
    differences = _differences(manifest["identity"], machine_identity(devices))
    if differences and strict:
        listed = "; ".join(f"{k}: {a!r} in the package, {b!r} here" for k, a, b in differences)
        raise PackageMismatchError(
            f"{root} was made on another machine ({listed}); load it without strict=True to "
            "profile and plan again here",
            differences,
        )
    if differences:
        _log.warning("%s was made on another machine: profiling again (%s)", root, differences)
    graphs, plans = {}, {}
    for entry in manifest["entries"]:
        signature = tuple(
            (tuple(shape), _dtype(dtype))
            for shape, dtype in zip(entry["shapes"], entry["dtypes"], strict=True)
        )
        graphs[signature] = load_graph(root / entry["graph"], root / entry["tensors"])
        if not differences:
            plans[_bucket(signature)] = Plan.load(root / entry["plan"])
    return PackagedModule(root, manifest, graphs, plans, differences, settings)
