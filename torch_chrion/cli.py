"""The ``chrion`` command line: profile, plan, run, bench, show, demo."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .errors import ChrionError, OptionError


def _shapes(values: list[str] | None) -> dict[str, list[int]]:
    shapes = {}
    for value in values or []:
        name, _, dims = value.partition("=")
        try:
            shapes[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise OptionError(f"--shape wants NAME=D0,D1,... (integers), got {value!r}") from None
    return shapes


def _example_inputs(proto: Any, shapes: dict[str, list[int]]) -> tuple:
    from .api import example_inputs_for

    return example_inputs_for(proto, shapes)


def _settings(args: argparse.Namespace) -> Any:
    from .settings import ChrionSettings

    return ChrionSettings.from_options(
        {},
        objective=getattr(args, "objective", None),
        slo_ms=getattr(args, "slo_ms", None),
        devices=tuple(args.devices) if getattr(args, "devices", None) else None,
        granularity=getattr(args, "granularity", None),
        seq_chunks=getattr(args, "seq_chunks", None),
        cache_dir=getattr(args, "cache_dir", None),
        strict=getattr(args, "strict", None) or None,
    )


def _load(args: argparse.Namespace, plan: str | None = None) -> Any:
    from . import onnx as chrion_onnx
    from .api import compile_onnx

    proto = chrion_onnx.load_model(args.model)
    inputs = _example_inputs(proto, _shapes(args.shape))
    module = compile_onnx(
        proto, inputs, _settings(args), plan=plan, recorded_profile=getattr(args, "profile", None)
    )
    return module, inputs


def _cmd_profile(args: argparse.Namespace) -> int:
    from . import graph
    from . import onnx as chrion_onnx
    from .module import default_devices
    from .profile import profile_graph

    proto = chrion_onnx.load_model(args.model)
    inputs = _example_inputs(proto, _shapes(args.shape))
    settings = _settings(args)
    gm = graph.capture(
        chrion_onnx.to_fx(proto),
        inputs,
        granularity=settings.granularity,
        seq_chunks=settings.seq_chunks,
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
        module.save_trace(args.trace)
        print(f"trace -> {args.trace}")
    if args.output:
        np.savez(args.output, *[o.detach().cpu().numpy() for o in flat])
        print(f"outputs -> {args.output}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench_peers import run_peers

    rows = run_peers(args.model, _shapes(args.shape), _settings(args), repeats=args.repeats)
    width = max(len(r[0]) for r in rows)
    print(f"{'engine':<{width}}  latency (ms)  vs chrion")
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
        plan.gantt(args.gantt)
        print(f"gantt -> {args.gantt}")
    if args.trace:
        from .runtime.trace import TraceEvent, save_chrome_trace

        events = [
            TraceEvent(
                node, "predicted", lane, 0, plan.start_ms[node] * 1e3, plan.finish_ms[node] * 1e3
            )
            for node, lane in plan.placement.items()
        ]
        save_chrome_trace(events, list(plan.devices), args.trace)
        print(f"predicted timeline trace -> {args.trace}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(frames=args.frames)


def _model_options(parser: argparse.ArgumentParser, planning: bool = True) -> None:
    parser.add_argument("model", help="path of the ONNX model")
    parser.add_argument(
        "--shape",
        action="append",
        metavar="NAME=D0,D1,...",
        help="shape of an input (needed for symbolic dimensions); repeatable",
    )
    parser.add_argument(
        "--devices",
        nargs="+",
        metavar="LANE",
        help="lanes such as cpu cuda:0 or cpu:0 cpu:1 (default: cpu and cuda:0 if present)",
    )
    parser.add_argument(
        "--granularity", choices=("op", "layer"), help="split recurrent layers (default layer)"
    )
    parser.add_argument("--seq-chunks", type=int, help="also split sequences into this many chunks")
    parser.add_argument("--cache-dir", help="where profiles are cached")
    if planning:
        parser.add_argument("--objective", choices=("latency", "memory"), help="default latency")
        parser.add_argument("--slo-ms", type=float, help="latency SLO in milliseconds")
        parser.add_argument("--strict", action="store_true", help="fail when no plan meets the SLO")
        parser.add_argument(
            "--profile", help="a profile recorded with `chrion profile` on the target machine"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chrion", description="Serve recurrent models on the host CPU and the GPU at once."
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
    p.add_argument("-o", "--output", required=True, help="plan JSON to write")
    p.set_defaults(run=_cmd_plan)

    p = commands.add_parser("run", help="run the model once on example inputs and time it")
    _model_options(p)
    p.add_argument("--plan", help="a saved plan: skips profiling and scheduling")
    p.add_argument("--repeats", type=int, default=20, help="timed runs (default 20)")
    p.add_argument("--trace", help="write a Chrome/Perfetto trace of one run here")
    p.add_argument("--output", help="write the outputs here (.npz)")
    p.set_defaults(run=_cmd_run)

    p = commands.add_parser("bench", help="chrion against eager CPU/GPU, inductor and onnxruntime")
    _model_options(p)
    p.add_argument("--repeats", type=int, default=20, help="timed runs per engine (default 20)")
    p.set_defaults(run=_cmd_bench)

    p = commands.add_parser("show", help="print a saved plan; draw its timeline")
    p.add_argument("plan", help="plan JSON")
    p.add_argument("--gantt", help="write the CPU/GPU timeline as a PNG here")
    p.add_argument("--trace", help="write the predicted timeline as Chrome/Perfetto JSON here")
    p.set_defaults(run=_cmd_show)

    p = commands.add_parser(
        "demo", help="a bundled speech model end to end: load, plan, run, compare"
    )
    p.add_argument("--frames", type=int, default=64, help="input length in frames (default 64)")
    p.set_defaults(run=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ChrionError as exc:
        print(f"chrion {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, FileNotFoundError) as exc:
        print(f"chrion {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
