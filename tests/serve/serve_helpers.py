"""Helpers of the serving tests: a BiLSTM tagger trained for a few steps the way a training
script would, an embedded server in a thread, v2 request helpers, a metrics reader."""

import torch
from torch import nn

FEATURES, CLASSES = 8, 5


class Tagger(nn.Module):
    """A 2-layer bidirectional LSTM with a per-frame classifier, time-major (T, N, F)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(FEATURES, 16, num_layers=2, bidirectional=True)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(features)
        return self.head(y).log_softmax(-1)


class CausalTagger(nn.Module):
    """A 2-layer unidirectional LSTM with a per-frame classifier: causal in time."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(FEATURES, 16, num_layers=2)
        self.head = nn.Linear(16, CLASSES)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(features)
        return self.head(y).log_softmax(-1)


def train_tagger() -> Tagger:
    """What a training script does: a few optimiser steps, then eval()."""
    torch.manual_seed(0)
    model = Tagger()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        x = torch.randn(12, 4, FEATURES)
        target = torch.randint(0, CLASSES, (12, 4))
        loss = nn.functional.nll_loss(model(x).flatten(0, 1), target.flatten())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def frames(length: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(length, batch, FEATURES, generator=torch.Generator().manual_seed(seed))


FAST = {"profile_warmup": 1, "profile_repeats": 3}


class EmbeddedServer:
    """A v2 app on uvicorn in a thread, on an ephemeral loopback port."""

    def __init__(self, app) -> None:
        import threading

        from torch_chrion.serve.server import bind, make_server

        self.sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = make_server(app)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})

    def __enter__(self):
        import httpx

        self.thread.start()
        wait_ready(self.url)
        self.client = httpx.Client(base_url=self.url, timeout=60)
        return self

    def __exit__(self, *exc):
        self.client.close()
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive()


def wait_ready(url: str, timeout_s: float = 60.0) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not become ready in {timeout_s} s")


def infer_json(client, model: str, x: torch.Tensor, name: str = "features"):
    body = {
        "inputs": [
            {"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}
        ]
    }
    return client.post(f"/v2/models/{model}/infer", json=body)


def infer_binary(client, model: str, x: torch.Tensor, name: str = "features"):
    from torch_chrion.serve.protocol import encode_binary_request

    body, headers = encode_binary_request({name: x.numpy()})
    return client.post(f"/v2/models/{model}/infer", content=body, headers=headers)


def outputs_of(response) -> dict:
    from torch_chrion.serve.protocol import decode_response

    assert response.status_code == 200, response.text
    return decode_response(response.content, response.headers)


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0
