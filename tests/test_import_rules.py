"""The floors of the house hold: `.importlinter`'s contracts, checked by import-linter.

A new import that crosses a floor (the engine reaching for a provider, the store for billing,
a route module for a web page) fails here, with import-linter's account of the chain.
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pixelrouter

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(pixelrouter.__file__).resolve().parent


def _contracts() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    return config


def test_every_import_contract_is_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    done = subprocess.run(
        [str(lint), "--no-cache", str(ROOT / ".importlinter")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_every_floor_is_named_by_a_contract() -> None:
    """A new folder or top-level module gets its rule when it is added, not when it breaks."""
    named: set[str] = set()
    for section in _contracts().sections():
        if section.startswith("importlinter:contract:"):
            for field in ("source_modules", "forbidden_modules", "modules", "layers"):
                value = _contracts().get(section, field, fallback="")
                named.update(line.strip() for line in value.splitlines() if line.strip())
    floors = {
        f"pixelrouter.{path.stem}"
        for path in PACKAGE.iterdir()
        if (path.suffix == ".py" and path.stem != "__init__")
        or (path.is_dir() and (path / "__init__.py").exists())
    }
    assert floors - named == set(), "give these a rule in .importlinter"
