"""The `pixelrouter keys` commands against a real database file, and config-file parsing."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from pixelrouter.cli import app
from pixelrouter.keys import hash_key, looks_like_key
from pixelrouter.store import Store


def test_keys_create_list_disable(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'px.db'}"
    runner = CliRunner()
    created = runner.invoke(
        app, ["keys", "create", "--name", "cli", "--limit", "5", "--reset", "monthly", "--db", db]
    )
    assert created.exit_code == 0, created.output
    plaintext = created.stdout.strip().splitlines()[-1]
    assert looks_like_key(plaintext)
    with Store(db) as store:
        record = store.find_key(hash_key(plaintext))
        assert record is not None
        assert record.limit_micro == 5_000_000 and record.limit_reset == "monthly"

    with Store(db) as store:  # spend one image through the ledger, as the service does
        from datetime import UTC, datetime, timedelta

        store.reserve(
            generation_id="gen-cli-1",
            key_hash=record.hash,
            amount_micro=14_000,
            expires_at=datetime.now(UTC) + timedelta(minutes=5),
        )
        store.settle("gen-cli-1", 14_000)
    usage = runner.invoke(app, ["keys", "usage", record.hash[:10], "--db", db])
    assert usage.exit_code == 0, usage.output
    assert "$0.014000" in usage.stdout and "$4.986000" in usage.stdout

    listed = runner.invoke(app, ["keys", "list", "--db", db])
    assert listed.exit_code == 0 and "cli" in listed.stdout
    assert plaintext not in listed.stdout

    disabled = runner.invoke(app, ["keys", "disable", record.hash[:12], "--db", db])
    assert disabled.exit_code == 0, disabled.output
    with Store(db) as store:
        assert store.find_key(record.hash).disabled is True

    missing = runner.invoke(app, ["keys", "disable", "ffffffffffff", "--db", db])
    assert missing.exit_code == 1
    bad_reset = runner.invoke(app, ["keys", "create", "--reset", "hourly", "--db", db])
    assert bad_reset.exit_code != 0


def test_config_file_values_and_unknown_settings(tmp_path: Path) -> None:
    from pixelrouter.cli import _settings

    config = tmp_path / "pixelrouter.toml"
    config.write_text('[server]\nport = 9123\ndb = "sqlite:///x.db"\nmax_batch_size = 8\n')
    settings = _settings(config, host="0.0.0.0")
    assert (settings.port, settings.database_url, settings.max_batch_size) == (
        9123,
        "sqlite:///x.db",
        8,
    )
    assert settings.host == "0.0.0.0"
    assert _settings(config, port=7000).port == 7000  # flags win over the file
    config.write_text("[server]\nbogus = 1\n")
    runner = CliRunner()
    result = runner.invoke(app, ["keys", "list", "--config", str(config)])
    assert result.exit_code != 0


def test_loras_list_shows_the_adapters_of_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "pixelrouter.toml"
    config.write_text(
        '[[loras]]\nname = "ink-wash"\npath = "adapters/ink"\ndefault_scale = 0.8\n'
        'price = { first_mp = 0.02, extra_mp = 0.002 }\ndescription = "Ink wash painting"\n'
        '[[loras]]\nname = "plain"\npath = "adapters/plain.safetensors"\n'
    )
    listed = CliRunner().invoke(app, ["loras", "list", "--config", str(config)])
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    ink = next(line for line in lines if "ink-wash" in line)
    for shown in ("0.8", "$0.02 + $0.002/extra MP", "unchecked", "Ink wash painting"):
        assert shown in ink
    assert any("plain" in line and "unchecked" in line for line in lines)
    none = tmp_path / "empty.toml"
    none.write_text("[server]\n")
    empty = CliRunner().invoke(app, ["loras", "list", "--config", str(none)])
    assert empty.exit_code == 0 and "no LoRA adapters registered" in empty.output


def test_loras_list_shows_the_uploads_kept_in_lora_dir(tmp_path: Path) -> None:
    from pixelrouter.lora_files import LoraUploads
    from pixelrouter.loras import LoraSpec

    kept = tmp_path / "kept"
    LoraUploads(kept).add(LoraSpec("uploaded-one", str(kept / "uploaded-one-1a2b.safetensors")))
    config = tmp_path / "pixelrouter.toml"
    config.write_text('[server]\nlora_dir = "kept"\n[[loras]]\nname = "ink"\npath = "ink"\n')
    listed = CliRunner().invoke(app, ["loras", "list", "--config", str(config)])
    assert listed.exit_code == 0, listed.output
    assert any(
        "uploaded-one" in line and "unchecked" in line for line in listed.stdout.splitlines()
    )
    assert "ink" in listed.stdout
    # A name both in the file and uploaded is the error the server would stop on.
    config.write_text('[server]\nlora_dir = "kept"\n[[loras]]\nname = "uploaded-one"\npath = "x"\n')
    clash = CliRunner().invoke(app, ["loras", "list", "--config", str(config)])
    said = " ".join(clash.output.replace("│", " ").split())
    assert clash.exit_code != 0 and "both in [[loras]] and uploaded" in said
