"""What the public web pages show anyone: no dollars of the fleet's spend unless the operator
allows it, and code samples that never carry a host a request claimed."""

from __future__ import annotations

from conftest import make_api

MODEL_PAGE = "/models/black-forest-labs/flux.2-klein-4b"


async def _model_page(api) -> str:
    """The model page after one generation, asked for with a forged Host header."""
    r = await api.post("/api/v1/images", json={"prompt": "x", "size": "64x64"})
    assert r.status_code == 200, r.text
    await api.app.state.px.service.closed()  # its bookkeeping is in the activity
    page = await api.client.get(MODEL_PAGE, headers={"Host": "evil.example"})
    assert page.status_code == 200
    return page.text


async def test_dollars_and_hosts_stay_private_by_default(tmp_path, demo_provider) -> None:
    async for api in make_api(tmp_path, f"sqlite:///{tmp_path / 'px.db'}", [demo_provider]):
        html = await _model_page(api)
        assert 'data-testid="activity-table"' in html
        assert 'data-field="usage"' not in html
        # The Host header a request sent is never written into the page: the samples show
        # the path, which the browser completes with the address it reached.
        assert "evil.example" not in html
        assert 'server at <code data-testid="api-base" data-api-base>/api/v1</code>' in html
        assert 'data-relative-base="true"' in html


async def test_the_operator_may_publish_dollars_and_a_public_url(tmp_path, demo_provider) -> None:
    async for api in make_api(
        tmp_path,
        f"sqlite:///{tmp_path / 'px.db'}",
        [demo_provider],
        public_usage_dollars=True,
        public_url="https://images.example.com",
    ):
        html = await _model_page(api)
        assert 'data-field="usage"' in html
        assert "evil.example" not in html
        assert "https://images.example.com/api/v1" in html
        assert 'data-relative-base="false"' in html
