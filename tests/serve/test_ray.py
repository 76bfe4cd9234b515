"""``chrion serve --ray`` on a local Ray instance it starts: two replicas of the packaged model,
every answer equal to eager PyTorch, a bad request a 400; SIGTERM takes Serve and Ray down, so
no Ray process it started outlives it."""

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from serve_helpers import FEATURES, frames, infer_binary, infer_json, outputs_of, wait_ready

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in processes:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_ray_serve_two_replicas_answer_as_eager_and_sigterm_leaves_no_ray_process(
    torch_package, tagger
):
    port = _free_port()
    # each replica asks for the plan's two CPU lanes: four logical CPUs for two replicas
    command = [sys.executable, "-m", "torch_chrion.cli", "serve", str(torch_package), "--ray"]
    command += ["--replicas", "2", "--ray-num-cpus", "4", "--port", str(port), "--name", "tagger"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    started: list[psutil.Process] = []
    try:
        line = process.stdout.readline().decode()
        assert "serving model 'tagger' on Ray Serve" in line, line
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        # every Ray process it started descends from it: GCS, raylet, agents, Serve's actors
        started = psutil.Process(process.pid).children(recursive=True)
        replicas = [p for p in started if "ServeReplica:tagger" in " ".join(p.cmdline())]
        assert len(replicas) == 2, [p.cmdline() for p in started]

        def client(seed: int) -> None:
            with httpx.Client(base_url=url, timeout=60) as c:
                x = frames(9 + seed % 3, seed=seed)
                send = infer_binary if seed % 2 else infer_json
                (y,) = outputs_of(send(c, "tagger", x)).values()
                np.testing.assert_allclose(y, tagger(x).detach().numpy(), atol=1e-5, rtol=1e-5)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(client, range(8)))
        fp64 = {"name": "features", "shape": [2, 1, FEATURES], "datatype": "FP64"}
        bad = httpx.post(
            f"{url}/v2/models/tagger/infer", json={"inputs": [{**fp64, "data": [0.0] * 16}]}
        )
        assert bad.status_code == 400 and "must be FP32" in bad.json()["error"]

        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        deadline = time.monotonic() + 30
        while _alive(started):
            assert time.monotonic() < deadline, [p.cmdline() for p in _alive(started)]
            time.sleep(0.2)
    finally:
        if process.poll() is None:
            process.kill()
        for p in _alive(started):
            p.kill()
