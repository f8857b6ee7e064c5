"""What of an answer reached the client: the edge's account of one response, so a generation is
charged for the images whose bytes the client received whole, and not for those of a client
that left first (docs/billing.md, "What is charged").

The edge (`EdgeMiddleware`) counts the body bytes it passes to the server and watches the
connection. Under uvicorn on Linux it also reads the socket itself (`ConnectionProbe`): an
image counts once the client's TCP acknowledged its last byte, which a client that stops
reading never does beyond its small receive buffer (a few hundred KiB), however much the
server's and the kernel's buffers took. Elsewhere (another server, the in-process test
transport) a body message counts once the server took it while the connection stayed open.
Routes say where each image's bytes end.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import struct
import termios
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

TCP_INFO_BYTES_ACKED = 120  # offset of `tcpi_bytes_acked` (u64) in Linux's struct tcp_info
ACK_POLL_S = (0.002, 0.05)  # first and longest pause while waiting for the client's ACKs
WITHHELD = -1  # the "end" of an image left out of the answer


class ConnectionProbe:
    """The TCP connection under a response (Linux): how many bytes its peer acknowledged, and
    how many this process handed to it so far (acknowledged, in the kernel's queue, or still
    in the transport's buffer). It reads the socket through a duplicate of its descriptor, so
    what the peer acknowledged can still be read once the server has closed its own (a client
    that read the whole answer and closed at once)."""

    def __init__(self, transport: Any, duplicate: socket.socket) -> None:
        self.transport = transport
        self.socket = duplicate

    @classmethod
    def of(cls, transport: Any) -> ConnectionProbe | None:
        try:
            fileno = transport.get_extra_info("socket").fileno()
            duplicate = socket.socket(fileno=os.dup(fileno))
        except (OSError, ValueError, AttributeError):
            return None
        probe = cls(transport, duplicate)
        if probe.acked() is None:
            probe.close()
            return None
        return probe

    def acked(self) -> int | None:
        try:
            info = self.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 192)
        except (OSError, ValueError):  # closed
            return None
        if len(info) < TCP_INFO_BYTES_ACKED + 8:
            return None
        return int(struct.unpack_from("=Q", info, TCP_INFO_BYTES_ACKED)[0])

    def handed(self) -> int | None:
        """Bytes this process gave the connection so far, as an offset of its byte stream:
        acknowledged plus queued in the kernel (read between two equal readings of the
        acknowledged count, so an acknowledgement in between cannot skew the sum) plus the
        transport's buffer."""
        for _ in range(8):
            acked = self.acked()
            if acked is None:
                return None
            try:
                queued = struct.unpack(
                    "i", fcntl.ioctl(self.socket.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
                )[0]
            except (OSError, ValueError):
                return None
            if self.acked() == acked:
                return acked + int(queued) + int(self.transport.get_write_buffer_size())
        return None

    def close(self) -> None:
        self.socket.close()


@dataclass
class Handoff:
    """One response's account. `tracked` is set by a generation route before it answers."""

    tracked: bool = False
    sent: int = 0  # body bytes passed to the server
    confirmed: int = 0  # body bytes known to have reached the client
    complete: bool = False  # the whole body reached it
    lost: bool = False  # the connection closed before the body was complete
    # Per image: the body offset its bytes end at; None for "at the end of the body".
    image_ends: list[int | None] = field(default_factory=list)
    probe: ConnectionProbe | None = None
    # (body offset, connection offset) after each body message the server took.
    marks: list[tuple[int, int]] = field(default_factory=list)

    def handed(self) -> int | None:
        return self.probe.handed() if self.probe is not None else None

    def mark(self, before: int | None, size: int) -> None:
        """After the server was given a body message of `size` bytes (the connection stood at
        `before`): where its end lies on the connection. A server that did not take it (its
        connection already gone) dropped it: the client left."""
        if self.probe is not None and self.probe.transport.is_closing():
            self.lost = True  # the server dropped it: the connection is gone
            return
        handed = self.handed()
        if handed is None or before is None or handed - before < size:
            return  # not known where it ends: nothing past here is confirmed
        self.marks.append((self.sent, handed))

    def observe(self) -> None:
        """Move `confirmed` to the body offset the client acknowledged (with a probe)."""
        acked = self.probe.acked() if self.probe is not None else None
        if acked is None:
            return
        for body_end, connection_end in self.marks:
            if connection_end <= acked:
                self.confirmed = max(self.confirmed, body_end)

    async def wait_acked(self, timeout_s: float) -> bool:
        """Wait until the client acknowledged everything handed so far (True), or the
        connection ended or the time ran out first (False). A client that read the whole
        answer and closed at once has acknowledged it all: that counts."""
        if self.probe is None:
            return not self.lost
        if not self.marks or self.marks[-1][0] != self.sent:
            return False  # where the last bytes lie on the connection is unknown: unconfirmed
        target = self.marks[-1][1]
        deadline = time.monotonic() + timeout_s
        pause = ACK_POLL_S[0]
        while True:
            acked = self.probe.acked()
            self.observe()
            if acked is not None and acked >= target:
                return True
            if self.lost or acked is None or time.monotonic() > deadline:
                return False
            await asyncio.sleep(pause)
            pause = min(pause * 2, ACK_POLL_S[1])

    def track(self) -> None:
        self.tracked = True

    def images_in_body(self, count: int) -> None:
        """A whole-body answer (JSON): its images are handed over when the body is."""
        self.image_ends.extend([None] * count)

    def images_withheld(self, count: int) -> None:
        """Images made but not put in the answer (they could not be stored): never handed
        over, whatever the answer that goes out instead."""
        self.image_ends.extend([WITHHELD] * count)

    def images_in_next_chunk(self, count: int, chunk_bytes: int) -> None:
        """A stream: the chunk about to be sent holds `count` images, whose bytes end with it."""
        self.image_ends.extend([self.sent + chunk_bytes] * count)

    def delivered_images(self) -> int | None:
        """How many of the registered images reached the client whole; None when no image
        was registered (an error, or a route that answers no images)."""
        if not self.image_ends:
            return None
        return sum(
            1
            for end in self.image_ends
            if end != WITHHELD
            and (self.complete if end is None else self.complete or end <= self.confirmed)
        )

    def close(self) -> None:
        """The response is over: what the client acknowledged is final."""
        if self.probe is not None:
            self.observe()
            self.probe.close()


async def watch_connection(receive: Receive, handoff: Handoff) -> None:
    """Wait for the client's disconnect; one before the body was complete means the rest was
    never handed over. (Once the response is complete the server reports a disconnect too.)"""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not handoff.complete:
                handoff.lost = True
            return


class ConnectionMiddleware:
    """Outermost: lends the edge the server's transport (uvicorn's), so a response's handoff
    can read what the client acknowledged. Any other server works too, without the probe."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # uvicorn's `receive` is its request cycle's method (Starlette wraps `send`).
            transport = getattr(getattr(receive, "__self__", None), "transport", None)
            if transport is not None:
                scope.setdefault("state", {})["transport"] = transport
        await self.app(scope, receive, send)


def track(scope_state: dict[str, object]) -> Handoff | None:
    """The request's handoff, marked as tracked (None outside the HTTP edge)."""
    handoff = scope_state.get("handoff")
    if not isinstance(handoff, Handoff):
        return None
    handoff.track()
    transport = scope_state.get("transport")
    if transport is not None and handoff.probe is None:
        handoff.probe = ConnectionProbe.of(transport)
    return handoff


async def yield_to_disconnects() -> None:
    """Let a disconnect that woke together with a send's flow control be seen first."""
    await asyncio.sleep(0)
