"""A real DNS server for the tests (dnslib, UDP and TCP on loopback) whose answers a test
changes while it runs: the name of a worker pool and the addresses it has now."""

from __future__ import annotations

import socket
import threading
from typing import Any

from dnslib import QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSServer


class Zone(BaseResolver):  # type: ignore[misc]
    """name → addresses; a name not held is NXDOMAIN."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: dict[str, list[str]] = {}
        self.queries = 0

    def set(self, name: str, addresses: list[str]) -> None:
        with self._lock:
            self._names[name.rstrip(".").lower()] = list(addresses)

    def drop(self, name: str) -> None:
        with self._lock:
            self._names.pop(name.rstrip(".").lower(), None)

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        with self._lock:
            self.queries += 1
            addresses = self._names.get(name)
        if addresses is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.A:
            for address in addresses:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=1))
        return reply


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class DNS:
    """The zone served on 127.0.0.1:`port` (UDP) until `stop()`."""

    def __init__(self) -> None:
        self.zone = Zone()
        self.port = free_udp_port()
        self._server = DNSServer(self.zone, port=self.port, address="127.0.0.1", logger=_Quiet())
        self._server.start_thread()

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.stop()


class _Quiet:
    """dnslib's logger interface, silent."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None
