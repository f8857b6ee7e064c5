"""Prices as a config file writes them (`price = { first_mp = 0.014, ... }`, `discount =
0.5`), read into the catalogue's integer `Price`, with errors that say where and what."""

from __future__ import annotations

import math

from pixelrouter.catalog import PPM, Price, usd_to_micro
from pixelrouter.errors import ConfigError


def share_ppm(value: object, where: str) -> int | None:
    """A share from a config file (`batch_discount = 0.5`) in parts per million; None stays
    None; anything but a number from 0 to 1 is a `ConfigError` saying `where` it is."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"{where} must be a number from 0 to 1 (0.5: half price); got {value!r}.")
    return round(value * PPM)


PRICE_KEYS = ("first_mp", "extra_mp", "input_mp", "batch_discount")


def price_table(value: object, where: str, keys: tuple[str, ...] = PRICE_KEYS) -> Price:
    """A `price = { first_mp = 0.014, ... }` table of a config file (USD per megapixel;
    `batch_discount` a share) as a `Price`, taking only `keys`; a `ConfigError` saying `where`
    and what is wrong otherwise."""
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where}: 'price' must be a table such as {{ first_mp = 0.014, extra_mp = 0.001 }} "
            "(USD per image: its first megapixel, each further one)."
        )
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise ConfigError(
            f"{where}: unknown price key(s) {', '.join(unknown)}; use {', '.join(keys)} (USD "
            "per megapixel; batch_discount a share from 0 to 1)."
        )
    if "first_mp" not in value:
        raise ConfigError(f"{where}: price needs first_mp (USD for an image's first megapixel).")
    amounts = {}
    for key in ("first_mp", "extra_mp", "input_mp"):
        amount = value.get(key, 0)
        if (
            isinstance(amount, bool)
            or not isinstance(amount, int | float)
            or not math.isfinite(amount)
            or amount < 0
        ):
            raise ConfigError(
                f"{where}: price.{key} must be a non-negative number of USD (such as 0.014); "
                f"got {amount!r}."
            )
        amounts[key] = usd_to_micro(amount)
    return Price(
        first_mp=amounts["first_mp"],
        extra_mp=amounts["extra_mp"],
        input_mp=amounts["input_mp"],
        batch_discount_ppm=share_ppm(value.get("batch_discount"), f"{where}: price.batch_discount"),
    )
