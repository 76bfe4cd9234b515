"""Loopback load test of `chrion serve` against onnxruntime behind the same HTTP layer.

Both servers run the same v2 app (torch_chrion.serve.create_app: same protocol code, same
adaptive batching, same uvicorn), each in its own process; only the model call differs: the
torch_chrion package, or an onnxruntime session on the same ONNX file. A fixed number of
requests is sent at concurrency 1, 4 and 16 (binary tensors, asyncio clients on keep-alive
connections), lengths drawn
from a fixed-seed list; the two servers are loaded in alternating rounds, never at once.

Model: 2-layer bidirectional LSTM (40 features, hidden 96) + linear head, time-major (T, N, 40).
Lengths: 40-60 frames in steps of 5. Recurrent results depend on padding, so requests are
batched only with requests of the same length (padded by whole rows to a power-of-two batch);
the package holds every (length, batch) shape the server can build, so none is captured or
planned while timed.

    python bench/serve_load.py [--requests 200] [--rounds 2] [--write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULT = ROOT / "bench" / "results" / "serve_load.md"
LENGTHS = (40, 45, 50, 55, 60)
BATCHES = (1, 2, 4, 8, 16)
CONCURRENCY = (1, 4, 16)
SLO_MS = 25.0
# onnxruntime peers: its default intra-op threads (all cores), and one thread per run (two runs
# at once with --workers 2, as torch_chrion's two one-thread lanes)
PEERS = {"onnxruntime": "0", "onnxruntime (1 thread)": "1"}
SERVER_FLAGS = ["--max-batch", "16", "--batch-timeout-ms", "2", "--workers", "2"]


def build(folder: Path) -> tuple[Path, Path]:
    import torch
    from torch import nn

    import torch_chrion

    class BiLSTM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(40, 96, num_layers=2, bidirectional=True)
            self.head = nn.Linear(192, 10)

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            y, _ = self.lstm(features)
            return self.head(y).log_softmax(-1)

    torch.manual_seed(0)
    net = BiLSTM().eval()
    onnx_path = folder / "bilstm.onnx"
    axes = {0: "time", 1: "batch"}
    torch.onnx.export(
        net,
        (torch.randn(50, 1, 40),),
        str(onnx_path),
        dynamo=False,
        opset_version=17,
        input_names=["features"],
        output_names=["log_probs"],
        dynamic_axes={"features": axes, "log_probs": axes},
    )
    shapes = [(torch.randn(t, b, 40),) for t in LENGTHS for b in BATCHES]
    package = torch_chrion.package(
        str(onnx_path),
        shapes[0],
        folder / "bilstm",
        more_inputs=shapes[1:],
        batch_axis=1,
        slo_ms=SLO_MS,
    )
    return onnx_path, package


def ort_server(onnx_path: str, port: int, threads: int) -> None:
    """The onnxruntime peer: the same app over an onnxruntime session (threads 0: its default)."""
    import onnxruntime as ort
    import torch

    from torch_chrion.serve import ServedModel, TensorSpec, create_app
    from torch_chrion.serve.server import serve

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])

    def call(features: torch.Tensor) -> torch.Tensor:
        (y,) = session.run(None, {"features": features.numpy()})
        return torch.from_numpy(y)

    f32 = np.dtype(np.float32)
    model = ServedModel(
        call,
        [TensorSpec("features", f32, (None, None, 40))],
        [TensorSpec("log_probs", f32, (None, None, 10))],
        batch_axis=1,
        warmup_inputs=[(np.zeros((t, b, 40), np.float32),) for t in LENGTHS for b in BATCHES],
        slo_ms=SLO_MS,
    )
    flags = dict(zip(SERVER_FLAGS[::2], SERVER_FLAGS[1::2], strict=True))
    app = create_app(
        model,
        name="bilstm",
        max_batch=int(flags["--max-batch"]),
        batch_timeout_ms=float(flags["--batch-timeout-ms"]),
        workers=int(flags["--workers"]),
    )
    serve(app, host="127.0.0.1", port=port, name="bilstm")


def start(command: list[str]) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    line = process.stdout.readline()
    if "serving model" not in line:
        process.kill()
        raise RuntimeError(f"server did not start: {command}")
    url = line.split(" on ")[1].split("/v2")[0]
    import httpx

    deadline = time.monotonic() + 600
    while True:
        try:
            if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                return process, url
        except httpx.TransportError:  # not listening yet
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{url} never became ready")
        time.sleep(0.1)


def load(url: str, requests: int, concurrency: int, seed: int) -> tuple[list[float], float]:
    """Latency (s) of each of ``requests`` requests sent by ``concurrency`` asyncio clients over
    keep-alive connections, and the wall time of the whole run."""
    import asyncio

    import httpx

    from torch_chrion.serve.protocol import decode_response, encode_binary_request

    rng = np.random.default_rng(seed)
    bodies = [
        encode_binary_request({"features": rng.standard_normal((int(t), 1, 40), np.float32)})
        for t in rng.choice(LENGTHS, size=requests)
    ]

    async def run() -> tuple[list[float], float]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            queue = list(reversed(bodies))
            latencies: list[float] = []

            async def worker() -> None:
                while queue:
                    body, headers = queue.pop()
                    begin = time.perf_counter()
                    r = await client.post("/v2/models/bilstm/infer", content=body, headers=headers)
                    latencies.append(time.perf_counter() - begin)
                    if r.status_code != 200:
                        raise RuntimeError(f"{url}: {r.status_code} {r.text}")
                    decode_response(r.content, r.headers)

            begin = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return latencies, time.perf_counter() - begin

    return asyncio.run(run())


def summary(latencies: list[float], seconds: float) -> dict[str, float]:
    ms = sorted(t * 1e3 for t in latencies)
    return {
        "throughput": len(ms) / seconds,
        "p50": statistics.median(ms),
        "p99": ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))],
        "slo": sum(t <= SLO_MS for t in ms) / len(ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per level and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per level")
    parser.add_argument("--write", action="store_true", help=f"write {RESULT.relative_to(ROOT)}")
    parser.add_argument(
        "--ort-server", nargs=3, metavar=("ONNX", "PORT", "THREADS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.ort_server:
        ort_server(args.ort_server[0], int(args.ort_server[1]), int(args.ort_server[2]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path, package = build(Path(tmp))
        servers: dict[str, tuple[subprocess.Popen, str]] = {}
        chrion = [sys.executable, "-m", "torch_chrion.cli", "serve", str(package)]
        try:
            servers["torch_chrion"] = start(
                [*chrion, "--port", "0", "--name", "bilstm", *SERVER_FLAGS]
            )
            for name, threads in PEERS.items():
                peer = [sys.executable, __file__, "--ort-server", str(onnx_path), "0", threads]
                servers[name] = start(peer)
            for _, url in servers.values():  # warm-up: connections, allocator, caches
                load(url, 64, 4, seed=99)
            results: dict[tuple[str, int], list[float]] = {}
            elapsed: dict[tuple[str, int], float] = {}
            cpu: dict[tuple[str, int], float] = {}  # server process CPU seconds
            for concurrency in CONCURRENCY:
                for round_ in range(args.rounds):
                    names = list(servers)
                    order = names if round_ % 2 == 0 else list(reversed(names))
                    for name in order:
                        before = _cpu_seconds(servers[name][0].pid)
                        lat, seconds = load(servers[name][1], args.requests, concurrency, round_)
                        key = (name, concurrency)
                        cpu[key] = cpu.get(key, 0.0) + _cpu_seconds(servers[name][0].pid) - before
                        elapsed[key] = elapsed.get(key, 0.0) + seconds
                        results.setdefault(key, []).extend(lat)
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(60)
    report(results, elapsed, cpu, args)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a server process, all its threads."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def report(results: dict, elapsed: dict, cpu: dict, args: argparse.Namespace) -> None:
    from torch_chrion.profile.devices import cpu_name

    lines = [
        "# Serving load test: chrion serve vs onnxruntime behind the same HTTP layer",
        "",
        f"Loopback, {args.requests} requests per level and round, {args.rounds} alternating "
        f"rounds; lengths {LENGTHS[0]}-{LENGTHS[-1]} frames (step 5), batch 1 per request; "
        f"server flags `{' '.join(SERVER_FLAGS)}`; SLO {SLO_MS:g} ms (the plan's).",
        "Model: 2-layer BiLSTM (40 features, hidden 96) + linear head. onnxruntime: "
        "CPUExecutionProvider, default intra-op threads, and 1 thread.",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, shared with other work (noisy); the "
        "client runs on the same cores.",
        f"Load average at the end: {os.getloadavg()[0]:.1f}.",
        "Command: `python bench/serve_load.py --write`",
        "",
        "Server CPU is the server process's user + system time per request (all its threads: "
        "HTTP, protocol, batching, model), which depends less than throughput and latency on what "
        "else the machine runs.",
        "",
        "| concurrency | server | throughput (req/s) | p50 (ms) | p99 (ms) | within SLO | "
        "server CPU (ms/request) |",
        "|---|---|---|---|---|---|---|",
    ]
    ratios = []
    for concurrency in CONCURRENCY:
        rows = {
            name: summary(results[(name, concurrency)], elapsed[(name, concurrency)])
            for name in ("torch_chrion", *PEERS)
        }
        for name, s in rows.items():
            cpu_ms = 1e3 * cpu[(name, concurrency)] / len(results[(name, concurrency)])
            lines.append(
                f"| {concurrency} | {name} | {s['throughput']:.0f} | {s['p50']:.2f} | "
                f"{s['p99']:.2f} | {100 * s['slo']:.0f}% | {cpu_ms:.2f} |"
            )
        c = rows["torch_chrion"]
        for peer in PEERS:
            o = rows[peer]
            ratios.append(
                f"- concurrency {concurrency}, vs {peer}: throughput "
                f"{c['throughput'] / o['throughput']:.2f}x, p99 {c['p99'] / o['p99']:.2f}x"
            )
    lines += [
        "",
        "torch_chrion relative to onnxruntime (goal at 16: throughput >= 1.0x, p99 <= 1.2x):",
        *ratios,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        RESULT.write_text(text)
        print(f"-> {RESULT}")


if __name__ == "__main__":
    main()
