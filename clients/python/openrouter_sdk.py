"""The official `openrouter` Python SDK (1.3.x) against pixelrouter: every call of the SDK that
maps to an endpoint of SPEC §3, with the request fields the SDK offers for it.

    PIXELROUTER_BASE_URL=http://127.0.0.1:8000/api/v1 PIXELROUTER_API_KEY=... \
    PIXELROUTER_ADMIN_KEY=... python clients/python/openrouter_sdk.py
"""

from __future__ import annotations

import datetime
import typing
import warnings

from common import (
    AUTHOR,
    MODEL,
    PROMPT,
    SLUG,
    Matrix,
    SentRequests,
    check,
    check_images,
    data_url,
    decode,
    env,
    ratio_size,
    reference_png,
)
from openrouter import OpenRouter, components, utils

# The SDK deprecates its own model of GET /key's `rate_limit` (a field it still requires).
warnings.filterwarnings("ignore", category=DeprecationWarning)

BASE_URL, API_KEY, ADMIN_KEY = env()
NO_RETRIES = utils.RetryConfig("none", utils.BackoffStrategy(1, 1, 1.0, 1), False)
SMALL = {"aspect_ratio": "16:9", "image_size": "0.5K"}  # 672x384, SPEC §2
SMALL_SIZE = [ratio_size("16:9", "0.5K")]
MESSAGES = [{"role": "user", "content": PROMPT}]
SESSION = "client-matrix-session-1"

sent = SentRequests()  # installed before the SDK makes its httpx clients
user = OpenRouter(api_key=API_KEY, server_url=BASE_URL, retry_config=NO_RETRIES, timeout_ms=120_000)
admin = OpenRouter(
    api_key=ADMIN_KEY, server_url=BASE_URL, retry_config=NO_RETRIES, timeout_ms=120_000
)
m = Matrix("openrouter")
state: dict[str, typing.Any] = {}


def chat_images(result: components.ChatResult) -> list[str]:
    return [image.image_url.url for image in result.choices[0].message.images or []]


def chat(**fields: typing.Any) -> components.ChatResult:
    fields.setdefault("image_config", SMALL)
    return user.chat.send(model=MODEL, messages=MESSAGES, modalities=["image"], **fields)


def image(**fields: typing.Any) -> components.ImageGenerationResponse:
    fields.setdefault("size", "256x256")
    return user.images.generate(model=MODEL, prompt=PROMPT, **fields)


def record(generation_id: str) -> components.GenerationResponseData:
    return user.generations.get_generation(id=generation_id).data


# -- POST /chat/completions -----------------------------------------------------------------


@m.case("chat.send")
def _() -> str:
    result = chat(seed=3)
    state["chat_id"] = result.id
    check(
        result.object == "chat.completion" and result.model == MODEL,
        f"{result.object} {result.model}",
    )
    check(
        result.choices[0].finish_reason == "stop",
        f"finish_reason {result.choices[0].finish_reason}",
    )
    check(result.usage.completion_tokens == 4096, f"usage {result.usage}")
    return check_images(chat_images(result), SMALL_SIZE) + f", cost {result.usage.cost}"


@m.case("chat.send stream=True")
def _() -> str:
    with chat(stream=True) as events:
        chunks = list(events)
    check(chunks and chunks[0].choices[0].delta.role == "assistant", "first chunk has no role")
    finishes = [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]
    check(finishes == ["stop"], f"finish reasons {finishes}")
    check(chunks[-1].choices == [] and chunks[-1].usage is not None, "no final usage chunk")
    # openrouter 1.3.x's ChatStreamDelta has no `images` field: the SDK drops streamed images.
    tokens = chunks[-1].usage.completion_tokens
    return f"{len(chunks)} chunks, usage {tokens} tokens (the SDK's delta has no images field)"


@m.case("chat.send image_config steps/guidance/seed passthrough")
def _() -> str:
    config = {"aspect_ratio": "1:1", "image_size": "0.5K", "steps": 2, "guidance": 1.0, "seed": 5}
    return check_images(chat_images(chat(image_config=config)), [ratio_size("1:1", "0.5K")])


@m.case("chat.send models=[...] (model fallbacks)")
def _() -> str:
    result = user.chat.send(
        models=[MODEL], messages=MESSAGES, modalities=["image"], image_config=SMALL
    )
    return check_images(chat_images(result), SMALL_SIZE)


@m.case("chat.send image_url reference (4:3) image_size=0.5K")
def _() -> str:
    content = [
        {"type": "text", "text": PROMPT},
        {"type": "image_url", "image_url": {"url": data_url(reference_png(320, 240))}},
    ]
    result = user.chat.send(
        model=MODEL,
        messages=[{"role": "user", "content": content}],
        modalities=["image"],
        image_config={"image_size": "0.5K"},
    )
    # No ratio: the first reference's (SPEC §2).
    return check_images(chat_images(result), [ratio_size("4:3", "0.5K")])


@m.case("chat.send text-model parameters (accepted, ignored)")
def _() -> str:
    result = chat(
        temperature=0.7,
        top_p=0.9,
        max_tokens=100,
        stop=["\n"],
        frequency_penalty=0.1,
        presence_penalty=0.1,
        reasoning={"effort": "low"},
        response_format={"type": "text"},
    )
    return check_images(chat_images(result), SMALL_SIZE)


@m.case("chat.send session_id/trace/metadata/user + attribution headers")
def _() -> str:
    result = chat(
        session_id=SESSION,
        trace={"trace_id": "trace-1", "trace_name": "matrix", "span_name": "chat"},
        metadata={"purpose": "client-matrix"},
        user="matrix-user",
        http_referer="https://matrix.example",
        x_open_router_title="Client matrix",
        x_open_router_categories="cli-agent",
    )
    state["session_chat_id"] = result.id
    return check_images(chat_images(result), SMALL_SIZE)


PROVIDER_PREFERENCES = {
    "sort=exacto": {"sort": "exacto"},
    "sort={by,partition}": {"sort": {"by": "price", "partition": "none"}},
    "preferred_max_latency/preferred_min_throughput": {
        "preferred_max_latency": {"p50": 60, "p90": 120},
        "preferred_min_throughput": 1,
    },
    "max_price (strings)": {"max_price": {"image": "0.05", "request": "0.5"}},
    "order/only/ignore/allow_fallbacks/require_parameters/data_collection/zdr": {
        "order": ["local"],
        "only": ["local"],
        "ignore": ["somebody-else"],
        "allow_fallbacks": True,
        "require_parameters": False,
        "data_collection": "allow",
        "zdr": False,
        "enforce_distillable_text": False,
    },
}
for label, provider in PROVIDER_PREFERENCES.items():

    @m.case(f"chat.send provider.{label}")
    def _(provider: dict[str, typing.Any] = provider) -> str:
        return check_images(chat_images(chat(provider=provider)), SMALL_SIZE)


@m.case("chat.send provider.options['black-forest-labs'].steps")
def _() -> str:
    plain = chat_images(chat(seed=11))
    steered = chat_images(chat(seed=11, provider={"options": {"black-forest-labs": {"steps": 1}}}))
    options = sent.last("/chat/completions")[0].get("provider", {}).get("options")
    check(
        plain != steered,
        f"the SDK sent provider.options={options}; the image is byte-identical "
        "to the same seed without options: pixelrouter ignored them",
    )
    return f"SDK sent provider.options={options}; applied"


# -- POST /images -------------------------------------------------------------------------------


@m.case("images.generate size=256x256 n=2")
def _() -> str:
    result = image(n=2, seed=1)
    usage = result.usage
    check(
        usage.completion_tokens == 2 * 4096
        and usage.completion_tokens_details.image_tokens == 2 * 4096,
        f"usage {usage}",
    )
    check(all(d.media_type == "image/png" for d in result.data), "media_type")
    state["image_created"] = result.created
    return (
        check_images([d.b64_json for d in result.data], [(256, 256)] * 2) + f", cost {usage.cost}"
    )


@m.case("images.generate size=0.5K aspect_ratio=16:9")
def _() -> str:
    return check_images(
        [d.b64_json for d in image(size="0.5K", aspect_ratio="16:9").data], SMALL_SIZE
    )


RATIOS = typing.get_args(typing.get_args(components.ImageGenerationRequestAspectRatio)[0])


@m.case(f"images.generate resolution=512 aspect_ratio=<each of {len(RATIOS)} SDK ratios>")
def _() -> str:
    bad = []
    for ratio in RATIOS:
        try:
            got = image(size=None, resolution="512", aspect_ratio=ratio).data
            # `auto` without references is 1:1 (SPEC §2).
            check_images(
                [d.b64_json for d in got], [ratio_size(ratio.replace("auto", "1:1"), "0.5K")]
            )
        except Exception as exc:  # noqa: BLE001 - collect every ratio that fails
            bad.append(f"{ratio}: {type(exc).__name__}: {str(exc)[:200]}")
    check(not bad, "; ".join(bad))
    return f"{len(RATIOS)} ratios, each at its SPEC size"


# The SDK's `resolution` enum -> the accepted sizes (SPEC §2: 768 and 1.5K map to a nearest
# tier, 4K is clamped to 2K).
TIER_SIZES = {
    "512": [(512, 512)],
    "768": [(512, 512), (1024, 1024)],
    "1K": [(1024, 1024)],
    "1.5K": [(1024, 1024), (2048, 2048)],
    "2K": [(2048, 2048)],
    "4K": [(2048, 2048)],
}


@m.case("images.generate resolution=<each SDK tier>")
def _() -> str:
    bad, seen = [], []
    for tier, allowed in TIER_SIZES.items():
        try:
            got = decode(image(size=None, resolution=tier).data[0].b64_json).size
            check(got in allowed, f"{got[0]}x{got[1]}, expected {' or '.join(map(str, allowed))}")
            seen.append(f"{tier}->{got[0]}x{got[1]}")
        except Exception as exc:  # noqa: BLE001 - collect every tier that fails
            bad.append(f"{tier}: {type(exc).__name__}: {str(exc)[:200]}")
    check(not bad, "; ".join(bad))
    return ", ".join(seen)


for fmt, media_type in (("jpeg", "image/jpeg"), ("webp", "image/webp")):

    @m.case(f"images.generate output_format={fmt} output_compression=80")
    def _(fmt: str = fmt, media_type: str = media_type) -> str:
        result = image(output_format=fmt, output_compression=80)
        check(result.data[0].media_type == media_type, f"media_type {result.data[0].media_type}")
        return check_images([result.data[0].b64_json], [(256, 256)], fmt.upper())


@m.case("images.generate quality=high background=opaque")
def _() -> str:
    return check_images(
        [d.b64_json for d in image(quality="high", background="opaque").data], [(256, 256)]
    )


@m.case("images.generate input_references (4:3 reference, resolution=512)")
def _() -> str:
    ref = {"type": "image_url", "image_url": {"url": data_url(reference_png(320, 240))}}
    result = image(size=None, resolution="512", input_references=[ref])
    return check_images([d.b64_json for d in result.data], [ratio_size("4:3", "0.5K")])


@m.case("images.generate session_id/trace/user/seed")
def _() -> str:
    result = image(session_id=SESSION, trace={"trace_id": "trace-2"}, user="matrix-user", seed=9)
    # The Image API response has no id; the generation id is the X-Generation-Id header.
    state["session_image_id"] = sent.last("/images")[1]
    return check_images([d.b64_json for d in result.data], [(256, 256)])


for label, provider in {
    "sort=exacto": {"sort": "exacto"},
    "order/only/ignore/allow_fallbacks": {
        "order": ["local"],
        "only": ["local"],
        "ignore": ["somebody-else"],
        "allow_fallbacks": True,
    },
}.items():

    @m.case(f"images.generate provider.{label}")
    def _(provider: dict[str, typing.Any] = provider) -> str:
        return check_images([d.b64_json for d in image(provider=provider).data], [(256, 256)])


@m.case("images.generate provider.options['black-forest-labs'].steps")
def _() -> str:
    plain = image(seed=11).data[0].b64_json
    steered = (
        image(seed=11, provider={"options": {"black-forest-labs": {"steps": 1}}}).data[0].b64_json
    )
    options = sent.last("/images")[0].get("provider", {}).get("options")
    check(
        plain != steered,
        f"the SDK sent provider.options={options}; the image is byte-identical "
        "to the same seed without options: pixelrouter ignored them",
    )
    return f"SDK sent provider.options={options}; applied"


@m.case("images.generate stream=True n=2")
def _() -> str:
    with image(n=2, stream=True) as events:
        received = list(events)
    types = [event.type for event in received]
    check(types == ["image_generation.completed"] * 2, f"events {types}")
    check(received[-1].usage is not None, "no usage on the last event")
    return check_images([event.b64_json for event in received], [(256, 256)] * 2)


# -- GET /generation ---------------------------------------------------------------------------


@m.case("generations.get_generation")
def _() -> str:
    data = record(state["chat_id"])
    check(data.id == state["chat_id"] and data.model == MODEL, f"{data.id} {data.model}")
    check(
        data.native_tokens_completion_images == 4096 and data.num_media_completion == 1, f"{data}"
    )
    check(
        data.provider_responses and data.provider_responses[0].status == 200,
        f"{data.provider_responses}",
    )
    check(admin.generations.get_generation(id=data.id).data.id == data.id, "management key read")
    return f"total_cost {data.total_cost}, latency {data.latency} ms, provider {data.provider_name}"


@m.case("generations.get_generation session_id/http_referer/external_user (chat)")
def _() -> str:
    data = record(state["session_chat_id"])
    got = {k: getattr(data, k) for k in ("session_id", "http_referer", "external_user")}
    want = {
        "session_id": SESSION,
        "http_referer": "https://matrix.example",
        "external_user": "matrix-user",
    }
    wrong = {k: got[k] for k in want if got[k] != want[k]}
    check(
        not wrong,
        f"the generation record has {wrong} (Unset() = absent), the chat request sent {want}",
    )
    return str(got)


@m.case("generations.get_generation session_id/external_user (images)")
def _() -> str:
    data = record(state["session_image_id"])
    got = {k: getattr(data, k) for k in ("session_id", "external_user")}
    want = {"session_id": SESSION, "external_user": "matrix-user"}
    wrong = {k: got[k] for k in want if got[k] != want[k]}
    check(
        not wrong,
        f"the generation record has {wrong} (Unset() = absent), the /images request sent {want}",
    )
    return str(got)


# -- Catalogue ---------------------------------------------------------------------------------


def listed(**filters: typing.Any) -> list[str]:
    return [model.id for model in user.models.list(**filters).result.data]


@m.case("models.list")
def _() -> str:
    response = user.models.list()
    klein = next(model for model in response.result.data if model.id == MODEL)
    check(klein.architecture.output_modalities == ["image"], f"{klein.architecture}")
    check(response.next() is None, "a second page after a complete first page")
    return f"{len(response.result.data)} model(s), links.details {klein.links.details}"


for name, value in {
    "q": "gpt",
    "supported_parameters": "tools",
    "input_modalities": "audio",
    "output_modalities": "text",
    "category": "programming",
    "context": 100_000,
    "max_price": 0.1,
}.items():

    @m.case(f"models.list {name}={value!r} (must not match klein)")
    def _(name: str = name, value: typing.Any = value) -> str:
        ids = listed(**{name: value})
        check(
            MODEL not in ids, f"GET /models?{name}={value} still lists {ids}: the filter is ignored"
        )
        return f"{len(ids)} model(s)"


for name, value in {
    "output_modalities": "image",
    "q": "klein",
    "model_authors": "black-forest-labs",
    "input_modalities": "image",
    "supported_parameters": "seed",
    "max_price": 1.0,
    "sort": "newest",
}.items():

    @m.case(f"models.list {name}={value!r} (must match klein)")
    def _(name: str = name, value: typing.Any = value) -> str:
        ids = listed(**{name: value})
        check(MODEL in ids, f"GET /models?{name}={value} lists {ids}, not {MODEL}")
        return f"{len(ids)} model(s)"


@m.case("models.list limit=1 pagination")
def _() -> str:
    first = user.models.list(limit=1, offset=0)
    check([model.id for model in first.result.data] == [MODEL], f"{first.result.data}")
    second = first.next()  # a full page of 1: the SDK asks for offset=1
    rest = [model.id for model in second.result.data] if second else []
    check(MODEL not in rest, f"offset=1 lists {rest} again: offset is ignored")
    return f"page 2: {rest}"


@m.case("models.list_for_user(output_modalities=image) (GET /models/user)")
def _() -> str:
    response = user.models.list_for_user(security={"bearer": API_KEY}, output_modalities="image")
    ids = [model.id for model in response.result.data]
    check(MODEL in ids, f"GET /models/user lists {ids}")
    return f"{ids}"


@m.case("models.count")
def _() -> str:
    count = user.models.count().data.count
    check(count == len(listed()), f"count {count} != {len(listed())} listed")
    image_count = user.models.count(output_modalities="image").data.count
    check(image_count >= 1, f"count(output_modalities=image) = {image_count}")
    return f"count {count}, image {image_count}"


@m.case("models.get(author, slug)")
def _() -> str:
    model = user.models.get(author=AUTHOR, slug=SLUG).data
    check(model.id == MODEL, model.id)
    return model.canonical_slug


@m.case("endpoints.list(author, slug)")
def _() -> str:
    data = user.endpoints.list(author=AUTHOR, slug=SLUG).data
    check(data.id == MODEL and data.endpoints, f"{data}")
    endpoint = data.endpoints[0]
    check(endpoint.model_id == MODEL and endpoint.status == 0, f"{endpoint}")
    return f"{len(data.endpoints)} endpoint(s): {[e.provider_name for e in data.endpoints]}"


@m.case("images.list_models")
def _() -> str:
    ids = [model.id for model in user.images.list_models().data]
    check(MODEL in ids, f"{ids}")
    return f"{ids}"


@m.case("images.list_model_endpoints(author, slug)")
def _() -> str:
    data = user.images.list_model_endpoints(author=AUTHOR, slug=SLUG)
    pricing = [(p.unit, p.cost_usd, p.variant) for p in data.endpoints[0].pricing]
    check(pricing == [("megapixel", 0.014, None), ("megapixel", 0.001, "additional")], f"{pricing}")
    return f"{pricing}"


@m.case("providers.list")
def _() -> str:
    providers = user.providers.list().data
    check(providers, "empty provider list")
    return f"{[p.slug for p in providers]}"


# -- Keys, credits, activity -------------------------------------------------------------------


@m.case("api_keys.get_current_key_metadata")
def _() -> str:
    mine = user.api_keys.get_current_key_metadata().data
    check(mine.is_management_key is False, "inference key reported as management key")
    check(
        admin.api_keys.get_current_key_metadata().data.is_management_key is True, "management key"
    )
    return f"label {mine.label}, usage {mine.usage}"


@m.case("api_keys.create/list/get/update/delete")
def _() -> str:
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30)
    created = admin.api_keys.create(
        name="matrix",
        limit=1.0,
        limit_reset="monthly",
        expires_at=expires,
        include_byok_in_limit=False,
    )
    key_hash = created.data.hash
    check(created.key.startswith("sk-pr-v1-") and created.data.limit == 1.0, f"{created.data}")
    check(
        key_hash in [k.hash for k in admin.api_keys.list(include_disabled=True).data], "not listed"
    )
    check(admin.api_keys.get(hash=key_hash).data.name == "matrix", "get")
    updated = admin.api_keys.update(
        hash=key_hash, name="matrix-2", disabled=True, limit=2.0, limit_reset="weekly"
    ).data
    check(
        (updated.name, updated.disabled, updated.limit, updated.limit_reset)
        == ("matrix-2", True, 2.0, "weekly"),
        f"{updated}",
    )
    check(admin.api_keys.delete(hash=key_hash).DELETED is True, "delete")
    expires_at = created.data.expires_at
    return f"created, listed, read, updated, deleted {key_hash[:12]}...; expires_at {expires_at}"


@m.case("credits.get_credits")
def _() -> str:
    data = admin.credits.get_credits().data
    return f"total_credits {data.total_credits}, total_usage {data.total_usage}"


@m.case("analytics.get_user_activity")
def _() -> str:
    rows = admin.analytics.get_user_activity().data  # the last 30 completed UTC days
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    dated = admin.analytics.get_user_activity(request={"date_": today}).data
    check(dated, f"no activity row for {today} after this program's generations")
    return f"{len(rows)} row(s) for the last 30 completed days; {len(dated)} for {today}"


m.exit()
