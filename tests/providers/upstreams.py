"""Fake upstreams speaking each provider protocol, with a switch for each fault.

`fault` replaces the answer to the protocol's main call (pixelrouter `/images`, openrouter
`/chat/completions`, openai-images `/images/generations|edits`, bfl job submission) with a
transport or HTTP fault; `image_mode` makes an otherwise correct answer carry a bad image:
`wrong_size`, `not_image`, `truncated_png` (a PNG cut in half inside a whole answer) or
`no_image`.
"""

from __future__ import annotations

from typing import Any, Self

from pixelrouter.catalog import ASPECT_RATIOS, parse_size, size_for_ratio
from pixelrouter.providers.bfl import BFLProvider
from pixelrouter.providers.config import ProviderConfig, Timeouts
from pixelrouter.providers.http import HTTPProvider
from pixelrouter.providers.openai_images import OpenAIImagesProvider
from pixelrouter.providers.openrouter import OpenRouterProvider
from pixelrouter.providers.pixelrouter import PixelrouterProvider

from .fake import (
    Action,
    FakeUpstream,
    Reply,
    Reset,
    Seen,
    Stall,
    b64,
    headers_then_stall,
    image_bytes,
    truncated_json_reply,
)

API_KEY = "test-upstream-key-123"

FAULTS: dict[str, Any] = {
    "stall": lambda: Stall(),
    "headers_then_stall": headers_then_stall,
    "500": lambda: Reply(500, {"error": {"message": "upstream exploded"}}),
    "503": lambda: Reply(503, {"detail": "engine loading"}),
    "429": lambda: Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "7"}),
    "malformed_json": lambda: Reply(200, b'{"data": [{"b64', {"Content-Type": "application/json"}),
    "truncated": truncated_json_reply,
    "reset": lambda: Reset(),
    "400": lambda: Reply(400, {"error": {"message": "prompt is too long for this upstream"}}),
    "422": lambda: Reply(422, {"detail": [{"msg": "field required", "loc": ["body", "x"]}]}),
    "401": lambda: Reply(401, {"error": {"message": "invalid api key"}}),
    "402": lambda: Reply(402, {"error": {"message": "insufficient credits"}}),
    "403": lambda: Reply(403, {"error": {"message": "forbidden"}}),
    "404": lambda: Reply(404, {"detail": "Not Found"}),
    "413": lambda: Reply(413, {"error": {"message": "body too large"}}),
    "400_insides": lambda: Reply(
        400,
        {
            "error": {
                "message": "bad size in /srv/upstream/app/handlers.py at 10.2.3.4:8000 "
                "(see http://wiki.internal/x)\nTraceback: ..."
            }
        },
    ),
}


class ProtocolFake:
    kind: str
    prefix: str
    provider_class: type[HTTPProvider]

    def __init__(self) -> None:
        self.fault: str | None = None
        self.image_mode = "ok"
        self.server = FakeUpstream(self.handle)

    @property
    def url(self) -> str:
        return self.server.base + self.prefix

    async def __aenter__(self) -> Self:
        await self.server.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.__aexit__(*exc)

    @property
    def seen(self) -> list[Seen]:
        return self.server.seen

    def calls(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == self.prefix + path]

    def image(self, width: int, height: int, fmt: str = "PNG", index: int = 0) -> bytes:
        if self.image_mode == "wrong_size":
            return image_bytes(width // 2, height // 2, fmt)
        if self.image_mode == "not_image":
            return b"<html>definitely not a picture</html>"
        if self.image_mode == "truncated_png":
            whole = image_bytes(width, height, fmt, color=(10 * index, 100, 200))
            return whole[: len(whole) // 2]
        return image_bytes(width, height, fmt, color=(10 * index, 100, 200))

    def handle(self, seen: Seen) -> Action:
        raise NotImplementedError

    def config(self, **overrides: Any) -> ProviderConfig:
        values: dict[str, Any] = {
            "name": f"fake-{self.kind}",
            "display_name": f"Fake {self.kind}",
            "type": self.kind,
            "url": self.url,
            "api_key": API_KEY,
            "timeouts": Timeouts(connect_s=1.0, first_byte_s=5.0, total_s=10.0),
        }
        values.update(overrides)
        return ProviderConfig(**values)

    def provider(self, **overrides: Any) -> HTTPProvider:
        return self.provider_class(self.config(**overrides))


class PixelrouterFake(ProtocolFake):
    kind = "pixelrouter"
    prefix = "/api/v1"
    provider_class = PixelrouterProvider

    def __init__(self) -> None:
        super().__init__()
        self.engine_status: Reply = Reply(
            200,
            {
                "data": {
                    "state": "ready",
                    "queue_depth": 3,
                    "running_batch": 2,
                    "estimated_wait_s": 1.5,
                    "ready": True,
                    "reason": "ready",
                }
            },
        )
        self.ready: Reply = Reply(200, {"status": "ready"})
        self.images_cap: int | None = None  # answer with at most this many images

    def worker(self, **overrides: Any) -> PixelrouterProvider:
        return PixelrouterProvider(self.config(**overrides))

    def handle(self, seen: Seen) -> Action:
        if seen.path == "/ready":
            return self.ready
        if seen.path == "/api/v1/engine/status":
            return self.engine_status
        if seen.path != "/api/v1/images":
            return Reply(404, {"detail": "Not Found"})
        if self.fault:
            return FAULTS[self.fault]()
        body = seen.json()
        width, height = parse_size(body["size"])
        fmt = body.get("output_format", "png")
        pil = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
        data = []
        if self.image_mode != "no_image":
            data = [
                {"b64_json": b64(self.image(width, height, pil, i)), "media_type": f"image/{fmt}"}
                for i in range(min(body.get("n", 1), self.images_cap or 4))
            ]
        usage = {"prompt_tokens": 11, "completion_tokens": 4096, "total_tokens": 4107}
        return Reply(200, {"created": 1, "data": data, "usage": usage})


class OpenRouterFake(ProtocolFake):
    kind = "openrouter"
    prefix = "/api/v1"
    provider_class = OpenRouterProvider

    def __init__(self) -> None:
        super().__init__()
        self.url_images = False  # answer with http URLs to download instead of data URLs
        self.url_host: str | None = None  # name the files' host so (default: as reached)
        self.files: dict[str, bytes] = {}

    def handle(self, seen: Seen) -> Action:
        if seen.path == "/api/v1/models":
            return Reply(200, {"data": []})
        if seen.path.startswith("/files/"):
            return Reply(200, self.files[seen.path], {"Content-Type": "image/png"})
        if seen.path != "/api/v1/chat/completions":
            return Reply(404, {"detail": "Not Found"})
        if self.fault:
            return FAULTS[self.fault]()
        body = seen.json()
        config = body["image_config"]
        a, b = ASPECT_RATIOS[config["aspect_ratio"]]
        width, height = size_for_ratio(a, b, config["image_size"])
        images = []
        if self.image_mode != "no_image":
            data = self.image(width, height, index=len(self.seen))
            if self.url_images:
                path = f"/files/{len(self.files)}.png"
                self.files[path] = data
                base = self.server.base
                if self.url_host is not None:
                    base = base.replace("127.0.0.1", self.url_host)
                url = base + path
            else:
                url = "data:image/png;base64," + b64(data)
            images = [{"type": "image_url", "image_url": {"url": url}}]
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "" if images else "I cannot draw that.",
        }
        if images:
            message["images"] = images
        return Reply(
            200,
            {
                "id": "gen-up",
                "object": "chat.completion",
                "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 4096, "total_tokens": 4105},
            },
        )


class OpenAIImagesFake(ProtocolFake):
    kind = "openai-images"
    prefix = "/v1"
    provider_class = OpenAIImagesProvider

    def __init__(self) -> None:
        super().__init__()
        self.url_images = False
        self.files: dict[str, bytes] = {}
        self.seed_faults: dict[int, str] = {}  # a fault answered to the call with this seed
        self.b64_override: str | None = None  # sent as every image's b64_json when set

    def handle(self, seen: Seen) -> Action:
        if seen.path == "/v1/models":
            return Reply(200, {"object": "list", "data": [{"id": "flux"}]})
        if seen.path in self.files:
            return Reply(200, self.files[seen.path], {"Content-Type": "image/png"})
        if seen.path not in ("/v1/images/generations", "/v1/images/edits"):
            return Reply(404, {"detail": "Not Found"})
        if self.fault:
            return FAULTS[self.fault]()
        if seen.path.endswith("/edits"):
            fields: dict[str, Any] = dict(seen.form()[0])
        else:
            fields = seen.json()
        if int(fields.get("seed", -1)) in self.seed_faults:
            return FAULTS[self.seed_faults[int(fields["seed"])]]()
        width, height = parse_size(fields["size"])
        data: list[dict[str, Any]] = []
        if self.image_mode != "no_image":
            for i in range(int(fields.get("n", 1))):
                image = self.image(width, height, index=i)
                if self.url_images:
                    path = f"/v1/images/img-{len(self.files)}/content"
                    self.files[path] = image
                    data.append({"url": path})  # SGLang answers with a relative URL
                else:
                    text = self.b64_override if self.b64_override is not None else b64(image)
                    data.append({"b64_json": text, "revised_prompt": None})
        return Reply(200, {"created": 1, "data": data})


class BFLFake(ProtocolFake):
    kind = "bfl"
    prefix = "/v1"
    provider_class = BFLProvider

    def __init__(self, delivery: FakeUpstream | None = None) -> None:
        super().__init__()
        self.delivery = delivery  # where result.sample points; None: this server
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pending_polls = 1  # "Pending" answers before the final one
        self.final_status = "Ready"
        self.poll_faults: list[str] = []  # faults answered to the first polls, in order
        self.files: dict[str, bytes] = {}
        if delivery is not None:
            delivery.handler = self.serve_file

    def serve_file(self, seen: Seen) -> Action:
        if seen.path not in self.files:
            return Reply(404, {"detail": "Not Found"})
        return Reply(200, self.files[seen.path], {"Content-Type": "image/png"})

    def config(self, **overrides: Any) -> Any:
        options = {
            "poll_initial_s": 0.01,
            "poll_max_s": 0.05,
            # The stand-in for BFL's delivery CDN is another loopback server.
            "private_image_urls": True,
            **overrides.pop("options", {}),
        }
        return super().config(options=options, **overrides)

    def handle(self, seen: Seen) -> Action:
        if seen.path == "/v1/get_result":
            return self.poll(seen.query["id"])
        if seen.path in self.files:
            return self.serve_file(seen)
        if seen.path != "/v1/flux-2-klein-4b" or seen.method != "POST":
            return Reply(404, {"detail": "Not Found"})
        if self.fault:
            return FAULTS[self.fault]()
        body = seen.json()
        job_id = f"job-{len(self.jobs)}"
        self.jobs[job_id] = {"body": body, "polls": 0}
        return Reply(
            200,
            {"id": job_id, "polling_url": f"{self.server.base}/v1/get_result?id={job_id}"},
        )

    def poll(self, job_id: str) -> Action:
        if self.poll_faults:
            return FAULTS[self.poll_faults.pop(0)]()
        job = self.jobs.get(job_id)
        if job is None:
            return Reply(404, {"id": job_id, "status": "Task not found"})
        job["polls"] += 1
        if job["polls"] <= self.pending_polls:
            return Reply(200, {"id": job_id, "status": "Pending", "result": None})
        if self.final_status != "Ready":
            return Reply(200, {"id": job_id, "status": self.final_status, "details": "bad"})
        body = job["body"]
        result: dict[str, Any] = {"prompt": body["prompt"], "seed": body["seed"]}
        if self.image_mode != "no_image":
            path = f"/delivery/{job_id}.png"
            data = self.image(body["width"], body["height"], index=int(job_id[4:]))
            host = self.delivery or self.server
            self.files[path] = data
            result["sample"] = host.base + path
        return Reply(200, {"id": job_id, "status": "Ready", "result": result})


FAKES: dict[str, type[ProtocolFake]] = {
    "pixelrouter": PixelrouterFake,
    "openrouter": OpenRouterFake,
    "openai-images": OpenAIImagesFake,
    "bfl": BFLFake,
}
