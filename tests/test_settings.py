"""One configuration tree: `Settings` reads the environment and pixelrouter.toml and holds the
engine's configuration; values are passed down, never through the environment; and every
`PIXELROUTER_*` variable the code reads is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pixelrouter.config import Settings, read_config_file
from pixelrouter.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "pixelrouter"
VARIABLE = re.compile(r"PIXELROUTER_[A-Z0-9_]+")
# Writing the environment to pass a value on (os.environ[...] = / .update / .setdefault, putenv).
ENV_WRITE = re.compile(
    r"os\.environ\[[^\]]+\]\s*=(?!=)|os\.environ\.(update|setdefault)\(|os\.putenv\("
)
# Not a value passed on but a third-party library's own switch, which it reads from the
# environment only, once, as it loads: MKL's numerical reproducibility (docs/engine.md).
LIBRARY_SWITCHES = ('os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")',)


def test_the_engine_configuration_comes_from_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PIXELROUTER_RANDOM_WEIGHTS", "small")
    monkeypatch.setenv("PIXELROUTER_DRAIN_TIMEOUT_S", "7.5")
    settings = Settings.from_env(model="/models/klein", max_batch_size=8, device="cpu")
    assert (settings.random_weights, settings.drain_timeout_s) == ("small", 7.5)
    engine = settings.engine_config()
    assert (engine.model, engine.random_weights, engine.device, engine.max_batch_size) == (
        "/models/klein",
        "small",
        "cpu",
        8,
    )
    assert engine.demo is False and engine.dtype is None


def test_a_flag_wins_over_the_file_and_the_file_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIXELROUTER_PORT", "7001")
    monkeypatch.setenv("PIXELROUTER_HOST", "10.0.0.1")
    config = tmp_path / "pixelrouter.toml"
    config.write_text('[server]\nport = 9123\ndb = "sqlite:///x.db"\n')
    assert read_config_file(config) == {"port": 9123, "database_url": "sqlite:///x.db"}
    settings = Settings.load(config, host=None, max_batch_size=2)
    assert (settings.port, settings.host, settings.max_batch_size) == (9123, "10.0.0.1", 2)
    assert Settings.load(config, port=7000).port == 7000


def test_a_config_file_that_cannot_be_used_says_which_and_why(tmp_path: Path) -> None:
    config = tmp_path / "pixelrouter.toml"
    config.write_text("[server]\nbogus = 1\n")
    with pytest.raises(ConfigError, match=r"unknown \[server\] settings in .*: bogus"):
        Settings.load(config)
    config.write_text("[server\n")
    with pytest.raises(ConfigError, match="cannot read config"):
        read_config_file(config)
    with pytest.raises(ConfigError, match="cannot read config"):
        read_config_file(tmp_path / "missing.toml")


def test_no_code_passes_a_value_through_the_environment() -> None:
    writes = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted(SRC.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if ENV_WRITE.search(line) and line.strip() not in LIBRARY_SWITCHES
    ]
    assert writes == []


def test_every_environment_variable_the_code_reads_is_documented() -> None:
    read = {name for path in SRC.rglob("*.py") for name in VARIABLE.findall(path.read_text())}
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    documented = {name for path in docs for name in VARIABLE.findall(path.read_text())}
    assert read, "the scan found no variables"
    assert sorted(read - documented) == []
