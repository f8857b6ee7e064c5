"""`/`, `/models/{author}/{slug}`, `/playground` and `/batches`: server-rendered pages, public
(no key needed to view them; the playground and the batches page call the API with the key the
visitor enters). The model page's figures are computed in `views` and embedded as JSON."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from pixelrouter import __version__
from pixelrouter.errors import NotFound
from pixelrouter.store import utcnow

from . import views

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
TEMPLATES_DIR = HERE / "templates"

router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))


def static_url(name: str) -> str:
    """A file under /static, versioned so an upgrade is not served from a stale cache."""
    return f"/static/{name}?v={__version__}"


templates.env.globals["static"] = static_url


RELATIVE_API_BASE = "/api/v1"


def app_state(request: Request) -> views.Site:
    """The app's state, which the app factory keeps as `app.state.px`."""
    return request.app.state.px  # type: ignore[no-any-return]


def base_url(request: Request) -> str:
    """The code samples' base URL: the configured public URL (PIXELROUTER_PUBLIC_URL), else
    empty, and the pages show paths, which the browser completes with the address it reached
    (`base.html`). Never the request's Host header, which anyone may set to anything."""
    return app_state(request).settings.public_url or ""


def _page(
    request: Request, template: str, page: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    px = app_state(request)
    return templates.TemplateResponse(
        request,
        template,
        {
            "page": page,
            "demo": px.demo,
            "version": __version__,
            "api_base": f"{base_url(request)}/api/v1",
            **context,
        },
        status_code=status_code,
    )


@router.get("/")
async def catalogue_page(request: Request) -> HTMLResponse:
    px = app_state(request)
    return _page(request, "catalogue.html", "catalogue", models=views.catalogue_view(px))


@router.get("/models/{author}/{slug}")
async def model_page(author: str, slug: str, request: Request) -> HTMLResponse:
    px = app_state(request)
    try:
        entry = px.catalog.get(f"{author}/{slug}")
    except NotFound as exc:
        return _page(request, "not_found.html", "not-found", 404, message=exc.message)
    view = await asyncio.to_thread(views.model_view, px, entry, utcnow(), base_url(request))
    return _page(request, "model.html", "model", **view)


@router.get("/playground")
async def playground_page(request: Request) -> HTMLResponse:
    px = app_state(request)
    return _page(request, "playground.html", "playground", data=views.playground_view(px))


@router.get("/batches")
async def batches_page(request: Request) -> HTMLResponse:
    """A key's batches: the page holds no data, its script lists them with the key."""
    return _page(request, "batches.html", "batches")
