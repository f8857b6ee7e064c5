"""The pure rules of SPEC §1–2: sizes, ratios, tiers, prices and usage tokens."""

from __future__ import annotations

import pytest

from pixelrouter.catalog import (
    ASPECT_RATIOS,
    KLEIN_4B,
    TIERS,
    Catalog,
    SizeChoice,
    billable_megapixels,
    check_size,
    choose_size,
    image_price,
    image_tokens,
    nearest_valid_size,
    per_token_price_string,
    resolve_size,
    size_is_valid,
)
from pixelrouter.errors import InvalidRequest, NotFound

# SPEC §2 formula, written out independently with floats for the check.
EXPECTED_1K = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (880, 1168),
    "4:3": (1168, 880),
    "4:5": (912, 1136),
    "5:4": (1136, 912),
    "9:16": (768, 1360),
    "16:9": (1360, 768),
    "9:21": (656, 1552),
    "21:9": (1552, 656),
}


@pytest.mark.parametrize("ratio", list(ASPECT_RATIOS))
@pytest.mark.parametrize("tier", list(TIERS))
def test_every_ratio_and_tier_follows_the_formula(ratio: str, tier: str) -> None:
    import math

    a, b = ASPECT_RATIOS[ratio]
    area = TIERS[tier]
    want = (
        16 * math.floor(math.sqrt(area * a / b) / 16),
        16 * math.floor(math.sqrt(area * b / a) / 16),
    )
    if not size_is_valid(*want):  # 1:8 and 8:1 at 2K: a 400 that names the tiers that work
        with pytest.raises(InvalidRequest, match="It works at: 0.5K, 1K"):
            resolve_size(aspect_ratio=ratio, tier=tier)
        return
    got = resolve_size(aspect_ratio=ratio, tier=tier)
    assert got == want
    assert size_is_valid(*got)


def test_the_sdk_ratios_are_all_known() -> None:
    sdk = [
        "1:2",
        "2:1",
        "1:4",
        "4:1",
        "1:8",
        "8:1",
        "2.35:1",
        "5:2",
        "5:7",
        "7:5",
        "9:19.5",
        "19.5:9",
        "9:20",
        "20:9",
    ]
    assert set(sdk) <= set(ASPECT_RATIOS)
    assert resolve_size(aspect_ratio="2.35:1") == (1568, 656)  # 47:20, exactly 2.35
    assert resolve_size(aspect_ratio="9:19.5") == (688, 1504)  # 6:13
    assert resolve_size(aspect_ratio="1:8") == (352, 2896)


def test_tier_names_between_tiers_take_the_larger_and_are_noted() -> None:
    assert choose_size(tier="768") == SizeChoice(
        1024, 1024, ("resolution 768 has no tier of its own: made at 1K",)
    )
    assert choose_size(size="1.5K", aspect_ratio="16:9").size == (2720, 1536)
    assert choose_size(size="1.5K").adjustments == ("size 1.5K has no tier of its own: made at 2K",)
    assert choose_size(tier="1K").adjustments == ()


def test_a_tier_above_the_largest_is_clamped_and_noted() -> None:
    choice = choose_size(tier="4K", aspect_ratio="16:9", tier_field="image_size")
    assert choice.size == (2720, 1536)
    assert choice.adjustments == ("image_size 4K is larger than this model makes: made at 2K",)
    # Clamped, 1:8 has no valid size at 2K either: the largest tier that works, noted.
    choice = choose_size(tier="4k", aspect_ratio="1:8")
    assert choice.size == (352, 2896)
    assert len(choice.adjustments) == 2
    # An explicit size is never changed.
    with pytest.raises(InvalidRequest, match="nearest valid size is 2048x2048"):
        choose_size(size="4096x4096")


def test_an_out_of_bounds_reference_ratio_keeps_its_ratio_and_is_noted() -> None:
    choice = choose_size(reference_size=(100, 800), tier="2K")
    assert choice.size == (512, 4096)
    assert "out of bounds: made at 512x4096" in choice.adjustments[0]
    assert choose_size(reference_size=(100, 800)).adjustments == ()


def test_spec_examples() -> None:
    for ratio, size in EXPECTED_1K.items():
        assert resolve_size(aspect_ratio=ratio) == size
    assert resolve_size(aspect_ratio="1:1", tier="2K") == (2048, 2048)
    assert resolve_size(aspect_ratio="1:1", tier="0.5K") == (512, 512)
    assert resolve_size() == (1024, 1024)
    assert resolve_size(aspect_ratio="auto") == (1024, 1024)
    assert resolve_size(tier="2k") == (2048, 2048)  # tiers are case-insensitive
    assert resolve_size(tier="512") == (512, 512)  # the OpenRouter SDK's name for 0.5K
    assert resolve_size(size="512", aspect_ratio="16:9") == (672, 384)


def test_explicit_size_wins_and_tier_names_work_as_size() -> None:
    assert resolve_size(size="1360x768", tier="2K") == (1360, 768)
    assert resolve_size(size="2K") == (2048, 2048)
    assert resolve_size(size="0.5K", aspect_ratio="16:9") == (672, 384)
    assert resolve_size(size="auto") == (1024, 1024)
    assert resolve_size(size="1360x768", aspect_ratio="16:9") == (1360, 768)


def test_size_conflicting_with_ratio_is_a_400() -> None:
    with pytest.raises(InvalidRequest, match="conflicts with aspect_ratio"):
        resolve_size(size="1024x1024", aspect_ratio="16:9")


def test_references_give_the_ratio_when_none_is_asked() -> None:
    assert resolve_size(reference_size=(1920, 1080)) == (1360, 768)
    assert resolve_size(reference_size=(1920, 1080), aspect_ratio="auto") == (1360, 768)
    assert resolve_size(reference_size=(1920, 1080), aspect_ratio="1:1") == (1024, 1024)


@pytest.mark.parametrize(
    ("size", "nearest"),
    [
        ("1000x1000", "992x992"),
        ("5000x5000", "2048x2048"),
        ("32x32", "64x64"),
        ("4096x4096", "2048x2048"),
        ("4112x512", "4096x512"),
        ("1025x1024", "1024x1024"),
    ],
)
def test_invalid_sizes_name_the_nearest_valid_size(size: str, nearest: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        resolve_size(size=size)
    assert info.value.status == 400
    assert f"nearest valid size is {nearest}" in info.value.message
    assert size_is_valid(*map(int, nearest.split("x")))


@pytest.mark.parametrize("text", ["big", "1000", "1024x", "x1024", "-16x64", "1.5x2"])
def test_unparseable_sizes(text: str) -> None:
    with pytest.raises(InvalidRequest):
        resolve_size(size=text)


@pytest.mark.parametrize(("field", "value"), [("aspect_ratio", "7:3"), ("tier", "3K")])
def test_unknown_ratio_or_tier(field: str, value: str) -> None:
    with pytest.raises(InvalidRequest):
        resolve_size(**{field: value})


def test_nearest_valid_size_is_always_valid() -> None:
    for w in (1, 63, 64, 100, 1000, 4095, 4096, 9000, 100000):
        for h in (1, 64, 333, 4096, 100000):
            assert size_is_valid(*nearest_valid_size(w, h)), (w, h)
    check_size(4096, 1024)  # exactly 4 MP is allowed


@pytest.mark.parametrize(
    ("size", "mp", "price", "tokens"),
    [
        ((512, 512), 1, 14_000, 4096),
        ((1024, 1024), 1, 14_000, 4096),
        ((1360, 768), 1, 14_000, 4096),
        ((2048, 2048), 4, 17_000, 16384),
        ((1024, 1040), 2, 15_000, 8192),
    ],
)
def test_price_and_usage_tokens(size: tuple[int, int], mp: int, price: int, tokens: int) -> None:
    assert billable_megapixels(*size) == mp
    assert image_price(KLEIN_4B.price, *size) == price
    assert isinstance(image_price(KLEIN_4B.price, *size), int)
    assert image_tokens(*size) == tokens


def test_per_token_prices_match_the_models_api() -> None:
    assert per_token_price_string(1_000) == "0.000000244140625"
    assert per_token_price_string(14_000) == "0.00000341796875"


def test_catalog_lookup_accepts_the_hugging_face_id() -> None:
    catalog = Catalog()
    assert catalog.get("black-forest-labs/FLUX.2-klein-4B") is KLEIN_4B
    assert catalog.get("black-forest-labs/flux.2-klein-4b") is KLEIN_4B
    with pytest.raises(NotFound):
        catalog.get("openai/gpt-image-1")
