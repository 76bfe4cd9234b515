"""Prometheus metrics of one served model, in a registry of its own (several apps can share a
process, as in tests), exposed at /metrics."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class ServeMetrics:
    """Requests by status code, errors by reason, queue time, batch sizes, latency, and SLO
    attainment (requests answered within the plan's SLO over requests answered)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model: str, slo_ms: float | None) -> None:
        self.registry = CollectorRegistry()
        self.model = model
        self.slo_s = slo_ms / 1e3 if slo_ms is not None else None
        r = self.registry
        self.requests = Counter(
            "chrion_requests",
            "Infer requests answered, by HTTP status",
            ["model", "code"],
            registry=r,
        )
        self.errors = Counter(
            "chrion_request_errors",
            "Infer requests refused or failed, by reason",
            ["model", "reason"],
            registry=r,
        )
        self.queue = Histogram(
            "chrion_queue_seconds",
            "Time a request waited for its batch to start",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch = Histogram(
            "chrion_batch_size",
            "Requests per model call",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.latency = Histogram(
            "chrion_request_latency_seconds",
            "Infer latency, body received to answer ready",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "chrion_requests_in_flight",
            "Infer requests received and not yet answered",
            ["model"],
            registry=r,
        )
        self.slo = Gauge(
            "chrion_slo_seconds", "The latency SLO (absent: none)", ["model"], registry=r
        )
        self.slo_met = Counter(
            "chrion_slo_met", "Successful requests answered within the SLO", ["model"], registry=r
        )
        self.slo_attainment = Gauge(
            "chrion_slo_attainment",
            "Fraction of successful requests within the SLO",
            ["model"],
            registry=r,
        )
        if self.slo_s is not None:
            self.slo.labels(model).set(self.slo_s)
        self._answered = 0
        self._met = 0

    def answered(self, code: int, seconds: float | None = None) -> None:
        self.requests.labels(self.model, str(code)).inc()
        if seconds is None:
            return
        self.latency.labels(self.model).observe(seconds)
        if self.slo_s is not None:
            self._answered += 1
            if seconds <= self.slo_s:
                self._met += 1
                self.slo_met.labels(self.model).inc()
            self.slo_attainment.labels(self.model).set(self._met / self._answered)

    def failed(self, code: int, reason: str) -> None:
        self.errors.labels(self.model, reason).inc()
        self.answered(code)

    def batch_started(self, size: int, queued_s: list[float]) -> None:
        self.batch.labels(self.model).observe(size)
        for q in queued_s:
            self.queue.labels(self.model).observe(q)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
