"""Prometheus metrics (`GET /metrics`): requests and latency per route, images and megapixels
per provider, and, read at scrape time, engine queues and batch sizes and open reservations.

Label values come only from fixed sets (route templates, methods, status codes, provider
slugs from the configuration), never from keys, prompts or anything a client sends.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pixelrouter.providers.base import Provider, ProviderStatus
from pixelrouter.store import Store
from pixelrouter.types import GenerationEnd

from .schemas import ErrorEnvelope

log = logging.getLogger(__name__)

# A generation takes from well under a second (a warm GPU) to minutes (a CPU, a long queue).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
UNMATCHED = "unmatched"  # a path no route serves: one label value, whatever the path
OTHER = "other"  # a matched path whose template could not be rebuilt
NO_PROVIDER = "none"
SERVED_BY_CAPACITY = 4096  # generation id -> provider, until the middleware reads it


class Metrics:
    """The registry of one app and the counters the service and the middleware move."""

    def __init__(
        self,
        providers: list[Provider],
        store: Store,
        *,
        cache_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pixelrouter_requests",
            "HTTP requests by route template, method, status and the provider that served "
            "the generation ('none' for other requests)",
            ["endpoint", "method", "status", "provider"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pixelrouter_request_latency_seconds",
            "Time from a request's arrival to the end of its response (a whole stream)",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.undelivered = Counter(
            "pixelrouter_images_undelivered",
            "Images made but never handed whole to the client (it left first): not charged, "
            "the operator's cost",
            ["provider"],
            registry=self.registry,
        )
        self.images = Counter(
            "pixelrouter_images_generated",
            "Images delivered to clients, by the provider that made them",
            ["provider"],
            registry=self.registry,
        )
        self.megapixels = Counter(
            "pixelrouter_megapixels_generated",
            "Billable megapixels delivered (max(1, ceil(w*h / 2^20)) per image), by provider",
            ["provider"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "pixelrouter_provider_attempts",
            "Provider attempts by provider and HTTP-like status (200 ok)",
            ["provider", "status"],
            registry=self.registry,
        )
        self.scrape = ScrapeCollector(providers, store, cache_s=cache_s, clock=clock)
        self.registry.register(self.scrape)
        ProcessCollector(registry=self.registry)
        self._served_by: OrderedDict[str, str] = OrderedDict()

    def generation_finished(self, end: GenerationEnd) -> None:
        """A `GenerationService` observer: count what was delivered and every attempt."""
        if end.state == "undelivered":  # made for a client that left: the operator's cost
            self.undelivered.labels(end.provider_slug or "none").inc(end.images)
            return
        for attempt in end.attempts:
            if attempt.provider_slug:
                self.attempts.labels(attempt.provider_slug, str(attempt.status)).inc()
        if end.provider_slug and end.images:
            self.images.labels(end.provider_slug).inc(end.images)
            self.megapixels.labels(end.provider_slug).inc(end.megapixels)
            self._served_by[end.request_id] = end.provider_slug
            while len(self._served_by) > SERVED_BY_CAPACITY:
                self._served_by.popitem(last=False)

    def request_finished(
        self, endpoint: str, method: str, status: int, seconds: float, generation_id: str | None
    ) -> None:
        provider = NO_PROVIDER
        if generation_id is not None:
            provider = self._served_by.pop(generation_id, NO_PROVIDER)
        self.requests.labels(endpoint, method, str(status), provider).inc()
        self.latency.labels(endpoint).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ScrapeCollector:
    """Figures read when Prometheus scrapes: queue depth and batch sizes from the providers'
    `status()`, readiness, and open reservations from the store (cached a few seconds: every
    replica reports the same database-wide number)."""

    def __init__(
        self,
        providers: list[Provider],
        store: Store,
        *,
        cache_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.providers = providers
        self.store = store
        self.cache_s = cache_s
        self.clock = clock
        self._lock = threading.Lock()
        self._reservations: tuple[float, int] | None = None  # (read at, count)

    def describe(self) -> Iterable[Metric]:
        return []  # collected fresh on every scrape

    def collect(self) -> Iterator[Metric]:
        queue = GaugeMetricFamily(
            "pixelrouter_engine_queue_depth",
            "Requests waiting in an engine's queue (local engine or pixelrouter worker)",
            labels=["provider"],
        )
        queued_images = GaugeMetricFamily(
            "pixelrouter_engine_queued_images",
            "Images waiting in an engine's queue",
            labels=["provider"],
        )
        running = GaugeMetricFamily(
            "pixelrouter_engine_running_images",
            "Images in the batch an engine is running",
            labels=["provider"],
        )
        batches = HistogramMetricFamily(
            "pixelrouter_engine_batch_size",
            "Images per batch the local engine ran (since it started)",
            labels=["provider"],
        )
        wait = GaugeMetricFamily(
            "pixelrouter_engine_estimated_wait_seconds",
            "Estimated wait of a new request before its batch starts (the shortest of a "
            "provider's workers)",
            labels=["provider"],
        )
        up = GaugeMetricFamily(
            "pixelrouter_provider_ready", "1 when a provider can take work now", labels=["provider"]
        )
        workers = _WorkerFamilies()
        for provider in self.providers:
            slug = provider.info.slug
            try:
                ready, _ = provider.readiness()
                status = provider.status()
            except Exception:
                log.exception("could not read the status of provider %s", slug)
                continue
            up.add_metric([slug], 1.0 if ready else 0.0)
            queue.add_metric([slug], float(status.queue_depth))
            wait.add_metric([slug], float(status.estimated_wait_s))
            for address, figures in status.instances.items():
                workers.add(slug, address, figures)
            if status.queued_images is not None:
                queued_images.add_metric([slug], float(status.queued_images))
            if status.running_images is not None:
                running.add_metric([slug], float(status.running_images))
            if status.batch_sizes is not None:
                buckets, total = batch_buckets(status.batch_sizes)
                batches.add_metric([slug], buckets, total)
        yield from (queue, queued_images, running, wait, batches, up)
        yield from workers.families()
        open_reservations = self._open_reservations()
        if open_reservations is not None:
            gauge = GaugeMetricFamily(
                "pixelrouter_billing_reservations_open",
                "Reservations neither settled nor released (database-wide)",
            )
            gauge.add_metric([], float(open_reservations))
            yield gauge

    def _open_reservations(self) -> int | None:
        with self._lock:
            now = self.clock()
            if self._reservations is not None and now - self._reservations[0] < self.cache_s:
                return self._reservations[1]
            try:
                count = self.store.count_open_reservations()
            except Exception:
                log.exception("could not count open reservations for /metrics")
                return None
            self._reservations = (now, count)
            return count


class _WorkerFamilies:
    """One series per worker of a provider that has many (found by DNS), labelled `worker`
    (its address): what an autoscaler reads when it scrapes the gateways."""

    def __init__(self) -> None:
        labels = ["provider", "worker"]
        self.queued = GaugeMetricFamily(
            "pixelrouter_worker_queued_images", "Images waiting in a worker's queue", labels=labels
        )
        self.running = GaugeMetricFamily(
            "pixelrouter_worker_running_images", "Images in a worker's running batch", labels=labels
        )
        self.wait = GaugeMetricFamily(
            "pixelrouter_worker_estimated_wait_seconds",
            "A worker's estimated wait for a new request",
            labels=labels,
        )
        self.queue = GaugeMetricFamily(
            "pixelrouter_worker_queue_depth", "Requests waiting in a worker's queue", labels=labels
        )

    def add(self, slug: str, address: str, status: ProviderStatus) -> None:
        self.queue.add_metric([slug, address], float(status.queue_depth))
        self.wait.add_metric([slug, address], float(status.estimated_wait_s))
        if status.queued_images is not None:
            self.queued.add_metric([slug, address], float(status.queued_images))
        if status.running_images is not None:
            self.running.add_metric([slug, address], float(status.running_images))

    def families(self) -> tuple[Metric, ...]:
        return (self.queue, self.queued, self.running, self.wait)


def batch_buckets(sizes: Mapping[str, Any]) -> tuple[list[tuple[str, float]], float]:
    """Cumulative histogram buckets and the sum from `{images per batch: batches}` counts."""
    counts = {int(size): int(n) for size, n in sizes.items()}
    buckets = [
        (str(bound), float(sum(n for size, n in counts.items() if size <= bound)))
        for bound in BATCH_BUCKETS
    ]
    buckets.append(("+Inf", float(sum(counts.values()))))
    return buckets, float(sum(size * n for size, n in counts.items()))


class MetricsMiddleware:
    """Counts every HTTP response by route template and times it to its last byte."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what a client sees when the app raised before answering

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            try:
                self.metrics.request_finished(
                    route_template(scope),
                    str(scope.get("method", "GET")),
                    status,
                    time.perf_counter() - started,
                    scope.get("state", {}).get("generation_id"),
                )
            except Exception:
                log.exception("could not count a request for /metrics")


def route_template(scope: Scope) -> str:
    """The path template of the route that served this request, so a label value always comes
    from the app's fixed set of routes: `/api/v1/models/{author}/{slug}/endpoints`, and a mount
    (the static files) `/static/{path}`. A path no route matched is "unmatched", one whose
    template cannot be rebuilt "other": never a raw path (any `/static/<anything>` would be a
    new series)."""
    path = str(scope.get("path", ""))
    if "endpoint" not in scope:
        return UNMATCHED
    root = str(scope.get("root_path", ""))
    template = _template_of(scope.get("effective_route_context")) or _template_of(
        scope.get("route")
    )
    if template is None:
        # A mounted app (the static files) sees its mount point as its root path.
        return root + "/{path}" if root and path.startswith(root + "/") else OTHER
    params = scope.get("path_params") or {}
    concrete = template
    for name, value in params.items():
        concrete = concrete.replace("{" + name + "}", str(value))
    if path == concrete:
        return template
    if concrete.startswith("/") and path.endswith(concrete):
        # The route is inside a router included with a prefix (`/api/v1`), which routing
        # matched literally.
        return path[: -len(concrete)] + template
    return OTHER


def _template_of(route: Any) -> str | None:
    if isinstance(route, Mount):
        return None  # its `{path}` is not among the path parameters: the root path says
    template = getattr(route, "path_format", None)
    return template if isinstance(template, str) else None


router = APIRouter(tags=["service"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        "4XX": {"model": ErrorEnvelope, "description": "A client error, in the envelope"},
    },
)
async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    body = await asyncio.to_thread(metrics.exposition)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
