"""What of an answer was handed to the client's connection: the edge's account of one response,
so a generation is charged for the images whose bytes went out whole, and not for those of a
client that left first (docs/billing.md, "What is charged").

The edge (`EdgeMiddleware`) counts the body bytes it passes to the server and watches the
connection: a body message that the server took while the connection stayed open was handed
over, and the server's flow control makes its next message wait until the earlier bytes left
this process (down to its low-water mark, a few KiB). The last message is followed by an empty
one, so the end of the body is confirmed the same way. Routes say where each image's bytes end.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from starlette.types import Receive


@dataclass
class Handoff:
    """One response's account. `tracked` is set by a generation route before it answers."""

    tracked: bool = False
    sent: int = 0  # body bytes passed to the server
    confirmed: int = 0  # body bytes known to have been handed to the connection
    complete: bool = False  # the whole body was handed over
    lost: bool = False  # the connection closed before the body was complete
    # Per image: the body offset its bytes end at; None for "at the end of the body".
    image_ends: list[int | None] = field(default_factory=list)

    def track(self) -> None:
        self.tracked = True

    def images_in_body(self, count: int) -> None:
        """A whole-body answer (JSON): its images are handed over when the body is."""
        self.image_ends.extend([None] * count)

    def images_in_next_chunk(self, count: int, chunk_bytes: int) -> None:
        """A stream: the chunk about to be sent holds `count` images, whose bytes end with it."""
        self.image_ends.extend([self.sent + chunk_bytes] * count)

    def delivered_images(self) -> int | None:
        """How many of the registered images went out whole; None when no image was
        registered (an error, or a route that answers no images)."""
        if not self.image_ends:
            return None
        return sum(
            1
            for end in self.image_ends
            if (self.complete if end is None else self.complete or end <= self.confirmed)
        )


async def watch_connection(receive: Receive, handoff: Handoff) -> None:
    """Wait for the client's disconnect; one before the body was complete means the rest was
    never handed over. (Once the response is complete the server reports a disconnect too.)"""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not handoff.complete:
                handoff.lost = True
            return


def track(scope_state: dict[str, object]) -> Handoff | None:
    """The request's handoff, marked as tracked (None outside the HTTP edge)."""
    handoff = scope_state.get("handoff")
    if isinstance(handoff, Handoff):
        handoff.track()
        return handoff
    return None


async def settle_order() -> None:
    """Let a disconnect that woke together with a send's flow control be seen first."""
    await asyncio.sleep(0)
