"""Keys are never logged (SPEC §7): a whole workflow at DEBUG leaves no key in any log line."""

from __future__ import annotations

import logging

import pytest

from conftest import KEY_PATTERN


async def test_no_key_in_debug_logs(api, caplog) -> None:
    with caplog.at_level(logging.DEBUG):
        created = await api.post("/api/v1/keys", key=api.admin_key, json={"name": "secret"})
        key = created.json()["key"]
        await api.post("/api/v1/images", key=key, json={"prompt": "x", "size": "64x64"})
        await api.post("/api/v1/images", key=key[:-1] + "0", json={"prompt": "x"})
        await api.get("/api/v1/key", key=key)
        await api.post("/api/v1/images", key=api.admin_key, json={"prompt": "x"})
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert caplog.records, "the workflow logged nothing at DEBUG, so this test checks nothing"
    for secret in (key, api.admin_key, api.key):
        assert secret not in text
    assert not KEY_PATTERN.search(text)


def test_key_shaped_text_is_redacted_from_any_log_line(caplog) -> None:
    from pixelrouter.logs import RedactKeys

    logger = logging.getLogger("pixelrouter.test-redaction")
    logger.addFilter(RedactKeys())
    key = "sk-pr-v1-" + "ab" * 32
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info('%s - "GET /api/v1/models?api_key=%s HTTP/1.1" 401', "127.0.0.1", key)
        logger.info("typo key sk-pr-v1-12345zz in a message")
        try:
            raise RuntimeError(f"upstream refused {key}")
        except RuntimeError:
            logger.exception("a failure")
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert key not in text and "12345zz" not in text
    assert text.count("sk-pr-v1-[redacted]") == 3
    assert "upstream refused" in text


def test_masking_keeps_uvicorns_access_formatter_working() -> None:
    """uvicorn's access formatter unpacks the record's arguments (the status is a `%d`), so the
    filter masks each argument and keeps their types and the format apart."""
    from uvicorn.logging import AccessFormatter

    from pixelrouter.logs import RedactKeys

    key = "sk-pr-v1-" + "cd" * 32
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", f"/api/v1/models?api_key={key}", "1.1", 401),
        None,
    )
    assert RedactKeys().filter(record)
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s').format(record)
    assert key not in line
    assert line.startswith(
        '127.0.0.1:5000 - "GET /api/v1/models?api_key=sk-pr-v1-[redacted] HTTP/1.1" 401'
    )


def test_database_errors_carry_no_parameters(tmp_path) -> None:
    """A failed statement's error (which the service logs) holds no parameter: no end user, no
    key hash."""
    from sqlalchemy.exc import IntegrityError

    from pixelrouter.store import NewGeneration, Store, utcnow
    from pixelrouter.store.tables import generations

    with Store(f"sqlite:///{tmp_path / 'px.db'}") as store:
        store.migrate()
        secret_user = "end-user-who-must-not-be-logged"
        store.start_generation(NewGeneration(id="gen-dup", model="m", api="images"))
        row = {
            "id": "gen-dup",  # a duplicate: the statement fails
            "api": "images",
            "model": "m",
            "state": "pending",
            "created_at": utcnow(),
            "n": 1,
            "end_user": secret_user,
            "app_categories": [],
            "provider_responses": [],
            "ignored_parameters": [],
        }
        with store.engine.begin() as conn, pytest.raises(IntegrityError) as caught:
            conn.execute(generations.insert(), row)
        assert secret_user not in str(caught.value)
        assert "hidden due to hide_parameters" in str(caught.value)


def test_settings_repr_holds_no_secret() -> None:
    from pixelrouter.config import Settings

    settings = Settings(admin_key="sk-pr-v1-" + "c" * 64, database_url="postgresql://u:pw@h/db")
    assert "c" * 64 not in repr(settings) and "pw@" not in repr(settings)
