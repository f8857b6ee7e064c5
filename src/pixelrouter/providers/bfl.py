"""The `bfl` provider: Black Forest Labs' asynchronous API.

One image is one job: `POST {url}/{upstream_model}` (header `x-key`) with `prompt`, `width`,
`height`, `seed`, `output_format: "png"` and the references as `input_image`,
`input_image_2`, ... (base64 PNG); the answer names a `polling_url`, polled (with the key) with
a backoff of 0.2 s doubling to 2 s until `status` is `Ready`; then `result.sample`, a signed
URL on a delivery host, is downloaded without the key. Submit, polls and download all fit in
`timeouts.total_s`. A request for `n` images submits `n` jobs at once, seeds `seed + i`.

- PNG is always asked for and encoded here to the request's format and compression, so
  `output_format` and `output_compression` mean what they mean on every other provider.
- klein has no `steps` / `guidance` on BFL (only [flex] has), so they are not declared.
- `Request Moderated` / `Content Moderated` are BFL's moderation refusing this prompt or
  result: a client-side outcome (400, `error_type` "content_policy_violation"), not a provider
  failure, so it is not retried elsewhere (as OpenRouter does with moderation). `Error`,
  `Failed` and `Task not found` are provider failures (fall through).
- A poll that fails transiently (timeout, 5xx, 429) is retried, up to 3 times in a row, so one
  bad poll does not throw away a job already paid for.
- `probe()` is always true: BFL has no free endpoint to ask; routing's outcome windows judge it.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any, ClassVar

from pixelrouter.errors import InvalidRequest, ProviderError, provider_caused
from pixelrouter.providers.http import HTTPProvider
from pixelrouter.providers.upstream_images import Delivered, each_image, reference_pngs
from pixelrouter.types import Encoded, ImageRequest

DECLARED_PARAMETERS = (
    "seed",
    "n",
    "size",
    "image_config",
    "aspect_ratio",
    "image_size",
    "resolution",
    "output_format",
    "output_compression",
    "input_references",
)
PENDING = ("Pending", "Queued", "Processing")
MODERATED = ("Request Moderated", "Content Moderated")
FAILED = ("Error", "Failed", "Task not found")
MAX_TRANSIENT_POLL_FAILURES = 3


class BFLProvider(HTTPProvider):
    kind: ClassVar[str] = "bfl"
    default_parameters: ClassVar[tuple[str, ...]] = DECLARED_PARAMETERS
    max_references: ClassVar[int] = 8

    def auth_headers(self) -> dict[str, str]:
        key = self.config.api_key
        return {"x-key": key} if key else {}

    async def _deliver(self, request: ImageRequest) -> Delivered:
        body: dict[str, Any] = {
            "prompt": request.prompt,
            "width": request.width,
            "height": request.height,
            "output_format": "png",
        }
        for k, png in enumerate(await reference_pngs(request)):
            name = "input_image" if k == 0 else f"input_image_{k + 1}"
            body[name] = base64.b64encode(png).decode("ascii")
        if "safety_tolerance" in self.config.options:
            body["safety_tolerance"] = self.config.options["safety_tolerance"]
        endpoint = f"{self.url}/{self.upstream_model(request)}"

        async def one(index: int) -> tuple[Encoded, int | None]:
            job = await self.post_json(
                endpoint, {**body, "seed": request.seed + index}, what="job submission"
            )
            polling_url = job.get("polling_url")
            if not isinstance(polling_url, str) or not polling_url:
                job_id = job.get("id")
                if not isinstance(job_id, str) or not job_id:
                    raise self.error("accepted the job without an id or a polling_url.")
                polling_url = f"{self.url}/get_result?id={job_id}"
            result = await self._poll(polling_url)
            sample = result.get("sample")
            if not isinstance(sample, str) or not sample:
                raise self.error("reported the job Ready without a result.sample URL.")
            return await self.fetch_image(sample), None

        return await each_image(request, one)

    async def _poll(self, polling_url: str) -> dict[str, Any]:
        """Poll until `Ready` and return `result`; the caller's total timeout bounds it."""
        delay = float(self.config.options.get("poll_initial_s", 0.2))
        longest = float(self.config.options.get("poll_max_s", 2.0))
        # The key goes to the polling URL BFL named (it may be a regional host of BFL's).
        headers = self.auth_headers()
        transient = 0
        what = "job poll"
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)
            try:
                response = await self.send(
                    "GET",
                    polling_url,
                    what=what,
                    auth=False,
                    headers=headers,
                )
                self.check_status(response, what=what)
            except ProviderError as exc:
                transient += 1
                upstream = exc.metadata.get("upstream_status")
                retryable = upstream is None or provider_caused(upstream)
                if not retryable or transient > MAX_TRANSIENT_POLL_FAILURES:
                    raise
                if exc.retry_after_s:
                    delay = max(delay, min(exc.retry_after_s, longest * 4))
                continue
            transient = 0
            payload = self.parse_json(response, what=what)
            status = payload.get("status")
            if status == "Ready":
                result = payload.get("result")
                if not isinstance(result, dict):
                    raise self.error("reported the job Ready without a result.")
                return result
            if status in MODERATED:
                raise InvalidRequest(
                    f"Provider {self.config.display_name} refused the request: {status} "
                    "(BFL's moderation flagged the prompt, a reference or the result).",
                    error_type="content_policy_violation",
                    metadata={"provider_name": self.config.display_name, "bfl_status": status},
                )
            if status in FAILED:
                detail = payload.get("details") or payload.get("error") or ""
                said = f": {str(detail)[:300]}" if detail else "."
                raise self.error(f"reported the job as {status}{said}")
            # Pending, Queued, Processing or a status added later: keep polling.

    async def probe(self) -> bool:
        return True
