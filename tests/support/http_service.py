"""A real aiohttp service for the http connector tests, with its own OpenAPI 3 document.

Besides well-behaved endpoints it has ones that misbehave on purpose: 500 until the
n-th attempt, a hang, a 10 MB body, invalid UTF-8, JSON that is not, redirects anywhere.
Every request it receives is recorded (method, raw path, headers, body) so a test can
see exactly what reached it, credentials included.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

BIG_BODY_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class Seen:
    """One request as it reached the service."""

    method: str
    raw_path: str
    headers: CIMultiDict[str]
    """Case-insensitive, as HTTP headers are (aiohttp writes ``X-Request-ID``)."""
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def openapi_document(server_url: str) -> dict[str, Any]:
    """The service's OpenAPI 3 document, naming ``server_url`` as its server."""
    service_param = {
        "name": "service",
        "in": "path",
        "required": True,
        "description": "The service's name.",
        "schema": {"$ref": "#/components/schemas/ServiceName"},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "Test services", "version": "1"},
        "servers": [{"url": server_url}],
        "paths": {
            "/services": {
                "get": {
                    "operationId": "listServices",
                    "tags": ["services"],
                    "summary": "List services.",
                    "parameters": [
                        {
                            "name": "status",
                            "in": "query",
                            "schema": {"type": "string", "enum": ["running", "stopped"]},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                        },
                    ],
                }
            },
            "/services/{service}": {
                "parameters": [service_param],
                "get": {
                    "operationId": "getService",
                    "tags": ["services"],
                    "summary": "Show one service.",
                },
                "delete": {
                    "operationId": "deleteService",
                    "tags": ["admin"],
                    "summary": "Delete a service.",
                },
            },
            "/services/{service}/restart": {
                "post": {
                    "operationId": "restartService",
                    "tags": ["ops"],
                    "summary": "Restart a service.",
                    "parameters": [
                        service_param,
                        {"name": "dryRun", "in": "query", "schema": {"type": "boolean"}},
                        {"name": "X-Request-Id", "in": "header", "schema": {"type": "string"}},
                        {"name": "Authorization", "in": "header", "schema": {"type": "string"}},
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/RestartRequest"}
                            }
                        },
                    },
                }
            },
            "/services/{service}/config": {
                "put": {
                    "operationId": "putServiceConfig",
                    "tags": ["ops"],
                    "summary": "Replace a service's configuration.",
                    "parameters": [service_param],
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Config"}}
                        }
                    },
                }
            },
            "/services/{service}/logs": {
                "post": {
                    "operationId": "uploadLogs",
                    "summary": "Upload logs as a form.",
                    "parameters": [service_param],
                    "requestBody": {
                        "content": {"multipart/form-data": {"schema": {"type": "object"}}}
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "ServiceName": {"type": "string", "pattern": "^[a-z][a-z0-9-]*$"},
                "RestartRequest": {
                    "type": "object",
                    "required": ["reason"],
                    "properties": {
                        "reason": {"type": "string", "minLength": 3},
                        "force": {"type": "boolean", "default": False},
                        "waitSeconds": {"type": "integer", "minimum": 0},
                        "labels": {"type": "array", "items": {"type": "string"}},
                        "id": {"type": "string", "readOnly": True},
                    },
                },
                "Config": {
                    "type": "object",
                    "required": ["replicas"],
                    "properties": {
                        "replicas": {"type": "integer", "minimum": 0},
                        "limits": {
                            "type": "object",
                            "properties": {
                                "cpu": {"type": "number"},
                                "memory-mb": {"type": "integer"},
                            },
                            "additionalProperties": False,
                        },
                        "mode": {"type": "string", "enum": ["blue", "green"], "nullable": True},
                    },
                },
            }
        },
    }


class HttpService:
    """The service's state: what it received, and the switches tests flip."""

    def __init__(self, *, token: str | None = None) -> None:
        self.token = token
        self.received: list[Seen] = []
        self.attempts: Counter[str] = Counter()
        self.hanging = asyncio.Event()
        """Set once a request is waiting in ``/api/hang``."""
        self.stopping = asyncio.Event()
        """Set when the server shuts down, to let a hanging handler end."""
        self.app = web.Application(middlewares=[self._record])
        self.app.add_routes(
            [
                web.get("/openapi.json", self._openapi),
                web.get("/openapi.yaml", self._openapi_yaml),
                web.get("/broken.json", self._broken_document),
                web.get("/api/services", self._list),
                web.get("/api/services/{service}", self._get),
                web.delete("/api/services/{service}", self._delete),
                web.post("/api/services/{service}/restart", self._restart),
                web.put("/api/services/{service}/config", self._config),
                web.get("/api/whoami", self._whoami),
                web.get("/api/echo", self._echo),
                web.route("*", "/api/flaky/{key}", self._flaky),
                web.get("/api/hang", self._hang),
                web.get("/api/big", self._big),
                web.get("/api/bad-utf8", self._bad_utf8),
                web.get("/api/not-json", self._not_json),
                web.get("/api/text", self._text),
                web.get("/api/missing", self._missing),
                web.route("*", "/api/redirect", self._redirect),
            ]
        )

    def paths(self) -> list[str]:
        return [seen.raw_path for seen in self.received]

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()
        self.received.append(
            Seen(request.method, request.raw_path, CIMultiDict(request.headers), body)
        )
        response: web.StreamResponse = await handler(request)
        return response

    async def _openapi(self, request: web.Request) -> web.Response:
        server = request.query.get("server", f"{request.url.origin()}/api")
        return web.json_response(openapi_document(server))

    async def _openapi_yaml(self, request: web.Request) -> web.Response:
        import yaml

        document = openapi_document(f"{request.url.origin()}/api")
        return web.Response(text=yaml.safe_dump(document), content_type="application/yaml")

    async def _broken_document(self, request: web.Request) -> web.Response:
        return web.Response(text='{"openapi": "3.0.3", "paths": {', content_type="application/json")

    async def _list(self, request: web.Request) -> web.Response:
        services = [
            {"name": "web", "status": "running", "replicas": 2},
            {"name": "worker", "status": "stopped", "replicas": 0},
        ]
        if status := request.query.get("status"):
            services = [s for s in services if s["status"] == status]
        return web.json_response({"services": services, "total": len(services)})

    async def _get(self, request: web.Request) -> web.Response:
        service = request.match_info["service"]
        return web.json_response(
            {
                "name": service,
                "status": "running",
                "replicas": 2,
                "meta": {"owner": "ops", "build": 17, "tags": ["a", "b"]},
            }
        )

    async def _delete(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _restart(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            {
                "service": request.match_info["service"],
                "job": {"id": 42, "state": "queued"},
                "dry_run": request.query.get("dryRun") == "true",
                "received": body,
                "request_id": request.headers.get("X-Request-Id"),
            },
            status=202,
        )

    async def _config(self, request: web.Request) -> web.Response:
        return web.json_response({"applied": await request.json()})

    async def _whoami(self, request: web.Request) -> web.Response:
        sent = request.headers.get("Authorization", "")
        if self.token is not None and sent == f"Bearer {self.token}":
            return web.json_response({"user": "lam"})
        # Echoing the credentials back is what careless APIs do; LAM must mask it.
        return web.json_response({"error": f"invalid credentials {sent!r}"}, status=401)

    async def _echo(self, request: web.Request) -> web.Response:
        return web.json_response({"headers": dict(request.headers), "query": dict(request.query)})

    async def _flaky(self, request: web.Request) -> web.Response:
        """500 until the request is attempted ``fail`` times, then 200."""
        key = request.match_info["key"]
        self.attempts[key] += 1
        if self.attempts[key] <= int(request.query.get("fail", "1")):
            return web.json_response({"error": "busy"}, status=500)
        return web.json_response({"attempt": self.attempts[key]})

    async def _hang(self, request: web.Request) -> web.Response:
        self.hanging.set()
        await self.stopping.wait()
        return web.Response(status=503, text="shutting down")

    async def _big(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        if request.query.get("declared"):
            response.content_length = BIG_BODY_BYTES
        await response.prepare(request)
        chunk = b"x" * 65536
        try:
            for _ in range(BIG_BODY_BYTES // len(chunk)):
                await response.write(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client stopped reading at its cap and closed the connection
        return response

    async def _bad_utf8(self, request: web.Request) -> web.Response:
        return web.Response(
            body=b"status: \xff\xfe broken", headers={"Content-Type": "text/plain; charset=utf-8"}
        )

    async def _not_json(self, request: web.Request) -> web.Response:
        return web.Response(text="<html>oops</html>", content_type="application/json")

    async def _text(self, request: web.Request) -> web.Response:
        return web.Response(text="all good\n")

    async def _missing(self, request: web.Request) -> web.Response:
        return web.json_response({"error": "no such service"}, status=404)

    async def _redirect(self, request: web.Request) -> web.Response:
        """A redirect to ``to``; without one, to itself, for ever."""
        status = int(request.query.get("status", "302"))
        location = request.query.get("to", request.path_qs)
        return web.Response(status=status, headers={"Location": location})


@asynccontextmanager
async def serving(service: HttpService) -> AsyncIterator[str]:
    """Serve ``service`` on 127.0.0.1 at a free port; yields its origin (``http://host:port``)."""
    server = TestServer(service.app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        service.stopping.set()
        await server.close()
