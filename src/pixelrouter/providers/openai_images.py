"""The `openai-images` provider: `POST {url}/images/generations` (JSON) and, with reference
images, `POST {url}/images/edits` (multipart), as SGLang, vLLM-Omni, stable-diffusion.cpp and
LocalAI serve them.

- `size` is sent as `"WxH"`, so any valid size is expressible.
- `seed`, `num_inference_steps` and `guidance_scale` are the extension fields SGLang and
  vLLM-Omni read; `options.extensions = false` stops sending them (for a strict server), and
  then `seed`, `steps` and `guidance` are not declared.
- Images are asked for one call each, image `i` with `seed + i`, because a server that makes
  `n` images from one seed does not give image `i` the seed `seed + i` that pixelrouter reports;
  `options.batch_n = true` sends `n` in one call instead (faster on a batching server, seeds
  after the first are then the server's own).
- `options.edits = false` declares a server without `/images/edits`: requests with references
  are then unsupported.
- Edits upload references as `image` (one) or `image[]` (several), as the OpenAI SDK does.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pixelrouter.catalog import KLEIN_4B
from pixelrouter.providers.http import HTTPProvider
from pixelrouter.providers.upstream_images import Delivered, RawImage, each_image, reference_pngs
from pixelrouter.types import Encoded, ImageRequest

EXTENSION_PARAMETERS = ("seed", "steps", "guidance")


class OpenAIImagesProvider(HTTPProvider):
    kind: ClassVar[str] = "openai-images"
    default_parameters: ClassVar[tuple[str, ...]] = KLEIN_4B.supported_parameters

    @property
    def extensions(self) -> bool:
        return bool(self.config.options.get("extensions", True))

    @property
    def edits(self) -> bool:
        return bool(self.config.options.get("edits", True))

    @property
    def batch_n(self) -> bool:
        return bool(self.config.options.get("batch_n", False))

    def declared_parameters(self) -> tuple[str, ...]:
        dropped: set[str] = set()
        if not self.extensions:
            dropped.update(EXTENSION_PARAMETERS)
        if not self.edits:
            dropped.add("input_references")
        return tuple(p for p in self.default_parameters if p not in dropped)

    def unsupported_reason(self, request: ImageRequest) -> str | None:
        if request.references and not self.edits:
            return "it has no /images/edits endpoint for reference images (options.edits)"
        return super().unsupported_reason(request)

    def _fields(self, request: ImageRequest, n: int, seed: int) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "model": self.upstream_model(request),
            "prompt": request.prompt,
            "n": n,
            "size": f"{request.width}x{request.height}",
            "response_format": "b64_json",
        }
        if self.extensions:
            fields["seed"] = seed
            if request.steps is not None:
                fields["num_inference_steps"] = request.steps
            if request.guidance is not None:
                fields["guidance_scale"] = request.guidance
        return fields

    async def _deliver(self, request: ImageRequest) -> Delivered:
        references = await reference_pngs(request)

        async def call(n: int, seed: int) -> tuple[list[Encoded], int | None]:
            fields = self._fields(request, n, seed)
            if references:
                what = "image edit"
                field = "image" if len(references) == 1 else "image[]"
                files = [
                    (field, (f"reference-{k + 1}.png", png, "image/png"))
                    for k, png in enumerate(references)
                ]
                data = {key: str(value) for key, value in fields.items()}
                response = await self.send(
                    "POST", f"{self.url}/images/edits", what=what, data=data, files=files
                )
                self.check_status(response, what=what)
                payload = self.parse_json(response, what=what)
            else:
                payload = await self.post_json(
                    f"{self.url}/images/generations", fields, what="image generation"
                )
            return await self._images(payload, n), _prompt_tokens(payload)

        if self.batch_n:
            images, tokens = await call(request.n, request.seed)
            return Delivered([RawImage(i, data) for i, data in enumerate(images)], tokens)

        async def one(index: int) -> tuple[Encoded, int | None]:
            images, tokens = await call(1, request.seed + index)
            return images[0], tokens

        return await each_image(request, one)

    async def _images(self, payload: dict[str, Any], n: int) -> list[Encoded]:
        data = payload.get("data")
        if not isinstance(data, list) or not data:
            raise self.error("answered without any image (no 'data').")
        images: list[Encoded] = []
        for index, item in enumerate(data[:n]):
            if not isinstance(item, dict):
                raise self.error(f"sent a malformed entry for image {index + 1}.")
            if item.get("b64_json"):
                images.append(self.decode_b64(item["b64_json"]))
            else:
                images.append(await self.fetch_image(item.get("url")))
        return images


def _prompt_tokens(payload: dict[str, Any]) -> int | None:
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    tokens = usage.get("prompt_tokens", usage.get("input_tokens"))
    return tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None
