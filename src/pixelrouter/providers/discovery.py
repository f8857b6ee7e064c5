"""Workers found by DNS: one `pixelrouter` provider whose URL names a host with many addresses.

A Kubernetes headless service, a Consul service or a plain round-robin name answers with one
address per worker. `DiscoveredWorkers` resolves the name every `interval_s`, keeps one
`PixelrouterProvider` per address (its queue read from that worker's `GET /engine/status`),
and sends each request to the instance with the shortest estimated wait. Routing, health and
the statistics see one provider; /metrics shows each instance.

An address that leaves the answer takes no new work and is closed once its requests in flight
are answered. A name that stops resolving keeps the last good set, and readiness says so. A
worker that refuses or cannot be reached (draining, gone) is skipped at once and the request
goes to the next instance, within the request's deadline.

```toml
[[providers]]
name = "workers"
type = "pixelrouter"
url = "http://pixelrouter-workers.pixelrouter.svc.cluster.local:8000/api/v1"
discovery = "dns"      # or { type = "dns", interval_s = 5, nameserver = "10.0.0.10:53" }
```
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pixelrouter.errors import (
    NameNotResolved,
    PixelrouterError,
    ProviderUnavailable,
    provider_caused,
)
from pixelrouter.providers.base import ProviderBase, ProviderInfo, ProviderStatus
from pixelrouter.providers.config import Discovery, ProviderConfig
from pixelrouter.providers.pixelrouter import PixelrouterProvider
from pixelrouter.types import ImageRequest, ImageResult, ProgressEvent

log = logging.getLogger(__name__)

# After a refusal or a failed connection, an instance gets no work until a status poll finds
# it ready again, or this long at most.
SKIP_S = 30.0


async def resolve(host: str, port: int, nameserver: tuple[str, int] | None) -> list[str]:
    """Every address `host` has now (IPv4 and IPv6), sorted. Without a `nameserver`: the
    system's resolver (`/etc/hosts`, the search domains of `/etc/resolv.conf`: what a pod's
    short names need); with one: asked directly (dnspython), as a test or Consul's port."""
    with contextlib.suppress(ValueError):
        return [str(ipaddress.ip_address(host))]  # an address names itself
    if nameserver is None:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            raise NameNotResolved(f"{host}: {exc.strerror}") from None
        addresses = {str(info[4][0]) for info in infos}
    else:
        import dns.asyncresolver
        import dns.exception
        import dns.resolver

        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [nameserver[0]]
        resolver.port = nameserver[1]
        resolver.lifetime = 2.0
        addresses = set()
        for kind in ("A", "AAAA"):
            try:
                answer = await resolver.resolve(host, kind, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
                continue
            except dns.exception.DNSException as exc:
                raise NameNotResolved(f"{host}: {type(exc).__name__}: {exc}") from None
            addresses.update(str(record) for record in answer)
    if not addresses:
        raise NameNotResolved(f"{host}: no address")
    return sorted(addresses)


class DiscoveredWorkers(ProviderBase):
    """One provider, many workers: the addresses a DNS name has."""

    kind = "pixelrouter"

    def __init__(
        self,
        config: ProviderConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        assert config.url is not None and config.discovery is not None
        self.config = config
        self.discovery: Discovery = config.discovery
        parts = urlsplit(config.url)
        if parts.hostname is None:
            raise ValueError(f"provider {config.name!r}: its url names no host")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self._parts = parts
        self._template = PixelrouterProvider(config)  # its info and checks; it never sends
        self.clock = clock
        self.rng = rng or random.Random()
        self.instances: dict[str, PixelrouterProvider] = {}
        self._retiring: set[PixelrouterProvider] = set()
        self._skip_until: dict[str, float] = {}
        self.resolved_at: float | None = None  # wall clock of the last good answer
        self.dns_error: str | None = None  # why the last resolution failed, if it did
        self._watcher: asyncio.Task[None] | None = None
        self._first: asyncio.Task[None] | None = None

    # -- the protocol ---------------------------------------------------------------------

    @property
    def info(self) -> ProviderInfo:
        return self._template.info

    def unsupported_reason(self, request: ImageRequest) -> str | None:
        """What every worker can express; a request with LoRA adapters needs a worker that
        holds them all (each instance's `GET /loras`), and one without needs a worker that is
        not fused to an adapter."""
        reasons = [instance.unsupported_reason(request) for instance in self.instances.values()]
        if request.loras and None in reasons:
            return None
        if not request.loras and reasons and None not in reasons:
            return reasons[0]  # every worker found is fused to an adapter
        return self._template.unsupported_reason(request)

    async def generate(
        self,
        request: ImageRequest,
        on_progress: Callable[[ProgressEvent], None] | None = None,
    ) -> ImageResult:
        await self._discovered()
        tried: list[str] = []
        last: PixelrouterError | None = None
        for address in self._order():
            instance = self.instances.get(address)
            if instance is None:
                continue
            if instance.unsupported_reason(request) is not None:
                continue  # it does not hold the adapters, or is fused: it would refuse it
            tried.append(address)
            try:
                return await instance.generate(request, on_progress)
            except PixelrouterError as exc:
                if not provider_caused(exc):
                    raise  # the request's own fault: another worker would say the same
                # Draining, gone or failing: skip it until a poll finds it ready, and try the
                # next worker within the request's deadline.
                self._skip_until[address] = self.clock() + SKIP_S
                log.info(
                    "%s: worker %s failed (%s); trying the next one",
                    self.info.slug,
                    address,
                    exc.message,
                )
                last = exc
        if last is not None:
            raise last
        if request.loras and self.instances:
            names = ", ".join(choice.name for choice in request.loras)
            raise ProviderUnavailable(
                f"{self.info.display_name} has no worker that holds the LoRA adapter(s) {names}",
                metadata={"provider": self.info.display_name},
            )
        raise ProviderUnavailable(
            f"{self.info.display_name} has no worker: {self._unresolved_reason()}",
            metadata={"provider": self.info.display_name},
        )

    def readiness(self) -> tuple[bool, str]:
        self._watch()
        if not self.instances:
            return False, f"no worker found: {self._unresolved_reason()}"
        reasons = []
        for address, instance in sorted(self.instances.items()):
            ready, reason = instance.readiness()
            if ready and not self._skipped(address):
                note = (
                    f"; DNS: {self.dns_error}, routing to the last good set"
                    if self.dns_error
                    else ""
                )
                return True, f"{self._ready_count()} of {len(self.instances)} worker(s) ready{note}"
            reasons.append(f"{address}: {reason}")
        return False, "no worker is ready (" + "; ".join(reasons) + ")"

    def status(self) -> ProviderStatus:
        """The workers together: their queues summed, the shortest wait of a ready one."""
        per = {address: self.instances[address].status() for address in sorted(self.instances)}
        ready = [
            s
            for address, s in per.items()
            if self.instances[address].readiness()[0] and not self._skipped(address)
        ]
        waits = [s.estimated_wait_s for s in ready]
        return ProviderStatus(
            state="remote" if ready else ("unresolved" if not per else "unreachable"),
            queue_depth=sum(s.queue_depth for s in per.values()),
            queue_full=bool(per) and all(s.queue_full for s in ready or per.values()),
            estimated_wait_s=min(waits) if waits else 0.0,
            running_batch=sum(s.running_batch for s in per.values()),
            in_flight=sum(s.in_flight for s in per.values())
            + sum(p.status().in_flight for p in self._retiring),
            queued_images=_total(s.queued_images for s in per.values()),
            running_images=_total(s.running_images for s in per.values()),
            error=self.dns_error,
            details={
                "discovery": {
                    "name": self.host,
                    "resolved_at": self.resolved_at,
                    "error": self.dns_error,
                    "retiring": len(self._retiring),
                },
            },
            instances=per,
        )

    async def refresh_status(self) -> ProviderStatus:
        self._watch()
        await self._discovered()
        return self.status()

    async def probe(self) -> bool:
        await self._discovered()
        checks = [instance.probe() for instance in self.instances.values()]
        results = await asyncio.gather(*checks, return_exceptions=True)
        return any(result is True for result in results)

    async def start(self) -> None:
        self._watch()

    async def aclose(self) -> None:
        for task in (self._watcher, self._first):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for instance in [*self.instances.values(), *self._retiring]:
            await instance.aclose()
        self.instances.clear()
        self._retiring.clear()
        await self._template.aclose()

    # -- discovery ------------------------------------------------------------------------

    async def discover(self) -> None:
        """Resolve the name once and poll every worker's queue: new addresses become
        instances, vanished ones retire. A failed resolution keeps the last good set."""
        try:
            addresses = await resolve(self.host, self.port, self.discovery.nameserver)
        except NameNotResolved as exc:
            if self.dns_error is None:
                log.warning(
                    "%s: %s; keeping the last %d worker(s)",
                    self.info.slug,
                    exc,
                    len(self.instances),
                )
            self.dns_error = str(exc)
        else:
            self.dns_error = None
            self.resolved_at = time.time()
            self._update(addresses)
        await asyncio.gather(
            *(instance.refresh_status() for instance in self.instances.values()),
            return_exceptions=True,
        )
        now = self.clock()
        for address, instance in self.instances.items():
            if instance.readiness()[0] and self._skip_until.get(address, 0.0) > now:
                self._skip_until.pop(address)  # a fresh poll found it ready again
        await self._close_retired()

    def _update(self, addresses: list[str]) -> None:
        for address in addresses:
            if address not in self.instances:
                url = urlunsplit(self._parts._replace(netloc=self._netloc(address)))
                config = dataclasses.replace(self.config, url=url, discovery=None)
                self.instances[address] = PixelrouterProvider(config)
                log.info("%s: worker %s found", self.info.slug, address)
        for address in set(self.instances) - set(addresses):
            self._retiring.add(self.instances.pop(address))
            self._skip_until.pop(address, None)
            log.info("%s: worker %s left DNS; it takes no new work", self.info.slug, address)

    async def _close_retired(self) -> None:
        for instance in list(self._retiring):
            if instance.status().in_flight == 0:
                self._retiring.discard(instance)
                await instance.aclose()

    def _netloc(self, address: str) -> str:
        host = f"[{address}]" if ":" in address else address
        auth = self._parts.netloc.rpartition("@")[0]
        return f"{auth}@{host}:{self.port}" if auth else f"{host}:{self.port}"

    def _watch(self) -> None:
        """Start resolving every `interval_s` (once an event loop runs)."""
        if self._watcher is not None:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: the first call starts it
            self._watcher = asyncio.get_running_loop().create_task(self._watch_forever())

    async def _watch_forever(self) -> None:
        while True:
            try:
                await self._discovered(fresh=True)
            except Exception:
                log.exception("%s: discovery failed", self.info.slug)
            await asyncio.sleep(self.discovery.interval_s)

    async def _discovered(self, *, fresh: bool = False) -> None:
        """Wait for a resolution: the first one (or, `fresh`, a new one), shared by callers."""
        self._watch()
        if self._first is None or (fresh and self._first.done()):
            self._first = asyncio.ensure_future(self.discover())
        await asyncio.shield(self._first)

    # -- choice ---------------------------------------------------------------------------

    def _order(self) -> list[str]:
        """Ready workers first, by estimated wait (queue full last, then fewer of our requests
        in flight, ties drawn); then the rest, which may have recovered since the last poll."""

        def key(address: str) -> tuple[bool, bool, float, int, float]:
            instance = self.instances[address]
            status = instance.status()
            usable = instance.readiness()[0] and not self._skipped(address)
            return (
                not usable,
                status.queue_full,
                status.estimated_wait_s,
                status.in_flight,
                self.rng.random(),
            )

        return sorted(self.instances, key=key)

    def _skipped(self, address: str) -> bool:
        return self._skip_until.get(address, 0.0) > self.clock()

    def _ready_count(self) -> int:
        return sum(
            1
            for address, instance in self.instances.items()
            if instance.readiness()[0] and not self._skipped(address)
        )

    def _unresolved_reason(self) -> str:
        if self.dns_error:
            return self.dns_error
        if self.resolved_at is None:
            return f"{self.host} has not been resolved yet"
        return f"{self.host} resolves to no worker"


def _total(values: Any) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None
