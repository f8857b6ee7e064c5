"""A request for more images than one batch holds, as several jobs.

Part k starts at image `offset`, so its seed is `seed + offset` and image i of the request still
uses `seed + i`. Progress is summed over the parts. The images that were made are delivered (and
charged) even when a part fails; only when every part fails does the request fail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from pixelrouter.engine.pipeline import describe_error
from pixelrouter.types import (
    GeneratedImage,
    ImageRequest,
    ImageResult,
    ProgressCallback,
    ProgressEvent,
)

logger = logging.getLogger(__name__)

GenerateJob = Callable[[ImageRequest, ProgressCallback | None], Awaitable[ImageResult]]


async def generate_in_parts(
    generate_job: GenerateJob,
    request: ImageRequest,
    limit: int,
    on_progress: ProgressCallback | None,
) -> ImageResult:
    """`request.n` images as jobs of at most `limit` images, each run by `generate_job`."""
    offsets = list(range(0, request.n, limit))
    parts = [
        dataclasses.replace(
            request,
            id=f"{request.id}.{k}",
            n=min(limit, request.n - offset),
            seed=request.seed + offset,
        )
        for k, offset in enumerate(offsets)
    ]
    steps_done: dict[str, int] = {}
    sizes = {part.id: part.n for part in parts}

    def progress(event: ProgressEvent) -> None:
        # A part's total is its steps once per batch, or once per image when it runs alone
        # (`Job.total_steps`).
        steps_done[event.request_id] = event.step
        if on_progress is not None:
            if request.batching:
                total = event.total_steps * len(parts)
            else:
                total = event.total_steps // sizes[event.request_id] * request.n
            on_progress(ProgressEvent(request.id, sum(steps_done.values()), total))

    outcomes = await asyncio.gather(
        *(generate_job(part, progress) for part in parts), return_exceptions=True
    )
    images: list[GeneratedImage] = []
    results = [o for o in outcomes if isinstance(o, ImageResult)]
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    if not results:
        raise errors[0]
    failed = 0
    for offset, part, outcome in zip(offsets, parts, outcomes, strict=True):
        if not isinstance(outcome, ImageResult):
            failed += part.n
            continue
        for image in outcome.images:
            image.index += offset
            images.append(image)
        failed += outcome.failed_images
    if errors:
        logger.warning(
            "%s: %d of %d parts failed (%s); delivering the %d images made",
            request.id,
            len(errors),
            len(parts),
            describe_error(errors[0], 200),
            len(images),
        )
    first = results[0]
    return dataclasses.replace(
        first,
        request_id=request.id,
        images=tuple(images),
        generation_time_ms=sum(r.generation_time_ms for r in results),
        failed_images=failed,
    )
