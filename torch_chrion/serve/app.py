"""The ASGI application: the Open Inference Protocol (KServe v2) over one ServedModel.

    GET  /v2/health/live            200 once the process serves HTTP
    GET  /v2/health/ready           200 once the model is warmed up, 503 before
    GET  /v2                        server metadata
    GET  /v2/models/{name}          model metadata (inputs, outputs, -1 = any size)
    GET  /v2/models/{name}/ready    as health/ready, for that model
    POST /v2/models/{name}/infer    JSON tensors or the binary tensor extension
    GET  /metrics                   Prometheus

Bad requests (malformed body, unknown model or input, wrong dtype or shape, a body over the
limit) are answered 4xx with {"error": message}; a failure inside the model is a 500 for that
request alone. The same app runs under uvicorn (server.py) and as a Ray Serve ingress
(ray_app.py); only how requests are batched differs (``submit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from .metrics import ServeMetrics
from .model import ServedModel
from .protocol import RequestError, decode_request, encode_response

_log = logging.getLogger(__name__)

Submit = Callable[[tuple, Sequence[np.ndarray]], Awaitable[list[np.ndarray]]]


class _BodyTooLarge(RequestError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is over the {limit / 2**20:.3g} MiB limit", 413)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(
    model: ServedModel,
    *,
    name: str,
    submit: Submit | None = None,
    max_batch: int = 8,
    batch_timeout_ms: float = 2.0,
    max_body_mb: float = 16.0,
    slo_ms: float | None = None,
    workers: int = 2,
    warmed_up: bool = False,
) -> Starlette:
    """The v2 app for ``model`` served as ``name``.

    Args:
        submit: runs one checked request and returns its outputs; default an AdaptiveBatcher
            (max_batch, batch_timeout_ms, workers). Ray Serve passes its ``serve.batch`` method.
        max_body_mb: larger request bodies are refused with 413.
        slo_ms: the latency objective counted in /metrics; default the plan's.
        warmed_up: the model was warmed up already (Ray replicas do it in their constructor):
            ready at once.
    """
    metrics = ServeMetrics(name, slo_ms if slo_ms is not None else model.slo_ms)
    limit = int(max_body_mb * 2**20)
    state: dict[str, Any] = {"ready": warmed_up, "failed": None}
    batcher = None
    if submit is None:
        from .batching import AdaptiveBatcher

        batcher = AdaptiveBatcher(
            model,
            max_batch=max_batch,
            timeout_s=batch_timeout_ms / 1e3,
            workers=workers,
            on_batch=metrics.batch_started,
        )
        submit = batcher.submit

    async def warm_up() -> None:
        try:
            await asyncio.to_thread(model.warmup)
        except Exception as exc:  # noqa: BLE001 - reported by /v2/health/live and /ready
            _log.exception("model %s failed its warm-up", name)
            state["failed"] = f"warm-up failed: {type(exc).__name__}: {exc}"
            return
        state["ready"] = True
        _log.info("model %s warmed up (%d shapes): ready", name, len(model.warmup_inputs))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(warm_up()) if not state["ready"] else None
        try:
            yield
        finally:
            if task is not None and not task.done():
                task.cancel()
            if batcher is not None:
                await asyncio.to_thread(batcher.close)

    def unknown(requested: str) -> JSONResponse:
        metrics.failed(404, "unknown_model")
        return _error(404, f"unknown model {requested!r}; this server serves {name!r}")

    async def live(request: Request) -> Response:
        if state.get("failed"):  # not live: an orchestrator should restart it
            return JSONResponse({"live": False, "error": state["failed"]}, status_code=500)
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        requested = request.path_params.get("name", name)
        if requested != name:
            return unknown(requested)
        if not state["ready"]:
            return JSONResponse({"ready": False, "error": state.get("failed")}, status_code=503)
        return JSONResponse({"ready": True})

    async def server_metadata(request: Request) -> Response:
        return JSONResponse(
            {"name": "torch_chrion", "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    async def model_metadata(request: Request) -> Response:
        requested = request.path_params["name"]
        if requested != name:
            return unknown(requested)
        return JSONResponse(
            {
                "name": name,
                "versions": [],
                "platform": "torch_chrion",
                "inputs": [s.metadata() for s in model.inputs],
                "outputs": [s.metadata() for s in model.outputs],
            }
        )

    async def infer(request: Request) -> Response:
        with metrics.in_flight.labels(name).track_inprogress():
            return await answer(request)

    async def answer(request: Request) -> Response:
        requested = request.path_params["name"]
        if requested != name:
            return unknown(requested)
        if not state["ready"]:
            metrics.failed(503, "not_ready")
            return _error(503, f"model {name!r} is warming up; retry when /v2/health/ready is 200")
        try:
            raw = await _read_body(request, limit)
            started = time.perf_counter()
            decoded = decode_request(raw, request.headers)
            arrays = model.check(decoded.inputs)
        except RequestError as exc:
            metrics.failed(exc.status, "too_large" if exc.status == 413 else "bad_request")
            return _error(exc.status, str(exc))
        try:
            outputs = await submit(model.batch_key(arrays), arrays)
        except Exception as exc:  # noqa: BLE001 - this request's model call failed: a 500
            _log.exception("model %s failed on a request", name)
            metrics.failed(500, "model_error")
            return _error(500, f"the model failed on this request: {type(exc).__name__}: {exc}")
        names = [s.name for s in model.outputs]
        body, headers = encode_response(name, decoded, list(zip(names, outputs, strict=True)))
        metrics.answered(200, time.perf_counter() - started)
        return Response(body, headers=headers)

    async def prometheus(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=metrics.content_type)

    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        Route("/v2/models/{name}", model_metadata),
        Route("/v2/models/{name}/ready", ready),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/metrics", prometheus),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.metrics = metrics
    app.state.serving = state
    return app


__all__ = ["create_app"]
