"""The same v2 app on Ray Serve: a local Ray instance, two replicas of the packaged model, every
answer equal to eager PyTorch, a bad request still a 400."""

import concurrent.futures
import socket
from pathlib import Path

import httpx
import numpy as np
from serve_helpers import FEATURES, frames, infer_binary, infer_json, outputs_of, wait_ready

import torch_chrion.serve

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_serve_two_replicas_answer_as_eager(torch_package, tagger):
    import ray
    from ray import serve

    # each replica asks for the plan's two CPU lanes: four logical CPUs for two replicas
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
        log_to_driver=False,
    )
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = torch_chrion.serve.deployment(torch_package, name="tagger", num_replicas=2)
        serve.run(app, name="tagger", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        deployment = serve.status().applications["tagger"].deployments["chrion-tagger"]
        assert deployment.replica_states.get("RUNNING") == 2

        def client(seed: int) -> None:
            with httpx.Client(base_url=url, timeout=60) as c:
                x = frames(9 + seed % 3, seed=seed)
                send = infer_binary if seed % 2 else infer_json
                (y,) = outputs_of(send(c, "tagger", x)).values()
                np.testing.assert_allclose(y, tagger(x).detach().numpy(), atol=1e-5, rtol=1e-5)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(client, range(8)))
        bad = httpx.post(
            f"{url}/v2/models/tagger/infer",
            json={
                "inputs": [
                    {
                        "name": "features",
                        "shape": [2, 1, FEATURES],
                        "datatype": "FP64",
                        "data": [0.0] * 16,
                    }
                ]
            },
        )
        assert bad.status_code == 400 and "must be FP32" in bad.json()["error"]
    finally:
        serve.shutdown()
        ray.shutdown()
