"""The embedded v2 server on loopback: concurrent requests of varying lengths answer what eager
PyTorch (and onnxruntime) answer, bad requests get 4xx and the server keeps serving, a model
failure is a 500 for its request only, /metrics counts all of it, SIGTERM drains."""

import concurrent.futures
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from serve_helpers import (
    FEATURES,
    EmbeddedServer,
    frames,
    infer_binary,
    infer_json,
    metric,
    outputs_of,
    wait_ready,
)

from torch_chrion.serve import ServedModel, create_app
from torch_chrion.serve.model import from_package

ROOT = Path(__file__).resolve().parents[2]
# a binary request that announces 320 bytes of tensor data and sends 8
OVERRUN = (
    b'{"inputs": [{"name": "features", "shape": [10, 1, 8], "datatype": "FP32", '
    b'"parameters": {"binary_data_size": 320}}]}'
)


@pytest.fixture(scope="module")
def served(torch_package):
    return from_package(torch_package)


@pytest.fixture(scope="module")
def tagger_server(served):
    """One server of the packaged tagger for the tests that need nothing else; they read
    /metrics before and after, so each counts only its own requests."""
    app = create_app(served, name="tagger", max_batch=4, batch_timeout_ms=20, max_body_mb=0.05)
    with EmbeddedServer(app) as server:
        yield server


def counted(server, name: str, **labels) -> float:
    return metric(server.client.get("/metrics").text, name, model="tagger", **labels)


def test_concurrent_varying_lengths_equal_eager(tagger_server, tagger):
    server = tagger_server
    lengths = [10, 9, 12, 10]
    names = [
        ("chrion_requests_total", {"code": "200"}),
        ("chrion_batch_size_count", {}),
        ("chrion_batch_size_sum", {}),
        ("chrion_request_latency_seconds_count", {}),
    ]
    before = {name: counted(server, name, **labels) for name, labels in names}
    meta = server.client.get("/v2/models/tagger").json()
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, -1, 8]}]

    def client(worker: int) -> int:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for k, length in enumerate(lengths):
                x = frames(length, seed=100 * worker + k)
                send = infer_binary if (worker + k) % 2 else infer_json
                (y,) = outputs_of(send(c, "tagger", x)).values()
                expected = tagger(x).detach().numpy()
                np.testing.assert_allclose(y, expected, atol=1e-5, rtol=1e-5)
        return len(lengths)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answered = sum(pool.map(client, range(4)))
    after = {name: counted(server, name, **labels) for name, labels in names}
    added = {name: after[name] - before[name] for name in after}
    assert added["chrion_requests_total"] == answered
    assert added["chrion_batch_size_count"] <= answered
    assert added["chrion_batch_size_sum"] == answered
    assert added["chrion_request_latency_seconds_count"] == answered


def test_bad_requests_get_4xx_and_the_server_keeps_serving(tagger_server, tagger):
    server = tagger_server  # its body limit: 0.05 MiB
    x = frames(10)
    good = {"name": "features", "shape": [10, 1, FEATURES], "datatype": "FP32"}
    data = x.flatten().tolist()
    bad = [
        (400, "not valid JSON", {"content": b"{not json"}),
        (
            400,
            "unknown \\['feats'\\]",
            {"json": {"inputs": [{**good, "name": "feats", "data": data}]}},
        ),
        (
            400,
            "must be FP32, got FP64",
            {"json": {"inputs": [{**good, "datatype": "FP64", "data": data}]}},
        ),
        (
            400,
            "must have shape \\[\\*, \\*, 8\\]",
            {"json": {"inputs": [{**good, "shape": [10, 2, 4], "data": data}]}},
        ),
        (
            400,
            "80 values for shape",
            {"json": {"inputs": [{**good, "shape": [11, 1, 8], "data": data}]}},
        ),
        (
            400,
            "datatype 'FLOAT'",
            {"json": {"inputs": [{**good, "datatype": "FLOAT", "data": data}]}},
        ),
        (
            400,
            "overruns the body",
            {
                "content": OVERRUN + b"\0" * 8,
                "headers": {"inference-header-content-length": str(len(OVERRUN))},
            },
        ),
        (413, "over the 0.05 MiB limit", {"content": b" " * 60_000}),
    ]
    reasons = ("bad_request", "too_large", "unknown_model")
    before = {r: counted(server, "chrion_request_errors_total", reason=r) for r in reasons}
    answered = counted(server, "chrion_requests_total", code="200")
    for status, message, request in bad:
        response = server.client.post("/v2/models/tagger/infer", **request)
        assert response.status_code == status, (message, response.text)
        assert re.search(message, response.json()["error"]), response.json()
        (y,) = outputs_of(infer_json(server.client, "tagger", x)).values()
        np.testing.assert_allclose(y, tagger(x).detach().numpy(), atol=1e-5, rtol=1e-5)
    unknown = infer_json(server.client, "other", x)
    assert unknown.status_code == 404 and "unknown model 'other'" in unknown.json()["error"]
    assert server.client.get("/v2/models/other").status_code == 404
    errors = {
        r: counted(server, "chrion_request_errors_total", reason=r) - before[r] for r in reasons
    }
    assert errors == {"bad_request": len(bad) - 1, "too_large": 1, "unknown_model": 2}
    assert counted(server, "chrion_requests_total", code="200") - answered == len(bad)


def test_a_model_failure_is_a_500_for_that_request_only(served, tagger):
    def call(x: torch.Tensor) -> torch.Tensor:
        if (x == 1234.0).any():
            raise RuntimeError("poisoned input")
        return served.call(x)

    faulty = ServedModel(
        call, served.inputs, served.outputs, batch_axis=1, warmup_inputs=served.warmup_inputs
    )
    app = create_app(faulty, name="tagger", max_batch=4, batch_timeout_ms=100)
    poisoned = frames(10, seed=5)
    poisoned[3, 0, 2] = 1234.0
    inputs = [frames(10, seed=k) for k in range(3)] + [poisoned]
    with EmbeddedServer(app) as server:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # one batch of four
            responses = list(
                pool.map(
                    lambda x: infer_binary(
                        httpx.Client(base_url=server.url, timeout=60), "tagger", x
                    ),
                    inputs,
                )
            )
        text = server.client.get("/metrics").text
    assert [r.status_code for r in responses] == [200, 200, 200, 500]
    assert "poisoned input" in responses[3].json()["error"]
    for x, response in zip(inputs[:3], responses[:3], strict=True):
        (y,) = outputs_of(response).values()
        np.testing.assert_allclose(y, tagger(x).detach().numpy(), atol=1e-5, rtol=1e-5)
    assert metric(text, "chrion_request_errors_total", reason="model_error") == 1


def test_onnx_package_served_equals_onnxruntime(onnx_package, onnx_file):
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    app = create_app(from_package(onnx_package), name="tagger_onnx", max_batch=4)
    with EmbeddedServer(app) as server:

        def client(seed: int) -> None:
            with httpx.Client(base_url=server.url, timeout=60) as c:
                x = frames(10 + seed % 3, seed=seed)
                outputs = outputs_of(infer_binary(c, "tagger_onnx", x))
                (expected,) = session.run(None, {"features": x.numpy()})
                np.testing.assert_allclose(outputs["log_probs"], expected, atol=1e-5, rtol=1e-5)

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            list(pool.map(client, range(6)))


def test_sigterm_drains_requests_in_flight(torch_package, tagger):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch_chrion.cli",
            "serve",
            str(torch_package),
            "--port",
            "0",
            "--name",
            "tagger",
            "--max-batch",
            "64",
            "--batch-timeout-ms",
            "1000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = process.stdout.readline()
        assert "serving model 'tagger' on http://127.0.0.1:" in line, process.stderr.read()
        url = line.split(" on ")[1].split("/v2")[0]
        wait_ready(url)
        inputs = [frames(10, seed=k) for k in range(6)]
        results: dict[int, httpx.Response] = {}

        def send(k: int) -> None:
            with httpx.Client(base_url=url, timeout=60) as c:
                results[k] = infer_binary(c, "tagger", inputs[k])

        threads = [threading.Thread(target=send, args=(k,)) for k in range(len(inputs))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while metric(httpx.get(f"{url}/metrics").text, "chrion_requests_in_flight") < len(inputs):
            assert time.monotonic() < deadline, "the requests never arrived"
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)  # all six wait for their batch (up to 1 s)
        for t in threads:
            t.join(60)
        # uvicorn re-raises the signal after its graceful shutdown
        assert process.wait(60) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
    assert sorted(results) == list(range(len(inputs)))
    for k, x in enumerate(inputs):
        (y,) = outputs_of(results[k]).values()
        np.testing.assert_allclose(y, tagger(x).detach().numpy(), atol=1e-5, rtol=1e-5)


def test_a_failed_warm_up_is_reported_not_ready(served):
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("weights missing")

    model = ServedModel(broken, served.inputs, served.outputs, warmup_inputs=served.warmup_inputs)
    app = create_app(model, name="tagger")
    sock_server = EmbeddedServer(app)
    sock_server.thread.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                live = httpx.get(f"{sock_server.url}/v2/health/live")
                if live.status_code == 500:
                    break
            except httpx.TransportError:  # not listening yet
                pass
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "weights missing" in live.json()["error"]
        ready = httpx.get(f"{sock_server.url}/v2/health/ready")
        assert ready.status_code == 503 and "warm-up failed" in ready.json()["error"]
        assert (
            infer_json(httpx.Client(base_url=sock_server.url), "tagger", frames(10)).status_code
            == 503
        )
    finally:
        sock_server.server.should_exit = True
        sock_server.thread.join(30)


def test_an_onnx_file_is_served_directly(onnx_file, tmp_path):
    import onnxruntime as ort

    from torch_chrion.serve.model import load_served

    model = load_served(
        onnx_file,
        shapes={"features": [10, 1, FEATURES]},
        batch_axis=1,
        cache_dir=str(tmp_path),
        profile_warmup=1,
        profile_repeats=3,
    )
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    with EmbeddedServer(create_app(model, name="tagger")) as server:
        assert server.client.get("/v2/models/tagger").json()["inputs"][0]["shape"] == [-1, -1, 8]
        x = frames(12, seed=7)
        (y,) = outputs_of(infer_binary(server.client, "tagger", x)).values()
    (expected,) = session.run(None, {"features": x.numpy()})
    np.testing.assert_allclose(y, expected, atol=1e-5, rtol=1e-5)
