"""``/openapi.json`` describes every route, and no request its schema can describe (or bend)
gets an answer >= 500 or an error outside OpenAI's envelope."""

from __future__ import annotations

import asyncio
import json
import math
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route

from gateway.app import create_app
from gateway.tenancy.redis_store import RedisStore
from tests.e2e.conftest import ADMIN_KEY, gateway_settings
from tests.gateway.doubles import PerTokenMeter, ScriptedBackend
from tests.live import LiveServer

REDIS_URL = "redis://127.0.0.1:6379/0"
# Values that broke gateways before: past 64 bits, past a double, not finite, empty, huge.
HOSTILE: list[Any] = [
    2**64, 10**20, -(2**63) - 1, 2**53 + 1, 1e300, -1e300, math.inf, -math.inf, math.nan,
    "", "x" * 2000, None, [], {}, True, -1, 0,
]
# Fields a random string would never get right, drawn from names the gateway knows.
KNOWN: dict[str, list[str]] = {"model": ["test-model", "test-alias", "nope"]}
HOSTILE_TEXT = ["inf", "-1e400", "nan", "1e20", "9999-99-99", "", "..", "%00", "team-a,x" * 40]


class Live:
    """A gateway on Redis in front of a scripted backend, with a tenant key and the schema."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.key = key
        self.http = httpx.Client(base_url=url, timeout=10)
        self.schema: dict[str, Any] = self.http.get("/openapi.json").json()
        self.strategies = Strategies(self.schema["components"]["schemas"])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    prefix = "tgfuzz" + secrets.token_hex(4)
    spool = Path(tmp_path_factory.mktemp("spool"))
    store = RedisStore(REDIS_URL, prefix=prefix, spool_dir=str(spool), key_cache_ttl_s=0.0)
    app = create_app(gateway_settings(), store=store, backends=[ScriptedBackend()],
                     meter=PerTokenMeter())
    with LiveServer(app) as server:
        key = httpx.post(f"{server.url}/admin/keys", json={"tenant": "fuzz-owner"},
                         headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()["key"]
        live = Live(server.url, key)
        yield live
        live.http.close()
    asyncio.run(_forget(prefix))


async def _forget(prefix: str) -> None:
    store = RedisStore(REDIS_URL, prefix=prefix)
    keys = [k async for k in store.redis.scan_iter(f"{prefix}:*")]
    if keys:
        await store.redis.delete(*keys)
    await store.aclose()


# -- the schema as hypothesis strategies ------------------------------------------------------


class Strategies:
    """Hypothesis strategies for the values a JSON schema describes, each built once.

    Any value may be swapped for a hostile one; ``KNOWN`` fields are drawn from names the
    gateway knows, so requests also get through to the backend.
    """

    def __init__(self, components: dict[str, Any]) -> None:
        self.components = components
        self._built: dict[str, st.SearchStrategy[Any]] = {}

    def values(self, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
        """What ``schema`` describes, a hostile value about one time in four."""
        key = json.dumps(schema, sort_keys=True)
        if key not in self._built:
            fit = self._conforming(schema)
            self._built[key] = st.one_of(fit, fit, fit, st.sampled_from(HOSTILE))
        return self._built[key]

    def _conforming(self, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
        if "$ref" in schema:
            target = self.components[schema["$ref"].rsplit("/", 1)[1]]
            return st.deferred(lambda: self.values(target))
        for combinator in ("anyOf", "oneOf"):
            if combinator in schema:
                return st.one_of([self.values(s) for s in schema[combinator]])
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        kind = schema.get("type")
        if kind == "string":
            if "pattern" in schema:
                return st.from_regex(schema["pattern"], fullmatch=True)
            return st.text(min_size=schema.get("minLength", 0), max_size=12)
        if kind == "integer":
            return st.integers(schema.get("minimum"), schema.get("maximum"))
        if kind == "number":
            return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False)
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        if kind == "array":
            items = self.values(schema.get("items", {}))
            return st.lists(items, min_size=schema.get("minItems", 0), max_size=3)
        if kind == "object" or "properties" in schema:
            return self._object(schema)
        return st.sampled_from(HOSTILE)

    def _object(self, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):  # a map: its keys are free text
            return st.dictionaries(st.text(max_size=6), self.values(extra), max_size=3)
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))
        drawn = {
            name: st.sampled_from(KNOWN[name]) if name in KNOWN else self.values(sub)
            for name, sub in properties.items()
        }
        fields = st.fixed_dictionaries(
            {k: v for k, v in drawn.items() if k in required},
            optional={k: v for k, v in drawn.items() if k not in required},
        )
        if extra is not True:
            return fields
        stray = st.dictionaries(st.sampled_from(["top_k", "min_p", "x"]),
                                st.sampled_from(HOSTILE), max_size=1)
        return st.tuples(fields, stray).map(lambda pair: {**pair[1], **pair[0]})


@st.composite
def requests(draw: st.DrawFn, live: Live) -> tuple[str, str, dict[str, Any]]:
    """One request to an operation of the schema: method, URL, and httpx keyword arguments."""
    paths = live.schema["paths"]
    path = draw(st.sampled_from(sorted(paths)))
    method = draw(st.sampled_from(sorted(paths[path])))
    operation = paths[path][method]
    url, query = path, {}
    for param in operation.get("parameters", ()):
        known = KNOWN.get(param["name"].removesuffix("_id"), [])
        text = draw(st.text(max_size=10) | st.sampled_from(HOSTILE_TEXT + known))
        if param["in"] == "path":
            url = url.replace("{" + param["name"] + "}", quote(text or "x", safe=""))
        elif param["in"] == "query" and draw(st.booleans()):
            query[param["name"]] = text
    own = ADMIN_KEY if path.startswith("/admin") else live.key
    key = draw(st.sampled_from([own] * 8 + ["tg-not-a-key", None]))
    headers = {"authorization": f"Bearer {key}"} if key else {}
    kwargs: dict[str, Any] = {"params": query, "headers": headers}
    if "requestBody" in operation:
        ref = operation["requestBody"]["content"]["application/json"]["schema"]
        body = draw(live.strategies.values(ref))
        headers["content-type"] = draw(st.sampled_from(["application/json"] * 5 + ["text/plain"]))
        kwargs["content"] = json.dumps(body)  # inf and nan go out as Infinity and NaN: not JSON
    return method.upper(), url, kwargs


# -- tests ---------------------------------------------------------------------------------


@pytest.mark.redis
def test_the_schema_covers_every_route(live: Live) -> None:
    app_paths = {
        route.path.replace(":path}", "}")
        for route in create_app(gateway_settings(), backends=[ScriptedBackend()]).routes
        if isinstance(route, Route) and route.include_in_schema
    }
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models"} <= set(live.schema["paths"])
    assert app_paths <= set(live.schema["paths"])
    components = live.schema["components"]
    for path, model in [("/v1/completions", "CompletionRequest"),
                        ("/v1/chat/completions", "ChatCompletionRequest")]:
        body = live.schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"] == {"$ref": f"#/components/schemas/{model}"}
    validate = {"components": components, "$ref": "#/components/schemas/ChatCompletionRequest"}
    jsonschema.validate({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, validate)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"model": "m", "messages": []}, validate)


@pytest.mark.redis
@pytest.mark.timeout(90)
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_no_request_the_schema_describes_gets_a_500(live: Live, data: st.DataObject) -> None:
    method, url, kwargs = data.draw(requests(live))
    response = live.http.request(method, url, **kwargs)
    assert response.status_code < 500, (method, url, kwargs, response.text)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(response.json()) == {"error"}
        assert set(error) == {"message", "type", "param", "code"}, response.text
        assert isinstance(error["message"], str) and error["message"]


def test_the_generation_routes_are_described_with_their_bodies_and_answers() -> None:
    schema = create_app(gateway_settings(), backends=[ScriptedBackend()]).openapi()
    components = schema["components"]
    routes = [("/v1/completions", "CompletionRequest", "choices"),
              ("/v1/chat/completions", "ChatCompletionRequest", "choices"),
              ("/v1/responses", "ResponsesRequest", "output")]
    for path, model, field in routes:
        operation = schema["paths"][path]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{model}"}
        assert model in components["schemas"]
        ok = operation["responses"]["200"]["content"]
        assert field in ok["application/json"]["schema"]["required"]
        assert "text/event-stream" in ok
        assert operation["responses"]["400"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }
    validate = {"components": components, "$ref": "#/components/schemas/ResponsesRequest"}
    jsonschema.validate({"model": "m", "input": "hi"}, validate)
    jsonschema.validate({"model": "m", "input": [{"role": "user", "content": "hi"}],
                         "text": {"format": {"type": "text"}}}, validate)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"model": "m"}, validate)
