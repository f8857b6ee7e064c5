"""/metrics label values come from fixed sets: route templates, never raw paths."""

from __future__ import annotations

from pixelrouter.api.metrics import OTHER, UNMATCHED, batch_buckets, route_template


def test_route_templates_put_path_parameters_back() -> None:
    scope = {
        "path": "/api/v1/models/black-forest-labs/flux.2-klein-4b/endpoints",
        "route": object(),
        "path_params": {"author": "black-forest-labs", "slug": "flux.2-klein-4b"},
    }
    assert route_template(scope) == "/api/v1/models/{author}/{slug}/endpoints"
    same_values = {"path": "/m/x/x", "route": object(), "path_params": {"a": "x", "b": "x"}}
    assert route_template(same_values) == "/m/{a}/{b}"
    assert route_template({"path": "/api/v1/keys", "route": object()}) == "/api/v1/keys"


def test_paths_no_route_served_are_one_label() -> None:
    assert route_template({"path": "/api/v1/sk-pr-v1-secret"}) == UNMATCHED
    assert route_template({"path": "/x", "path_params": {}}) == UNMATCHED


def test_a_path_parameter_spanning_segments() -> None:
    mount = {"path": "/static/css/site.css", "path_params": {"path": "css/site.css"}}
    assert route_template(mount) == "/static/{path}"
    odd = {"path": "/a/b", "route": object(), "path_params": {"x": "not/in/path"}}
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
