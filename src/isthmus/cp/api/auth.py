"""Authentication and authorisation of REST requests, as Kuma's API server does it.

Credentials travel as ``Authorization: Bearer <token>``; the token is a user token or a data-plane token.

* No token: ``GET /`` (the index: product, version, xDS address) is open to everyone; a request from a
  loopback address is an admin (unless ``localhost_is_admin`` is off); with ``--dp-auth none`` the data-plane
  endpoints below are open to anyone; everything else is 401.
* An invalid, expired or revoked token: 401, wherever the request comes from.
* A user token: readable by everyone; writes (POST, PUT, PATCH, DELETE) and everything under ``/tokens`` need the
  group ``mesh-system:admin`` (403 otherwise). ``mesh-system:readonly`` (or any other group) reads only.
* A data-plane token: only ``GET /`` and ``GET``/``PUT``/``DELETE`` of ``/meshes/{mesh}/dataplanes/{name}`` for
  its own mesh and name (a token without a name: any name); the Dataplane sent by a ``PUT``, and the one stored
  under that name, must have tags the token allows (403 otherwise).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from isthmus.auth import Auth
from isthmus.auth.tokens import DataplaneIdentity, InvalidToken, UserIdentity, dataplane_tags
from isthmus.auth.xds import bearer_token
from isthmus.cp.api.limits import replay_body
from isthmus.store.base import ResourceStore

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DATAPLANE_METHODS = frozenset({"GET", "PUT", "DELETE"})
MAX_DATAPLANE_BODY = 1024 * 1024  # a Dataplane sent with a data-plane token is read here before the route


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def dataplane_path(path: str) -> tuple[str, str] | None:
    """``(mesh, name)`` of ``/meshes/{mesh}/dataplanes/{name}``, None for any other path."""
    parts = path.split("/")
    if len(parts) == 5 and parts[0] == "" and parts[1] == "meshes" and parts[3] == "dataplanes":
        if parts[2] and parts[4]:
            return parts[2], parts[4]
    return None


class Denied(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class AuthMiddleware:
    """ASGI middleware in front of the whole API (see the module docstring)."""

    def __init__(self, app: App, auth: Auth, store: ResourceStore) -> None:
        self.app = app
        self.auth = auth
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            receive = await self._check(scope, receive)
        except Denied as exc:
            title = HTTPStatus(exc.status).phrase
            response = JSONResponse({"title": title, "status": exc.status, "detail": exc.detail}, exc.status)
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _check(self, scope: Scope, receive: Receive) -> Receive:
        """Returns the ``receive`` to hand on (a data-plane PUT's body is read here); raises :class:`Denied`."""
        method = str(scope.get("method", "GET")).upper()
        path = str(scope.get("path", "/"))
        if (path == "/gui" or path.startswith("/gui/")) and method in READ_METHODS:
            return receive  # the web UI's files hold no data (cp/api/gui.py); it sends the user's token
        header = None
        for key, value in scope.get("headers", ()):
            if key.lower() == b"authorization":
                header = value.decode("latin-1")
                break
        if header is None:
            if path == "/" and method in READ_METHODS:
                return receive
            client = scope.get("client")
            if self.auth.localhost_is_admin and client and is_loopback(client[0]):
                return receive
            if self.auth.dp_auth == "none" and dataplane_path(path) and method in DATAPLANE_METHODS:
                return receive
            raise Denied(401, "this request needs credentials: 'Authorization: Bearer <token>'")
        token = bearer_token(header)
        if token is None:
            raise Denied(401, "the Authorization header must be 'Bearer <token>'")
        try:
            identity = await self.auth.tokens.verify(token)
        except InvalidToken as exc:
            raise Denied(401, f"invalid token: {exc}") from None
        if isinstance(identity, UserIdentity):
            self._authorize_user(identity, method, path)
            return receive
        return await self._authorize_dataplane(identity, method, path, scope, receive)

    @staticmethod
    def _authorize_user(user: UserIdentity, method: str, path: str) -> None:
        if user.is_admin:
            return
        if path == "/tokens" or path.startswith("/tokens/"):
            raise Denied(403, f"user {user.name!r}: token operations need the group mesh-system:admin")
        if method not in READ_METHODS:
            raise Denied(403, f"user {user.name!r} may only read: {method} needs the group mesh-system:admin")

    async def _authorize_dataplane(
        self, identity: DataplaneIdentity, method: str, path: str, scope: Scope, receive: Receive
    ) -> Receive:
        if path == "/" and method in READ_METHODS:
            return receive
        zone_plural = {"ingress": "zoneingresses", "egress": "zoneegresses"}.get(identity.type)
        if zone_plural is not None:  # a zone proxy's token: its own ZoneIngress/ZoneEgress only
            parts = path.rstrip("/").split("/")
            if len(parts) != 3 or parts[1] != zone_plural or method not in DATAPLANE_METHODS:
                raise Denied(
                    403,
                    f"an {identity.type} token only allows GET /, and GET, PUT and DELETE of its "
                    f"/{zone_plural}/{{name}}",
                )
            if identity.name and parts[2] != identity.name:
                raise Denied(403, f"the {identity.type} token is for {identity.name!r}, not {parts[2]!r}")
            return receive
        target = dataplane_path(path)
        if target is None or method not in DATAPLANE_METHODS:
            raise Denied(
                403,
                "a data-plane token only allows GET /, and GET, PUT and DELETE of its own "
                "/meshes/{mesh}/dataplanes/{name}",
            )
        mesh, name = target
        if mesh != identity.mesh or (identity.name and name != identity.name):
            who = f"{identity.mesh}/{identity.name}" if identity.name else f"mesh {identity.mesh!r}"
            raise Denied(403, f"the data-plane token is for {who}, not {mesh}/{name}")
        if identity.tags:
            stored = await self.store.get("Dataplane", mesh, name)
            if stored is not None:
                refusal = identity.refusal(mesh, name, dataplane_tags(stored.spec))
                if refusal is not None:
                    raise Denied(403, f"the stored Dataplane {name!r}: {refusal}")
        if method != "PUT":
            return receive
        body = await self._read_body(receive)
        replay = replay_body(body, receive)
        document = await self._parse(scope, body, receive)
        if isinstance(document, dict):
            refusal = identity.refusal(mesh, name, dataplane_tags(document))
            if refusal is not None:
                raise Denied(403, refusal)
        return replay

    @staticmethod
    async def _read_body(receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise Denied(400, "the client went away before sending its body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_DATAPLANE_BODY:
                raise Denied(413, f"the request body is larger than {MAX_DATAPLANE_BODY} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _parse(scope: Scope, body: bytes, receive: Receive) -> Any:
        """The body as the route will read it (the same parser), or None when the route will refuse it."""
        from isthmus.cp.api.resources import read_body

        try:
            return await read_body(Request(scope, replay_body(body, receive)))
        except Exception:  # the route refuses it the same way (400, 413) and stores nothing
            return None


def install(app: Any, auth: Auth, store: ResourceStore) -> None:
    """Put the middleware in front of ``app`` (a FastAPI/Starlette application)."""
    app.add_middleware(AuthMiddleware, auth=auth, store=store)
