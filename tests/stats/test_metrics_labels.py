"""/metrics label values come from fixed sets: route templates, never raw paths."""

from __future__ import annotations

from pixelrouter.api.metrics import OTHER, UNMATCHED, batch_buckets, route_template


class _Route:
    def __init__(self, path_format: str) -> None:
        self.path_format = path_format


def test_route_templates_come_from_the_matched_route() -> None:
    scope = {
        "path": "/api/v1/models/black-forest-labs/flux.2-klein-4b/endpoints",
        "endpoint": object(),
        "route": _Route("/models/{author}/{slug}/endpoints"),  # inside a router with a prefix
        "path_params": {"author": "black-forest-labs", "slug": "flux.2-klein-4b"},
    }
    assert route_template(scope) == "/api/v1/models/{author}/{slug}/endpoints"
    same_values = {
        "path": "/m/x/x",
        "endpoint": object(),
        "route": _Route("/m/{a}/{b}"),
        "path_params": {"a": "x", "b": "x"},
    }
    assert route_template(same_values) == "/m/{a}/{b}"
    keys = {"path": "/api/v1/keys", "endpoint": object(), "route": _Route("/api/v1/keys")}
    assert route_template(keys) == "/api/v1/keys"


def test_paths_no_route_served_are_one_label() -> None:
    assert route_template({"path": "/api/v1/sk-pr-v1-secret"}) == UNMATCHED
    assert route_template({"path": "/x", "path_params": {}}) == UNMATCHED


def test_a_mount_is_one_label_whatever_the_path() -> None:
    for tail in ("css/site.css", "../x", "a" * 3000, "/y"):
        mount = {"path": f"/static/{tail}", "endpoint": object(), "root_path": "/static"}
        assert route_template(mount) == "/static/{path}"
    odd = {"path": "/a/b", "endpoint": object(), "route": _Route("/c/{x}"), "path_params": {}}
    assert route_template(odd) == OTHER


def test_batch_size_histogram_buckets_are_cumulative() -> None:
    buckets, total = batch_buckets({"1": 3, "4": 2, "3": 1, "100": 1})
    assert dict(buckets) == {
        "1": 3.0,
        "2": 3.0,
        "4": 6.0,
        "8": 6.0,
        "16": 6.0,
        "32": 6.0,
        "64": 6.0,
        "+Inf": 7.0,
    }
    assert total == 3 * 1 + 2 * 4 + 3 + 100
