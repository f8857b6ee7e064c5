"""The web pages: the catalogue, a model page with tabs, and the playground, served by the
same app as the API (`routes.router`), with their CSS, JS and the vendored Chart.js under
`/static` (`STATIC_DIR`)."""

from .routes import STATIC_DIR, router

__all__ = ["STATIC_DIR", "router"]
