"""``GET /api/openapi.json``: a valid OpenAPI 3.1 document that covers every route the app
registers, built from the models the routes validate with; ``/api/docs`` renders it."""

from __future__ import annotations

import pytest
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from crowdcount.streamer.openapi import build_spec, registered_routes
from crowdcount.streamer.routes.docs import swagger_ui_dir
from crowdcount.streamer.version import VERSION
from tests.fixtures.app import Serve


async def _spec(client) -> dict:
    r = await client.get("/api/openapi.json")
    assert r.status == 200
    return await r.json()


async def test_document_validates_and_covers_every_registered_route(serve: Serve) -> None:
    client = await serve()
    spec = await _spec(client)
    validate(spec)  # raises on an invalid OpenAPI 3.1 document
    assert spec["openapi"] == "3.1.0" and spec["info"]["version"] == VERSION
    routes = registered_routes(client.app)
    assert len(routes) >= 25
    for method, path, _ in routes:
        assert method in spec["paths"].get(path, {}), f"{method.upper()} {path} undocumented"
    documented = {(m, p) for p, item in spec["paths"].items() for m in item}
    assert documented == {(m, p) for m, p, _ in routes}
    # Without a token the document asks for none.
    assert "security" not in spec
    assert spec["components"]["securitySchemes"]["bearer"] == {
        **spec["components"]["securitySchemes"]["bearer"], "type": "http", "scheme": "bearer"}


async def test_document_is_built_from_the_route_models(serve: Serve) -> None:
    spec = await _spec(await serve())
    schemas = spec["components"]["schemas"]
    # The request body of POST /api/streams is the config's per-stream settings, same bounds.
    body = spec["paths"]["/api/streams"]["post"]["requestBody"]["content"]["application/json"]
    add = schemas[body["schema"]["$ref"].rsplit("/", 1)[1]]
    assert add["additionalProperties"] is False and set(add["required"]) == {"name", "url"}
    assert add["properties"]["max_side"]["anyOf"][0] == {
        "type": "integer", "minimum": 32, "maximum": 8192}
    assert add["properties"]["fps_limit"]["anyOf"][0]["exclusiveMinimum"] == 0
    # Query parameters come from the query models: types, bounds, defaults.
    params = {p["name"]: p for p in spec["paths"]["/api/streams/{id}/counts"]["get"]["parameters"]}
    assert set(params) == {"id", "since", "until", "step", "limit", "zones"}
    assert params["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 100_000,
                                         "default": 10_000}
    assert params["step"]["schema"] == {"type": "number", "exclusiveMinimum": 0}
    assert params["zones"]["schema"] == {"type": "boolean", "default": False}
    feed = {p["name"]: p for p in spec["paths"]["/api/feed"]["get"]["parameters"]}
    assert feed["streams"]["style"] == "form" and feed["streams"]["explode"] is False
    assert feed["streams"]["schema"]["maxItems"] == 64
    # Live feeds are Server-Sent Events; errors have the one error body.
    feed_ok = spec["paths"]["/api/streams/{id}/feed"]["get"]["responses"]["200"]
    assert list(feed_ok["content"]) == ["text/event-stream"]
    missing = spec["paths"]["/api/streams/{id}"]["get"]["responses"]["404"]
    assert missing["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert schemas["ErrorBody"]["required"] == ["error"]
    created = spec["paths"]["/api/streams"]["post"]["responses"]["201"]
    assert created["headers"]["Location"]["required"] is True


async def test_token_is_the_security_scheme_and_401_is_documented(serve: Serve) -> None:
    client = await serve(token="s3cret")
    r = await client.get("/api/openapi.json", headers={"Authorization": "Bearer s3cret"})
    spec = await r.json()
    validate(spec)
    assert spec["security"] == [{"bearer": []}]
    for path, item in spec["paths"].items():
        for method, op in item.items():
            assert "401" in op["responses"], f"{method} {path}"
    assert (await client.get("/api/openapi.json")).status == 401


async def test_an_undocumented_route_is_refused(serve: Serve) -> None:
    client = await serve()

    async def secret(request):  # no Operation
        raise AssertionError

    app = client.app
    app.router._frozen = False  # only to add a route to a running test app
    app.router.add_get("/api/undocumented", secret)
    with pytest.raises(LookupError, match="GET /api/undocumented"):
        build_spec(app)


def test_an_invalid_document_is_caught_by_the_validator() -> None:
    """The validator really checks (a guard for the first test): a path parameter that the
    path does not have is an error."""
    bad = {"openapi": "3.1.0", "info": {"title": "x", "version": "1"}, "paths": {
        "/a/{id}": {"get": {"responses": {"200": {"description": "ok"}}}}}}
    with pytest.raises(OpenAPIValidationError):
        validate(bad)


async def test_docs_page_and_its_files_are_served_locally(serve: Serve) -> None:
    if swagger_ui_dir() is None:
        pytest.fail("swagger-ui-py is a dependency of crowdcount and must be installed")
    client = await serve()
    r = await client.get("/api/docs")
    assert r.status == 200
    html = await r.text()
    assert "/api/docs/static/swagger-ui-bundle.js" in html and "http" not in html.lower()
    r = await client.get("/api/docs/static/swagger-ui-bundle.js")
    assert r.status == 200 and len(await r.read()) > 100_000
    r = await client.get("/static/api-docs.js")
    assert r.status == 200 and "/api/openapi.json" in await r.text()
