"""Model entries, the per-megapixel price rule (integer micro-dollars) and size resolution."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal

from pixelrouter.errors import InvalidRequest, NotFound

MICRO_PER_USD = 1_000_000
PIXELS_PER_MP = 1_048_576
PPM = 1_000_000  # parts per million: a share in integers
IMAGE_TOKENS_PER_MP = 4096

MIN_SIDE = 64
MAX_SIDE = 4096
SIDE_MULTIPLE = 16
MAX_PIXELS = 4_194_304

TIERS: dict[str, int] = {"0.5K": 2**18, "1K": 2**20, "2K": 2**22}
DEFAULT_TIER = "1K"
LARGEST_TIER = "2K"
# Other names clients send for a tier. "512", "1024", "2048" name the same areas; "768" and
# "1.5K" lie between two tiers and take the larger (the nearest by ratio of sides, and never
# fewer pixels than asked); "4K"/"4096" ask for more than the model makes and are clamped to
# the largest tier (the generation records both kinds of change).
TIER_ALIASES = {"512": "0.5K", "1024": "1K", "2048": "2K", "768": "1K", "1.5K": "2K"}
ABOVE_LARGEST_TIER = ("4K", "4096")
_ALIASES_UPPER = {name.upper(): tier for name, tier in TIER_ALIASES.items()}
# SPEC §2's ratios, then every further one of the current OpenRouter SDK enum; decimal ratios
# as the equal ratio of integers, so the size formula stays exact.
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1": (1, 1),
    "2:3": (2, 3),
    "3:2": (3, 2),
    "3:4": (3, 4),
    "4:3": (4, 3),
    "4:5": (4, 5),
    "5:4": (5, 4),
    "9:16": (9, 16),
    "16:9": (16, 9),
    "9:21": (9, 21),
    "21:9": (21, 9),
    "1:2": (1, 2),
    "2:1": (2, 1),
    "1:4": (1, 4),
    "4:1": (4, 1),
    "1:8": (1, 8),
    "8:1": (8, 1),
    "2.35:1": (47, 20),
    "5:2": (5, 2),
    "5:7": (5, 7),
    "7:5": (7, 5),
    "9:19.5": (6, 13),
    "19.5:9": (13, 6),
    "9:20": (9, 20),
    "20:9": (20, 9),
}


@dataclass(frozen=True)
class Price:
    """What one output image costs, in integer micro-dollars."""

    first_mp: int
    extra_mp: int
    input_mp: int = 0
    # The share taken off an image made for a batch (`batch_discount = 0.5`: half price), in
    # parts per million so the arithmetic stays in integers; None: the server's default.
    batch_discount_ppm: int | None = None


@dataclass(frozen=True)
class ModelEntry:
    id: str
    canonical_slug: str
    name: str
    created: int
    description: str
    context_length: int
    price: Price
    hf_id: str
    aliases: tuple[str, ...] = ()
    input_modalities: tuple[str, ...] = ("text", "image")
    output_modalities: tuple[str, ...] = ("image",)
    tokenizer: str = "Qwen3"
    family: str = "FLUX"  # what `/models?arch=` matches, beside the tokenizer's group
    distillable: bool = True  # its licence allows training on its outputs (Apache-2.0)
    default_steps: int = 4
    default_guidance: float = 1.0
    max_images_per_request: int = 10  # OpenRouter's bound; the engine runs more than its
    # batch as several batches
    max_reference_images: int = 4
    supported_parameters: tuple[str, ...] = (
        "seed",
        "n",
        "image_config",
        "aspect_ratio",
        "image_size",
        "size",
        "resolution",
        "steps",
        "guidance",
        "output_format",
        "output_compression",
        "input_references",
    )
    # A model variant (`<base id>:<adapter>`, docs/loras.md): the base model's id; None for a
    # catalogue model.
    base_id: str | None = None

    @property
    def modality(self) -> str:
        return "+".join(self.input_modalities) + "->" + "+".join(self.output_modalities)

    @property
    def families(self) -> tuple[str, ...]:
        return (self.family.lower(), self.tokenizer.lower())

    @property
    def author(self) -> str:
        return self.id.split("/", 1)[0]

    @property
    def slug(self) -> str:
        return self.id.split("/", 1)[1]


KLEIN_4B = ModelEntry(
    id="black-forest-labs/flux.2-klein-4b",
    canonical_slug="black-forest-labs/flux.2-klein-4b-20260114",
    name="Black Forest Labs: FLUX.2 Klein 4B",
    created=1768348800,
    description=(
        "FLUX.2 [klein] 4B is the fastest, most cost-effective FLUX.2 model, built for "
        "high-throughput text-to-image generation and editing with up to 4 reference images. "
        "It is distilled to 4 steps at guidance 1.0. Pricing: $0.014 for the first megapixel "
        "of each output image and $0.001 for each further megapixel (rounded up); reference "
        "images are free."
    ),
    context_length=67344,
    price=Price(first_mp=14_000, extra_mp=1_000, input_mp=0),
    hf_id="black-forest-labs/FLUX.2-klein-4B",
    aliases=("black-forest-labs/FLUX.2-klein-4B",),
)


@dataclass
class Catalog:
    """The configured models; data, not code."""

    models: list[ModelEntry] = field(default_factory=lambda: [KLEIN_4B])

    def get(self, model_id: str) -> ModelEntry:
        wanted = model_id.strip().lower()
        for entry in self.models:
            if wanted == entry.id.lower() or wanted in (a.lower() for a in entry.aliases):
                return entry
            if wanted == entry.canonical_slug.lower():
                return entry
        known = ", ".join(m.id for m in self.models)
        raise NotFound(
            f"Model {model_id!r} is not served here. Available models: {known}.",
            metadata={"reason": "model_not_found"},
        )

    @property
    def default(self) -> ModelEntry:
        return self.models[0]


# ---------------------------------------------------------------- prices and tokens


def billable_megapixels(width: int, height: int) -> int:
    """`max(1, ceil(width*height / 2**20))`."""
    return max(1, -(-(width * height) // PIXELS_PER_MP))


def image_price(price: Price, width: int, height: int) -> int:
    """Micro-dollars for one output image of this size."""
    return price.first_mp + (billable_megapixels(width, height) - 1) * price.extra_mp


def batch_price(micro: int, discount_ppm: int) -> int:
    """An image's price with the batch discount taken off, rounded up to a whole micro-dollar."""
    return micro - micro * discount_ppm // PPM


def image_tokens(width: int, height: int) -> int:
    """Completion (image) tokens reported for one image: 4096 per billable megapixel."""
    return IMAGE_TOKENS_PER_MP * billable_megapixels(width, height)


def micro_to_usd(micro: int) -> float:
    """The only place money becomes a float: JSON output (`usage.cost`)."""
    return micro / MICRO_PER_USD


def usd_to_micro(usd: float) -> int:
    """USD from a client or a config file (a limit, a max price) to integer micro-dollars."""
    return round(usd * MICRO_PER_USD)


OUTPUT_FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}


def normalize_output_format(fmt: str | None) -> str:
    """png (default), jpeg (also 'jpg') or webp; a 400 otherwise."""
    if fmt is None:
        return "png"
    chosen = OUTPUT_FORMATS.get(fmt.strip().lower())
    if chosen is None:
        raise InvalidRequest(f"output_format {fmt!r} is not supported: use png, jpeg or webp.")
    return chosen


def per_token_price_string(micro_per_mp: int) -> str:
    """USD per image token as the models API prints it: 0.014/4096 -> '0.00000341796875'."""
    value = Decimal(micro_per_mp) / Decimal(MICRO_PER_USD) / Decimal(IMAGE_TOKENS_PER_MP)
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def estimate_prompt_tokens(prompt: str) -> int:
    """Prompt tokens when no tokenizer is loaded: one per 4 UTF-8 bytes, at least 1."""
    return max(1, math.ceil(len(prompt.encode("utf-8")) / 4))


# ---------------------------------------------------------------- sizes


def size_is_valid(width: int, height: int) -> bool:
    return (
        width % SIDE_MULTIPLE == 0
        and height % SIDE_MULTIPLE == 0
        and MIN_SIDE <= width <= MAX_SIDE
        and MIN_SIDE <= height <= MAX_SIDE
        and width * height <= MAX_PIXELS
    )


def nearest_valid_size(width: int, height: int) -> tuple[int, int]:
    """The valid size closest to (width, height) with about the same aspect ratio."""
    w, h = float(max(width, 1)), float(max(height, 1))
    if w * h > MAX_PIXELS:
        scale = math.sqrt(MAX_PIXELS / (w * h))
        w, h = w * scale, h * scale

    def snap(side: float, floor: bool) -> int:
        n = math.floor(side / SIDE_MULTIPLE) if floor else round(side / SIDE_MULTIPLE)
        return min(MAX_SIDE, max(MIN_SIDE, n * SIDE_MULTIPLE))

    sw, sh = snap(w, False), snap(h, False)
    if sw * sh > MAX_PIXELS:
        sw, sh = snap(w, True), snap(h, True)
    while sw * sh > MAX_PIXELS:  # clamping to 64 can push the other side over
        if sw >= sh:
            sw -= SIDE_MULTIPLE
        else:
            sh -= SIDE_MULTIPLE
    return sw, sh


def check_size(width: int, height: int) -> None:
    """Raise a 400 naming the nearest valid size when (width, height) breaks SPEC §2."""
    if size_is_valid(width, height):
        return
    nw, nh = nearest_valid_size(width, height)
    raise InvalidRequest(
        f"Size {width}x{height} is not supported: each side must be a multiple of 16 between "
        f"{MIN_SIDE} and {MAX_SIDE}, and the image at most {MAX_PIXELS} pixels (4 MP). "
        f"The nearest valid size is {nw}x{nh}.",
        metadata={"nearest_valid_size": f"{nw}x{nh}"},
    )


def parse_size(text: str) -> tuple[int, int]:
    """Parse 'WxH' (also 'W*H', 'W X H'); a 400 when it is not two positive integers."""
    cleaned = text.strip().lower().replace("*", "x").replace(" ", "")
    parts = cleaned.split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise InvalidRequest(
            f"size {text!r} is not understood: use 'WIDTHxHEIGHT' such as '1024x1024', "
            f"or a tier: {', '.join(TIERS)}."
        )
    return int(parts[0]), int(parts[1])


def normalize_tier(text: str) -> str:
    """A tier name (any case) or one of its aliases; a tier above the largest is a 400 here
    (`choose_size` clamps it instead)."""
    upper = text.strip().upper()
    upper = _ALIASES_UPPER.get(upper, upper)
    for tier in TIERS:
        if upper == tier.upper():
            return tier
    raise InvalidRequest(
        f"image_size / resolution {text!r} is not supported: use one of {', '.join(TIERS)} "
        "(also 512, 768, 1024, 1.5K, 2048; 4K is made at 2K)."
    )


def normalize_aspect_ratio(text: str) -> str:
    cleaned = text.strip().lower()
    if cleaned == "auto" or cleaned in ASPECT_RATIOS:
        return cleaned
    raise InvalidRequest(
        f"aspect_ratio {text!r} is not supported: use one of {', '.join(ASPECT_RATIOS)} or auto."
    )


def size_for_ratio(a: int, b: int, tier: str) -> tuple[int, int]:
    """`w = 16*floor(sqrt(A*a/b)/16)`, `h = 16*floor(sqrt(A*b/a)/16)`, in exact integers (not
    always a valid size: 1:8 at 2K is 720x5792)."""
    area = TIERS[tier]
    w = SIDE_MULTIPLE * (math.isqrt(area * a // b) // SIDE_MULTIPLE)
    h = SIDE_MULTIPLE * (math.isqrt(area * b // a) // SIDE_MULTIPLE)
    return w, h


def ratio_matches(width: int, height: int, a: int, b: int) -> bool:
    """True when WxH is a:b up to the 16-pixel rounding of each side."""
    return abs(width * b - height * a) < SIDE_MULTIPLE * (a + b)


@dataclass(frozen=True)
class SizeChoice:
    """The output size of a request and what was changed to reach it (recorded on the
    generation): a tier name mapped or clamped, a reference's ratio fitted."""

    width: int
    height: int
    adjustments: tuple[str, ...] = ()

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def _tier_of(text: str, notes: list[str], field_name: str) -> tuple[str, bool]:
    """(tier, clamped): a tier above the largest becomes the largest, noted."""
    cleaned = text.strip()
    if cleaned.upper() in ABOVE_LARGEST_TIER:
        notes.append(
            f"{field_name} {cleaned} is larger than this model makes: made at {LARGEST_TIER}"
        )
        return LARGEST_TIER, True
    tier = normalize_tier(cleaned)
    if cleaned.upper() in ("768", "1.5K"):
        notes.append(f"{field_name} {cleaned} has no tier of its own: made at {tier}")
    return tier, False


def _ratio_size(a: int, b: int, tier: str, clamped: bool, label: str, notes: list[str]):
    """The formula's size for a:b at `tier`; when that is no valid size, a clamped tier steps
    down to one that works (noted), and an asked one is a 400 naming the tiers that work."""
    width, height = size_for_ratio(a, b, tier)
    if size_is_valid(width, height):
        return width, height
    working = [t for t in TIERS if size_is_valid(*size_for_ratio(a, b, t))]
    if clamped and working:
        fitted = working[-1]
        notes.append(f"aspect_ratio {label} has no valid size at {tier}: made at {fitted}")
        return size_for_ratio(a, b, fitted)
    raise InvalidRequest(
        f"aspect_ratio {label} at {tier} gives {width}x{height}, which is not a valid size "
        f"(sides 64 to 4096, multiples of 16, at most 4 MP). It works at: "
        f"{', '.join(working) or 'no tier'}.",
        metadata={"param": "aspect_ratio"},
    )


def _reference_size(rw: int, rh: int, tier: str, notes: list[str]) -> tuple[int, int]:
    """The first reference's ratio at `tier`; when that size is out of bounds (a 1:8
    reference at 2K), the largest valid size of the same ratio, noted."""
    width, height = size_for_ratio(rw, rh, tier)
    if size_is_valid(width, height):
        return width, height
    exact_w, exact_h = math.sqrt(TIERS[tier] * rw / rh), math.sqrt(TIERS[tier] * rh / rw)
    scale = min(1.0, MAX_SIDE / max(exact_w, exact_h))
    fitted_w, fitted_h = (
        min(MAX_SIDE, max(MIN_SIDE, SIDE_MULTIPLE * math.floor(side * scale / SIDE_MULTIPLE)))
        for side in (exact_w, exact_h)
    )
    notes.append(
        f"the first reference's ratio ({rw}x{rh}) at {tier} gives {width}x{height}, out of "
        f"bounds: made at {fitted_w}x{fitted_h}"
    )
    return fitted_w, fitted_h


def choose_size(
    *,
    size: str | None = None,
    aspect_ratio: str | None = None,
    tier: str | None = None,
    reference_size: tuple[int, int] | None = None,
    tier_field: str = "resolution",
) -> SizeChoice:
    """The output size of a request, per SPEC §2, with what was adjusted on the way.

    `size` may be 'WxH' or a tier name; an explicit 'WxH' wins and is never changed, and
    conflicts with an `aspect_ratio` are a 400. With no size and no ratio (or 'auto'): 1:1,
    or the first reference image's ratio when references are given.
    """
    notes: list[str] = []
    ratio = normalize_aspect_ratio(aspect_ratio) if aspect_ratio else None
    chosen_tier, clamped = _tier_of(tier, notes, tier_field) if tier else (DEFAULT_TIER, False)
    if size is not None and size.strip().lower() not in ("", "auto"):
        stripped = size.strip()
        if _names_a_tier(stripped):
            notes.clear()
            chosen_tier, clamped = _tier_of(stripped, notes, "size")
        else:
            width, height = parse_size(stripped)
            check_size(width, height)
            if ratio and ratio != "auto":
                a, b = ASPECT_RATIOS[ratio]
                if not ratio_matches(width, height, a, b):
                    raise InvalidRequest(
                        f"size {width}x{height} conflicts with aspect_ratio {ratio}: "
                        "give one of them, or a size with that ratio."
                    )
            return SizeChoice(width, height)
    if ratio and ratio != "auto":
        a, b = ASPECT_RATIOS[ratio]
        width, height = _ratio_size(a, b, chosen_tier, clamped, ratio, notes)
    elif reference_size is not None:
        width, height = _reference_size(*reference_size, chosen_tier, notes)
    else:
        width, height = size_for_ratio(1, 1, chosen_tier)
    return SizeChoice(width, height, tuple(notes))


def _names_a_tier(text: str) -> bool:
    upper = text.upper()
    return (
        upper in ABOVE_LARGEST_TIER
        or upper in _ALIASES_UPPER
        or any(upper == t.upper() for t in TIERS)
    )


def resolve_size(
    *,
    size: str | None = None,
    aspect_ratio: str | None = None,
    tier: str | None = None,
    reference_size: tuple[int, int] | None = None,
) -> tuple[int, int]:
    """`choose_size`'s width and height."""
    return choose_size(
        size=size, aspect_ratio=aspect_ratio, tier=tier, reference_size=reference_size
    ).size
