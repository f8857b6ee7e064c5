"""The official `openai` Python SDK against pixelrouter: the Images API (generate, edit, both
streamed), chat completions with image output (plain and streamed) and the models calls.

    PIXELROUTER_BASE_URL=http://127.0.0.1:8000/api/v1 PIXELROUTER_API_KEY=... \
    PIXELROUTER_ADMIN_KEY=... python clients/python/openai_sdk.py
"""

from __future__ import annotations

import base64
import typing

import httpx
import openai
from common import (
    MODEL,
    PROMPT,
    Matrix,
    check,
    check_images,
    env,
    ratio_size,
    reference_png,
)

BASE_URL, API_KEY, _ = env()
client = openai.OpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0, timeout=120)
m = Matrix("openai")
IMAGE_OUTPUT = {
    "modalities": ["image"],
    "image_config": {"aspect_ratio": "16:9", "image_size": "0.5K"},
}
SMALL_SIZE = ratio_size("16:9", "0.5K")  # 672x384
REFERENCE = reference_png(320, 240)  # 4:3


def generate(**fields: typing.Any) -> typing.Any:
    fields.setdefault("size", "256x256")
    return client.images.generate(model=MODEL, prompt=PROMPT, **fields)


def edit(image: typing.Any, **fields: typing.Any) -> typing.Any:
    return client.images.edit(model=MODEL, prompt=PROMPT, image=image, **fields)


def message_images(message: typing.Any) -> list[str]:
    """Chat images are an OpenRouter extension: the SDK keeps them in `model_extra`."""
    return [image["image_url"]["url"] for image in (message.model_extra or {}).get("images") or []]


# -- POST /images/generations, /images/edits ----------------------------------------------------


@m.case("images.generate response_format=b64_json n=2")
def _() -> str:
    result = generate(n=2, response_format="b64_json")
    usage = result.usage
    check(usage is not None and usage.output_tokens == 2 * 4096, f"usage {usage}")
    check(usage.total_tokens == usage.input_tokens + usage.output_tokens, f"usage {usage}")
    return (
        check_images([d.b64_json for d in result.data], [(256, 256)] * 2) + f", size {result.size}"
    )


@m.case("images.generate size=auto")
def _() -> str:
    return check_images([d.b64_json for d in generate(size="auto").data], [ratio_size("1:1", "1K")])


for fmt in ("jpeg", "webp"):

    @m.case(f"images.generate output_format={fmt} output_compression=80")
    def _(fmt: str = fmt) -> str:
        result = generate(output_format=fmt, output_compression=80)
        return check_images([d.b64_json for d in result.data], [(256, 256)], fmt.upper())


@m.case("images.generate quality=high background=opaque moderation=low style=vivid user")
def _() -> str:
    result = generate(
        quality="high", background="opaque", moderation="low", style="vivid", user="matrix-user"
    )
    return check_images([d.b64_json for d in result.data], [(256, 256)])


@m.case("images.generate response_format=url (a signed URL from the image store)")
def _() -> str:
    result = generate(response_format="url")
    url = result.data[0].url
    assert url and result.data[0].b64_json is None, result.data[0]
    fetched = httpx.get(url, timeout=60)  # no key: the signature is the credential
    assert fetched.status_code == 200 and fetched.content.startswith(b"\x89PNG"), fetched.text
    return f"{len(fetched.content)} bytes from {url.split('?')[0].rsplit('/', 1)[-1]}"


@m.case("images.generate stream=True n=2")
def _() -> str:
    events = list(generate(n=2, stream=True))
    types = [event.type for event in events]
    check(types == ["image_generation.completed"] * 2, f"events {types}")
    return check_images([event.b64_json for event in events], [(256, 256)] * 2)


@m.case("images.edit one image (multipart image)")
def _() -> str:
    result = edit(("ref.png", REFERENCE, "image/png"))
    # No size: the first reference's ratio (4:3) at the default 1K tier (SPEC §2).
    return check_images([d.b64_json for d in result.data], [ratio_size("4:3", "1K")])


@m.case("images.edit several images size=256x256 n=2 (multipart image[])")
def _() -> str:
    images = [("a.png", REFERENCE, "image/png"), ("b.png", reference_png(256, 256), "image/png")]
    result = edit(images, size="256x256", n=2)
    check(
        result.usage is not None and result.usage.output_tokens == 2 * 4096, f"usage {result.usage}"
    )
    return check_images([d.b64_json for d in result.data], [(256, 256)] * 2)


@m.case("images.edit stream=True")
def _() -> str:
    events = list(edit(("ref.png", REFERENCE, "image/png"), size="256x256", stream=True))
    types = [event.type for event in events]
    check(types and types[-1] == "image_edit.completed", f"events {types}")
    return check_images([events[-1].b64_json], [(256, 256)]) + f", events {types}"


# -- POST /chat/completions ----------------------------------------------------------------------


@m.case("chat.completions.create extra_body modalities/image_config")
def _() -> str:
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], extra_body=IMAGE_OUTPUT
    )
    check(completion.choices[0].finish_reason == "stop", f"{completion.choices[0].finish_reason}")
    check(
        completion.usage is not None and completion.usage.completion_tokens == 4096,
        f"{completion.usage}",
    )
    return check_images(message_images(completion.choices[0].message), [SMALL_SIZE])


@m.case("chat.completions.create image_url reference (4:3)")
def _() -> str:
    content = [
        {"type": "text", "text": PROMPT},
        {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64," + base64.b64encode(REFERENCE).decode()},
        },
    ]
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": content}],
        extra_body={"modalities": ["image"], "image_config": {"image_size": "0.5K"}},
    )
    # No ratio: the first reference's (SPEC §2).
    return check_images(message_images(completion.choices[0].message), [ratio_size("4:3", "0.5K")])


@m.case("chat.completions.create n=2")
def _() -> str:
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], n=2, extra_body=IMAGE_OUTPUT
    )
    images = [url for choice in completion.choices for url in message_images(choice.message)]
    return check_images(images, [SMALL_SIZE] * 2) + f" in {len(completion.choices)} choice(s)"


@m.case("chat.completions.create stream=True stream_options.include_usage")
def _() -> str:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
            extra_body=IMAGE_OUTPUT,
        )
    )
    images = [
        url for chunk in chunks for choice in chunk.choices for url in message_images(choice.delta)
    ]
    finishes = [
        choice.finish_reason for chunk in chunks for choice in chunk.choices if choice.finish_reason
    ]
    check(finishes == ["stop"], f"finish reasons {finishes}")
    check(
        chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4096,
        f"{chunks[-1].usage}",
    )
    return check_images(images, [SMALL_SIZE]) + f", {len(chunks)} chunks"


# -- GET /models -------------------------------------------------------------------------------


@m.case("models.list")
def _() -> str:
    models = list(client.models.list())
    klein = next(model for model in models if model.id == MODEL)
    check(klein.created == 1768348800, f"created {klein.created}")
    return f"{[model.id for model in models]}"


@m.case("models.retrieve(model id)")
def _() -> str:
    model = client.models.retrieve(MODEL)
    check(model.id == MODEL, f"{model}")
    return f"id {model.id}, object {model.object}, owned_by {model.owned_by}"


m.exit()
