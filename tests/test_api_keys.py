"""Keys over HTTP: create (plaintext once), list, get, update, delete, /key, /credits."""

from __future__ import annotations

from pixelrouter.keys import hash_key, key_label, looks_like_key


async def test_create_list_get_update_delete(api) -> None:
    admin = api.admin_key
    r = await api.post(
        "/api/v1/keys",
        key=admin,
        json={"name": "app one", "limit": 5, "limit_reset": "monthly"},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    plaintext = body["key"]
    assert looks_like_key(plaintext)
    key = body["data"]
    assert key["hash"] == hash_key(plaintext)
    assert key["label"] == key_label(plaintext)
    assert key["name"] == "app one" and key["disabled"] is False
    assert key["limit"] == 5.0 and key["limit_remaining"] == 5.0
    assert key["limit_reset"] == "monthly" and key["usage"] == 0.0

    listed = (await api.get("/api/v1/keys", key=admin)).json()["data"]
    assert key["hash"] in {k["hash"] for k in listed}
    assert all("key" not in k for k in listed)  # the plaintext is never shown again
    assert plaintext not in (await api.get("/api/v1/keys", key=admin)).text

    got = await api.get(f"/api/v1/keys/{key['hash']}", key=admin)
    assert got.json()["data"]["name"] == "app one"

    # the new key works, then stops working once disabled
    gen = await api.post("/api/v1/images", key=plaintext, json={"prompt": "x", "size": "128x128"})
    assert gen.status_code == 200, gen.text
    me = (await api.get("/api/v1/key", key=plaintext)).json()["data"]
    assert me["label"] == key["label"] and me["is_management_key"] is False
    assert me["usage"] == 0.014 and me["limit_remaining"] == 4.986
    assert me["usage_daily"] == me["usage_weekly"] == me["usage_monthly"] == 0.014

    patched = await api.client.patch(
        f"/api/v1/keys/{key['hash']}",
        json={"disabled": True, "name": "renamed"},
        headers=api.auth(admin),
    )
    assert patched.status_code == 200 and patched.json()["data"]["disabled"] is True
    denied = await api.post("/api/v1/images", key=plaintext, json={"prompt": "x"})
    assert denied.status_code == 401 and "disabled" in denied.json()["error"]["message"]

    deleted = await api.client.delete(f"/api/v1/keys/{key['hash']}", headers=api.auth(admin))
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    again = await api.client.delete(f"/api/v1/keys/{key['hash']}", headers=api.auth(admin))
    assert again.status_code == 404


async def test_expired_key_is_401_and_bad_expiry_is_400(api) -> None:
    admin = api.admin_key
    r = await api.post("/api/v1/keys", key=admin, json={"name": "x", "expires_at": "yesterday"})
    assert r.status_code == 400
    r = await api.post(
        "/api/v1/keys", key=admin, json={"name": "x", "expires_at": "2001-01-01T00:00:00Z"}
    )
    assert r.status_code == 400 and "future" in r.json()["error"]["message"]


async def test_management_key_views(api) -> None:
    me = (await api.get("/api/v1/key", key=api.admin_key)).json()["data"]
    assert me["is_management_key"] is True
    credits = await api.get("/api/v1/credits", key=api.admin_key)
    assert credits.status_code == 200
    assert set(credits.json()["data"]) == {"total_credits", "total_usage"}
    assert (await api.get("/api/v1/credits")).status_code == 403


async def test_the_last_management_key_cannot_lock_everyone_out(api) -> None:
    admin_hash = hash_key(api.admin_key)
    for method, body in (("patch", {"disabled": True}), ("delete", None)):
        r = await api.client.request(
            method.upper(), f"/api/v1/keys/{admin_hash}", json=body, headers=api.auth(api.admin_key)
        )
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert "last enabled management key" in error["message"]
        assert error["metadata"]["reason"] == "last_management_key"
    assert (await api.get("/api/v1/keys", key=api.admin_key)).status_code == 200  # still works


async def test_numbers_too_large_for_either_backend_are_a_400(api) -> None:
    """PostgreSQL's INTEGER holds less than SQLite's: bounds keep both the same."""
    r = await api.post(
        "/api/v1/keys", key=api.admin_key, json={"name": "big", "rate_limit_requests": 2**40}
    )
    assert r.status_code == 400, r.text
    assert "rate_limit_requests" in r.json()["error"]["message"]
