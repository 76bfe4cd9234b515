"""The ``chrion`` command line: profile, plan, run, bench, show, package, serve, demo.

Every ChrionSettings option is a flag (generated from its fields and docstring, so the two
cannot drift); every error is one line on stderr and a non-zero exit: 2 for a bad input, file
or option, 1 for anything unexpected (``chrion --traceback ...`` shows where).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .errors import ChrionError, OptionError
from .settings import OPTION_CHOICES, ChrionSettings, option_docs

# settings that only planning reads: `chrion profile` has no such flags
_PLANNING_ONLY = ("objective", "slo_ms", "strict")


def _shapes(values: list[str] | None) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for value in values or []:
        name, _, dims = value.partition("=")
        try:
            shape = [int(d) for d in dims.split(",")]
        except ValueError:
            raise OptionError(f"--shape wants NAME=D0,D1,... (integers), got {value!r}") from None
        if name in shapes:
            raise OptionError(f"--shape gives input {name!r} twice ({value!r}); give it once")
        shapes[name] = shape
    return shapes


def _example_inputs(proto: Any, shapes: dict[str, list[int]]) -> tuple:
    from .api import example_inputs_for

    return example_inputs_for(proto, shapes)


def _model_inputs(proto: Any, args: argparse.Namespace) -> tuple:
    """The inputs of ``run --input FILE``, else example inputs of the ``--shape`` shapes."""
    source = getattr(args, "input", None)
    if source is None:
        return _example_inputs(proto, _shapes(args.shape))
    if args.shape:
        raise OptionError("--input gives the input shapes: drop --shape")
    return _inputs_from_file(proto, Path(source))


def _inputs_from_file(proto: Any, path: Path) -> tuple:
    """The model's inputs from a .npy (a one-input model) or a .npz (arrays by input name)."""
    import numpy as np
    import torch

    from .api import check_shape
    from .inputs import declared_onnx_inputs

    declared = declared_onnx_inputs(proto).specs
    names = [spec.name for spec in declared]
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise OptionError(f"--input {path}: not a readable .npy or .npz file: {exc}") from exc
    if isinstance(loaded, np.ndarray):
        if len(names) != 1:
            raise OptionError(
                f"--input {path} holds one array; the model takes inputs {names}: give an .npz "
                "with one array per input name"
            )
        arrays = {names[0]: loaded}
    else:
        with loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    if sorted(arrays) != sorted(names):
        raise OptionError(
            f"--input {path} holds arrays {sorted(arrays)}; the model's inputs are {names}"
        )
    inputs = []
    for spec in declared:
        tensor = torch.from_numpy(np.ascontiguousarray(arrays[spec.name]))
        if spec.dtype is not None and tensor.dtype != spec.dtype:
            raise OptionError(
                f"--input {path}: input {spec.name!r} is declared {spec.dtype}, the array is "
                f"{arrays[spec.name].dtype}"
            )
        check_shape(spec.name, spec.dims, list(tensor.shape))
        inputs.append(tensor)
    return tuple(inputs)


def _settings(args: argparse.Namespace) -> ChrionSettings:
    return ChrionSettings.from_options(
        {
            f.name: getattr(args, f.name)
            for f in dataclasses.fields(ChrionSettings)
            if getattr(args, f.name, None) is not None
        }
    )


def _load(args: argparse.Namespace, plan: str | None = None) -> Any:
    from . import onnx as chrion_onnx
    from .api import compile_onnx

    proto = chrion_onnx.load_model(args.model)
    inputs = _model_inputs(proto, args)
    module = compile_onnx(
        proto, inputs, _settings(args), plan=plan, recorded_profile=getattr(args, "profile", None)
    )
    buckets = getattr(args, "buckets", None)
    if buckets:  # each --buckets gives one more set of input shapes, prepared now
        shapes = _shapes(args.shape)
        sets = []
        for value in buckets:
            extra = _shapes([value])
            named = {**shapes, **extra}
            sets.append([list(x.shape) for x in _example_inputs(proto, named)])
        module.warmup(sets)
        print(f"prepared {len(sets)} more shape bucket(s): {sorted(map(str, module.plans))}")
    return module, inputs


def _cmd_profile(args: argparse.Namespace) -> int:
    from . import graph
    from . import onnx as chrion_onnx
    from .module import default_devices
    from .profile import profile_graph

    proto = chrion_onnx.load_model(args.model)
    inputs = _model_inputs(proto, args)
    settings = _settings(args)
    settings = settings.resolve_granularity(settings.devices or default_devices())
    gm = graph.capture(
        chrion_onnx.to_fx(proto),
        inputs,
        granularity=settings.granularity,
        seq_chunks=settings.seq_chunks,
        recurrent_dtype=settings.recurrent_dtype,
    )
    profile = profile_graph(
        gm,
        inputs,
        list(settings.devices or default_devices()),
        settings=settings,
        cache_dir=settings.cache_dir,
    )
    profile.save(args.output)
    print(
        f"profile of {len(profile.node_ms)} nodes on {', '.join(profile.devices)} -> {args.output}"
    )
    return 0


def _print_python_nodes(module: Any) -> None:
    if module.python_nodes:
        names = ", ".join(module.python_nodes)
        print(f"{len(module.python_nodes)} node(s) run as Python under the GIL: {names}")


def _cmd_plan(args: argparse.Namespace) -> int:
    module, _ = _load(args)
    module.plan.save(args.output)
    print(module.plan.table())
    _print_python_nodes(module)
    print(f"plan -> {args.output}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .bench_peers import time_ms

    module, inputs = _load(args, plan=args.plan)
    _print_python_nodes(module)
    module.enable_trace(bool(args.trace))
    with torch.no_grad():
        outputs = module(*inputs)
    flat = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    for i, out in enumerate(flat):
        print(
            f"output {i}: shape {tuple(out.shape)} {out.dtype}, mean {out.float().mean().item():.6g}"
        )
    uses_cuda = any(d.startswith("cuda") for d in module.devices)
    latency = time_ms(module, inputs, args.repeats, sync_cuda=uses_cuda)
    print(f"latency: {latency:.3f} ms (median of {args.repeats})")
    if args.trace:
        from .runtime.trace import record_memory

        # one more traced call, under torch.profiler: the trace then carries the memory
        with torch.no_grad():
            memory = record_memory(lambda: module(*inputs), module.last_trace)
        module.save_trace(args.trace, memory)
        print(f"trace -> {args.trace}")
    if args.output:
        np.savez(args.output, *[o.detach().cpu().numpy() for o in flat])
        print(f"outputs -> {args.output}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench_peers import run_peers

    rows = run_peers(args.model, _shapes(args.shape), _settings(args), repeats=args.repeats)
    width = max(len(r[0]) for r in rows)
    # the ratio is each engine's latency over chrion's: above 1, chrion is that many times faster
    print(f"{'engine':<{width}}  latency (ms)  latency / chrion's (>1: chrion faster)")
    chrion_ms = rows[0][1]
    for name, ms, note in rows:
        ratio = (
            f"{ms / chrion_ms:6.2f}x"
            if isinstance(ms, float) and isinstance(chrion_ms, float)
            else ""
        )
        value = f"{ms:12.3f}" if isinstance(ms, float) else f"{'-':>12}"
        print(f"{name:<{width}}  {value}  {ratio} {note}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from .schedule import Plan

    plan = Plan.load(args.plan)
    print(plan.table())
    if args.gantt:
        from .runtime.trace import load_chrome_trace, load_memory

        measured = load_chrome_trace(args.measured) if args.measured else None
        memory = load_memory(args.measured) if args.measured else None
        plan.gantt(args.gantt, measured=measured, measured_memory=memory)
        print(f"gantt -> {args.gantt}")
    if args.trace:
        from .runtime.trace import TraceEvent, save_chrome_trace

        ops = plan.ops or {}
        events = [
            TraceEvent(
                node,
                ops.get(node, "predicted"),
                lane,
                0,
                plan.start_ms[node] * 1e3,
                plan.finish_ms[node] * 1e3,
            )
            for node in plan.placement
            for lane in plan.lanes_of(node)  # a wide node on every lane it holds
        ]
        save_chrome_trace(events, list(plan.devices), args.trace)
        print(f"predicted timeline trace -> {args.trace}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(frames=args.frames)


def _cmd_package(args: argparse.Namespace) -> int:
    from . import onnx as chrion_onnx
    from .artifact import package

    proto = chrion_onnx.load_model(args.model)
    example = _example_inputs(proto, _shapes(args.shape))
    base = _shapes(args.shape)
    more = [
        _example_inputs(proto, {**base, **_shapes(group.split(";"))}) for group in args.more or []
    ]
    settings = _settings(args)
    options = {
        f.name: getattr(settings, f.name)
        for f in dataclasses.fields(settings)
        if getattr(settings, f.name) != f.default
    }
    path = package(
        args.model,
        example,
        args.output,
        more_inputs=more,
        batch_axis=args.batch_axis,
        overwrite=args.overwrite,
        **options,
    )
    print(f"package of {args.model} ({1 + len(more)} shape(s)) -> {path}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    try:
        from .serve import create_app, load_served
    except ImportError as exc:
        raise OptionError(
            f"chrion serve needs the serve extra (pip install 'torch_chrion[serve]'): {exc}"
        ) from exc
    name = args.name or Path(args.path).stem
    options = {"strict": True} if args.strict else {}
    if not Path(args.path).is_dir():
        options.update(shapes=_shapes(args.shape), batch_axis=args.batch_axis)
    # what the app does with requests, the same on Ray and embedded
    app_options = {
        "name": name,
        "max_batch": args.max_batch,
        "batch_timeout_ms": args.batch_timeout_ms,
        "max_body_mb": args.max_body_mb,
        "slo_ms": args.slo_ms,
    }
    if args.ray_num_cpus is not None and (not args.ray or args.ray_address):
        raise OptionError(
            "--ray-num-cpus sizes the local Ray instance: give it with --ray and "
            "without --ray-address"
        )
    if args.ray:
        from .serve.ray_app import run_on_ray

        return run_on_ray(
            args.path,
            host=args.host,
            port=args.port,
            replicas=args.replicas,
            address=args.ray_address,
            num_cpus=args.ray_num_cpus,
            **app_options,
            **options,
        )
    from .serve.server import serve

    model = load_served(args.path, **options)
    app = create_app(model, workers=args.workers, **app_options)
    serve(app, host=args.host, port=args.port, name=name)
    return 0


def _buckets_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--buckets",
        action="append",
        metavar="NAME=D0,D1,...",
        help="one more input shape whose bucket is profiled and planned up front (inputs not "
        "named keep --shape); repeatable",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"wants a positive integer, got {text!r}")
    return value


def _setting_flags(parser: argparse.ArgumentParser, planning: bool) -> None:
    """One flag per ChrionSettings field (``--slo-ms`` for ``slo_ms``), typed from the field and
    documented from its docstring; an absent flag leaves the setting's default."""
    docs = option_docs()
    for field in dataclasses.fields(ChrionSettings):
        if not planning and field.name in _PLANNING_ONLY:
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = str(field.type)
        doc = docs[field.name].replace("%", "%%")
        if field.default is not None:
            doc += f" (default: {field.default})"
        if kind == "bool":  # --no-<flag> turns off a setting that is on by default
            action = argparse.BooleanOptionalAction if field.default else "store_true"
            parser.add_argument(flag, action=action, default=None, help=doc)
        elif kind.startswith("tuple"):
            parser.add_argument(flag, nargs="+", metavar="LANE", help=doc)
        else:
            convert = int if kind.startswith("int") else float if kind.startswith("float") else str
            parser.add_argument(
                flag, type=convert, choices=OPTION_CHOICES.get(field.name), help=doc
            )


def _model_options(parser: argparse.ArgumentParser, planning: bool = True) -> None:
    parser.add_argument("model", help="path of the ONNX model")
    parser.add_argument(
        "--shape",
        action="append",
        metavar="NAME=D0,D1,...",
        help="shape of an input (needed for symbolic dimensions); once per input",
    )
    _setting_flags(parser, planning)
    if planning:
        parser.add_argument(
            "--profile", help="a profile recorded with `chrion profile` on the target machine"
        )


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (the usage is a --help away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="chrion", description="Serve recurrent models on the host CPU and the GPU at once."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--traceback", action="store_true", help="show the traceback of an unexpected error"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "profile", help="measure every operator on every lane; save the profile"
    )
    _model_options(p, planning=False)
    p.add_argument("-o", "--output", required=True, help="profile JSON to write")
    p.set_defaults(run=_cmd_profile)

    p = commands.add_parser("plan", help="place the model's operators; save the plan")
    _model_options(p)
    _buckets_option(p)
    p.add_argument("-o", "--output", required=True, help="plan JSON to write")
    p.set_defaults(run=_cmd_plan)

    p = commands.add_parser("run", help="run the model once on example inputs and time it")
    _model_options(p)
    _buckets_option(p)
    p.add_argument("--plan", help="a saved plan: skips profiling and scheduling")
    p.add_argument(
        "--input",
        metavar="FILE",
        help="run on this data instead of random inputs: a .npy for a one-input model, or a .npz"
        " with one array per input name",
    )
    p.add_argument("--repeats", type=_positive_int, default=20, help="timed runs (default 20)")
    p.add_argument("--trace", help="write a Chrome/Perfetto trace of one run here")
    p.add_argument("--output", help="write the outputs here (.npz)")
    p.set_defaults(run=_cmd_run)

    p = commands.add_parser("bench", help="chrion against eager CPU/GPU, inductor and onnxruntime")
    _model_options(p)
    p.add_argument(
        "--repeats", type=_positive_int, default=20, help="timed runs per engine (default 20)"
    )
    p.set_defaults(run=_cmd_bench)

    p = commands.add_parser("show", help="print a saved plan; draw its timeline")
    p.add_argument("plan", help="plan JSON")
    p.add_argument("--gantt", help="write the CPU/GPU timeline as a PNG here")
    p.add_argument(
        "--measured",
        help="a trace written by `chrion run --trace`: the gantt draws it (steps, copies, "
        "memory) under the prediction",
    )
    p.add_argument("--trace", help="write the predicted timeline as Chrome/Perfetto JSON here")
    p.set_defaults(run=_cmd_show)

    p = commands.add_parser(
        "package",
        help="write a deployable package (model, graphs, plans, profiles) of an ONNX file",
    )
    _model_options(p)
    p.add_argument("-o", "--output", required=True, help="package directory to write")
    p.add_argument(
        "--more",
        action="append",
        metavar="NAME=D0,...[;NAME=...]",
        help="one more input shape to plan and store (inputs not named keep --shape); repeatable",
    )
    p.add_argument(
        "--batch-axis", type=int, help="axis requests are batched along (e.g. 1 for T,N,F)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing package")
    p.set_defaults(run=_cmd_package)

    p = commands.add_parser(
        "serve", help="serve a package or ONNX file over the Open Inference Protocol (KServe v2)"
    )
    p.add_argument("path", help="a package directory (chrion package) or an ONNX file")
    p.add_argument("--name", help="model name in the URLs (default: the file's stem)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--max-batch", type=int, default=8, help="most requests per batch (default 8)")
    p.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=2.0,
        help="longest wait to fill a batch (default 2)",
    )
    p.add_argument(
        "--max-body-mb", type=float, default=16.0, help="largest request body (default 16)"
    )
    p.add_argument("--slo-ms", type=float, help="latency SLO for /metrics (default: the plan's)")
    p.add_argument("--workers", type=int, default=2, help="batches run at once (default 2)")
    p.add_argument("--strict", action="store_true", help="refuse a package made on another machine")
    p.add_argument("--shape", action="append", metavar="NAME=D0,D1,...", help="ONNX input shape")
    p.add_argument("--batch-axis", type=int, help="ONNX files: axis requests are batched along")
    p.add_argument("--ray", action="store_true", help="serve on Ray Serve instead of one process")
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (default 1)")
    p.add_argument("--ray-address", help="an existing Ray cluster (default: start a local one)")
    p.add_argument(
        "--ray-num-cpus",
        type=_positive_int,
        help="logical CPUs of the local Ray instance (default: the machine's); each replica asks "
        "for its plan's CPU lanes",
    )
    p.set_defaults(run=_cmd_serve)

    p = commands.add_parser(
        "demo", help="a bundled speech model end to end: load, plan, run, compare"
    )
    p.add_argument(
        "--frames", type=_positive_int, default=64, help="input length in frames (default 64)"
    )
    p.set_defaults(run=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ChrionError, OSError) as exc:
        print(f"chrion {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: still one line, unless asked for the traceback
        if args.traceback:
            traceback.print_exc()
        else:
            print(
                f"chrion {args.command}: unexpected {type(exc).__name__}: {_one_line(exc)} "
                "(chrion --traceback ... shows where)",
                file=sys.stderr,
            )
        return 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
