"""The same v2 app as a Ray Serve deployment: each replica loads the package, and Ray batches
(``ray.serve.batch``), routes, replicates and autoscales.

    app = torch_chrion.serve.deployment("tagger_pkg", num_replicas=2)
    ray.serve.run(app, route_prefix="/")           # in your own Ray application

Each replica asks Ray for the CPU cores and GPUs its plan places work on (one core per CPU lane
times its intra-op threads, one GPU per CUDA device), so Ray packs replicas the way the plan
assumes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from .app import create_app
from .model import lane_resources, load_served


def plan_resources(path: str | os.PathLike, **load_options: Any) -> dict[str, float]:
    """CPU cores and GPUs the plan of a package (or of an ONNX file here) uses, read without
    loading the model."""
    from ..module import default_devices
    from ..settings import ChrionSettings

    if Path(path).is_dir():
        settings = json.loads((Path(path) / "manifest.json").read_text())["settings"]
        devices, threads = settings["devices"], settings["cpu_threads"]
    else:
        options = {k: v for k, v in load_options.items() if k not in ("shapes", "batch_axis")}
        parsed = ChrionSettings.from_options(options)
        devices, threads = parsed.devices, parsed.cpu_threads
    return lane_resources(devices or default_devices(), threads)


@serve.ingress()
class ChrionReplica:
    """One replica: the package loaded and warmed up, the v2 app in front of it."""

    def __init__(
        self,
        path: str,
        name: str,
        max_batch: int,
        batch_timeout_ms: float,
        max_body_mb: float,
        slo_ms: float | None,
        load_options: dict[str, Any],
    ) -> None:
        self.model = load_served(path, **load_options)
        self.model.warmup()
        self.name, self.max_body_mb, self.slo_ms = name, max_body_mb, slo_ms
        batch = max_batch if self.model.batch_axis is not None else 1
        self.run_batched.set_max_batch_size(batch)
        self.run_batched.set_batch_wait_timeout_s(batch_timeout_ms / 1e3)
        self.metrics: Any = None

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def run_batched(self, items: list[tuple[tuple, Sequence[np.ndarray], float]]) -> list:
        groups: dict[tuple, list[int]] = {}
        for index, (key, _, _) in enumerate(items):
            groups.setdefault(key, []).append(index)
        results: list[Any] = [None] * len(items)
        for indices in groups.values():
            now = time.perf_counter()
            self.metrics.batch_started(len(indices), [now - items[i][2] for i in indices])
            outputs = await asyncio.to_thread(self.model.run_batch, [items[i][1] for i in indices])
            for index, result in zip(indices, outputs, strict=True):
                results[index] = result
        return results

    async def submit(self, key: tuple, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        result = await self.run_batched((key, arrays, time.perf_counter()))
        if isinstance(result, BaseException):
            raise result
        return result

    def __serve_build_asgi_app__(self) -> Any:
        app = create_app(
            self.model,
            name=self.name,
            submit=self.submit,
            max_body_mb=self.max_body_mb,
            slo_ms=self.slo_ms,
            warmed_up=True,
        )
        self.metrics = app.state.metrics
        return app


def deployment(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    num_replicas: int | str | None = 1,
    autoscaling_config: dict[str, Any] | None = None,
    max_batch: int = 8,
    batch_timeout_ms: float = 2.0,
    max_body_mb: float = 16.0,
    slo_ms: float | None = None,
    ray_actor_options: dict[str, Any] | None = None,
    **load_options: Any,
) -> Any:
    """A Ray Serve application (``serve.run`` it) serving a package or ONNX file over v2.

    Args:
        num_replicas, autoscaling_config: as for ``ray.serve.deployment`` (give one of them).
        ray_actor_options: extra Ray options; num_cpus/num_gpus default to the plan's lanes.
        **load_options: ``strict`` for a package; ``shapes``/``batch_axis``/settings for ONNX.
    """
    path = str(Path(path).resolve())
    name = name or Path(path).stem
    options = {**plan_resources(path, **load_options), **(ray_actor_options or {})}
    scaling = (
        {"autoscaling_config": autoscaling_config}
        if autoscaling_config is not None
        else {"num_replicas": num_replicas}
    )
    replica = serve.deployment(ChrionReplica).options(
        name=f"chrion-{name}", ray_actor_options=options, **scaling
    )
    return replica.bind(path, name, max_batch, batch_timeout_ms, max_body_mb, slo_ms, load_options)


class _Stopped(Exception):
    """SIGTERM or SIGINT reached ``chrion serve --ray``: stop and shut Ray down."""


def run_on_ray(
    path: str,
    *,
    name: str,
    host: str,
    port: int,
    replicas: int,
    address: str | None = None,
    num_cpus: int | None = None,
    **options: Any,
) -> int:
    """``chrion serve --ray``: start (or join) Ray, run the deployment, serve until SIGTERM or
    SIGINT, then take the application down: on a Ray instance it started, Serve and Ray with
    it, so no Ray process outlives the command (a signal during start-up does the same).

    Args:
        address: an existing cluster; None starts a local instance (``num_cpus`` logical CPUs,
            default the machine's), which is shut down on exit.
    """
    import ray

    def stop(signum: int, frame: Any) -> None:
        # once: a second signal must not interrupt the shutdown below
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        raise _Stopped(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    # ray.init joins the cluster of RAY_ADDRESS when no address is given
    own_instance = address is None and not os.environ.get("RAY_ADDRESS")
    deployed = False
    try:
        ray.init(
            address=address, num_cpus=num_cpus, include_dashboard=False, ignore_reinit_error=True
        )
        # ray.init puts in its own SIGTERM handler (sys.exit, skipping Serve's shutdown)
        signal.signal(signal.SIGTERM, stop)
        serve.start(http_options={"host": host, "port": port})
        serve.run(
            deployment(path, name=name, num_replicas=replicas, **options),
            name=name,
            route_prefix="/",
        )
        deployed = True
        print(
            f"serving model {name!r} on Ray Serve, http://{host}:{port}/v2/models/{name}",
            flush=True,
        )
        threading.Event().wait()  # until a signal raises _Stopped
    except _Stopped as why:
        print(f"{why}: shutting down", flush=True)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        if ray.is_initialized():
            if own_instance:  # Serve, and every Ray process with ray.shutdown
                serve.shutdown()
            elif deployed:  # a shared cluster: only this application
                serve.delete(name)
            ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
