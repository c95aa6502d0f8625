"""The global control plane's KDS server: zones connect here (gRPC, TLS), authenticate with their zone token,
receive the global's resources and send theirs.

A stream is refused with ``UNAUTHENTICATED`` without a valid zone token, ``PERMISSION_DENIED`` when the token is
for another zone (or lacks the ``cp`` scope, or the Zone is disabled) and ``ALREADY_EXISTS`` while another
stream of the same zone is open.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import grpc

from isthmus.auth.tokens import InvalidToken, TokenService
from isthmus.auth.xds import metadata_token
from isthmus.auth.zone_tokens import verify_zone_token
from isthmus.cp.certificates import ensure_mesh_ca
from isthmus.kds import insights
from isthmus.kds.protocol import (
    FULL_METHOD,
    METHOD,
    SERVER_OPTIONS,
    SERVICE,
    ProtocolError,
    Publisher,
    decode,
    encode,
    message_kind,
)
from isthmus.kds.sync import (
    UPSTREAM,
    Changes,
    downstream_types,
    downstream_wire,
    global_name,
    key_text,
    parse_key,
    upstream_on_global,
    zone_key_on_global,
)
from isthmus.resources.common import STORED
from isthmus.resources.mesh import CaBackendType, MeshSpec
from isthmus.resources.registry import Registry, Scope, from_record
from isthmus.resources.zone import zone_name_problem
from isthmus.store.base import Op, OpKind, ResourceStore

log = logging.getLogger(__name__)
HELLO_TIMEOUT = 30.0

__all__ = ["FULL_METHOD", "KdsServer"]


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


class KdsServer:
    def __init__(
        self, store: ResourceStore, registry: Registry, tokens: TokenService, *, instance_id: str
    ) -> None:
        self.store, self.registry, self.tokens, self.instance_id = store, registry, tokens, instance_id
        self.active: dict[str, str] = {}  # zone -> subscription id
        self._server: grpc.aio.Server | None = None
        self._lock = asyncio.Lock()

    # -- server lifecycle ---------------------------------------------------------------------------------------
    async def start(self, address: str, credentials: grpc.ServerCredentials) -> int:
        server = grpc.aio.server(options=SERVER_OPTIONS)
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                METHOD: grpc.stream_stream_rpc_method_handler(
                    self.sync, request_deserializer=decode, response_serializer=encode
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        try:
            port = int(server.add_secure_port(address, credentials))
        except RuntimeError as exc:
            raise OSError(f"cannot bind the KDS server to {address}: {exc}") from exc
        if port == 0:
            raise OSError(f"cannot bind the KDS server to {address}")
        await server.start()
        self._server = server
        return port

    async def stop(self, grace: float = 1.0) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)

    # -- one zone's stream --------------------------------------------------------------------------------------
    async def _authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        token = metadata_token(context.invocation_metadata() or ())
        if not token:
            raise _Abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "a zone token is required: gRPC metadata 'authorization: Bearer <token>' "
                "(isthmus generate zone-token --zone NAME on the global)",
            )
        try:
            identity = await verify_zone_token(self.tokens, token)
        except InvalidToken as exc:
            raise _Abort(grpc.StatusCode.UNAUTHENTICATED, f"invalid zone token: {exc}") from None
        if not identity.allows("cp"):
            raise _Abort(grpc.StatusCode.PERMISSION_DENIED, "the zone token has no 'cp' scope")
        return identity.zone

    async def sync(
        self, requests: AsyncIterable[dict[str, Any]], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        try:
            zone = await self._authenticate(context)
            stream = aiter(requests)
            hello = await self._hello(stream, zone)
            async with self._lock:
                if zone in self.active:
                    raise _Abort(
                        grpc.StatusCode.ALREADY_EXISTS,
                        f"zone {zone!r} is already connected to this global control plane (is another zone "
                        "control plane running with the same --zone?)",
                    )
                zone_record = await insights.ensure_zone(self.store, zone)
                if zone_record.spec.get("enabled") is False:
                    raise _Abort(
                        grpc.StatusCode.PERMISSION_DENIED, f"zone {zone!r} is disabled (Zone.enabled)"
                    )
                subscription = uuid.uuid4().hex
                self.active[zone] = subscription
        except _Abort as abort:
            log.warning("KDS stream refused: %s", abort.detail)
            await context.abort(abort.code, abort.detail)
            return
        log.info("zone %r connected", zone)
        try:
            version = hello.get("version") if isinstance(hello.get("version"), dict) else {}
            await insights.zone_connected(self.store, zone, subscription, self.instance_id, version or {})
            await _Session(self, zone, subscription, context, hello).run(stream)
        except ProtocolError as exc:
            log.warning("zone %r: %s", zone, exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        finally:
            async with self._lock:
                if self.active.get(zone) == subscription:
                    del self.active[zone]
            log.info("zone %r disconnected", zone)
            await asyncio.shield(insights.zone_disconnected(self.store, zone, subscription))

    async def _hello(self, stream: AsyncIterator[dict[str, Any]], zone: str) -> dict[str, Any]:
        try:
            first = await asyncio.wait_for(anext(stream), HELLO_TIMEOUT)
            kind, body = message_kind(first)
        except (StopAsyncIteration, TimeoutError):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "the zone sent no hello") from None
        except ProtocolError as exc:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if kind != "hello":
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"the first message must be hello, not {kind!r}")
        claimed = body.get("zone")
        if zone_name_problem(claimed):
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"hello.zone {claimed!r}: {zone_name_problem(claimed)}"
            )
        if claimed != zone:
            raise _Abort(
                grpc.StatusCode.PERMISSION_DENIED, f"the zone token is for zone {zone!r}, not {claimed!r}"
            )
        return body

    # -- applying a zone's resources ----------------------------------------------------------------------------
    async def apply_upstream(self, zone: str, changes: Changes) -> None:
        """Store a zone's changes as one atomic write: its resources under their global names and labels."""
        ops: list[Op] = []
        problems: list[str] = []
        for wire in changes.upsert:
            rtype = self.registry.kind(str(wire.get("type")))
            if rtype is None or rtype.sync not in UPSTREAM:
                problems.append(f"{wire.get('type')!r} is not a kind zones sync to the global")
                continue
            mesh = str(wire.get("mesh", ""))
            if rtype.scope is Scope.MESH and await self.store.get("Mesh", "", mesh) is None:
                continue  # its mesh is gone from the global: the zone drops it when the mesh removal arrives
            try:
                rtype.spec_model.model_validate(wire.get("spec") or {}, context={STORED: True})
            except ValueError as exc:
                problems.append(f"{rtype.kind} {wire.get('name')!r}: {exc}")
                continue
            stored = upstream_on_global(wire, zone)
            existing = await self.store.get(rtype.kind, mesh, stored["name"])
            if existing is not None and zone_key_on_global(existing, zone) is None:
                problems.append(
                    f"{rtype.kind} {stored['name']!r} exists on the global and is not zone {zone!r}'s"
                )
                continue
            ops.append(
                Op(
                    OpKind.UPSERT,
                    rtype.kind,
                    mesh,
                    stored["name"],
                    spec=stored["spec"],
                    labels=stored["labels"],
                )
            )
        for kind, mesh, name in changes.remove:
            existing = await self.store.get(kind, mesh, global_name(name, mesh, zone))
            if existing is not None and zone_key_on_global(existing, zone) is not None:
                ops.append(Op(OpKind.DELETE, kind, mesh, existing.name))
        if ops:
            await self.store.write(ops)
        if problems:
            raise ValueError("; ".join(problems))

    async def zone_keys(self, zone: str) -> list[str]:
        keys = []
        for rtype in self.registry.all():
            if rtype.sync in UPSTREAM:
                for record in (await self.store.list(rtype.kind)).items:
                    key = zone_key_on_global(record, zone)
                    if key is not None:
                        keys.append(key_text(key))
        return sorted(keys)

    async def ensure_cas(self, kinds: set[str]) -> None:
        """Every mesh with a built-in CA has it in the store before the mesh is sent, so that zones issue
        certificates from the global's CA (one CA per mesh across zones) rather than make their own."""
        if "Mesh" not in kinds and "Secret" not in kinds:
            return
        for record in (await self.store.list("Mesh")).items:
            try:
                spec = from_record(record, self.registry).spec
            except ValueError:
                continue
            assert isinstance(spec, MeshSpec)
            for backend in spec.mtls.backends if spec.mtls else []:
                if backend.type is CaBackendType.BUILTIN:
                    await ensure_mesh_ca(self.store, record.name, backend.name)


class _Session:
    def __init__(
        self,
        server: KdsServer,
        zone: str,
        subscription: str,
        context: grpc.aio.ServicerContext[Any, Any],
        hello: dict[str, Any],
    ) -> None:
        self.server, self.zone, self.subscription, self.context = server, zone, subscription, context
        self.hello = hello
        self._write_lock = asyncio.Lock()
        self.publisher = Publisher(
            server.store,
            downstream_types(server.registry),
            lambda rtype, record: downstream_wire(rtype, record, zone),
            self.send,
            before_snapshot=server.ensure_cas,
        )

    async def send(self, message: dict[str, Any]) -> None:
        async with self._write_lock:
            await self.context.write(message)

    async def run(self, stream: AsyncIterator[dict[str, Any]]) -> None:
        have = self.hello.get("have") or {}
        if not isinstance(have, dict):
            raise ProtocolError("hello.have must be an object")
        try:
            self.publisher.have = {parse_key(k): str(v) for k, v in have.items()}
        except ValueError as exc:
            raise ProtocolError(f"hello.have: {exc}") from None
        async with self.server.store.subscribe() as events:
            await self.send(
                {
                    "hello": {
                        "instanceId": self.server.instance_id,
                        "have": await self.server.zone_keys(self.zone),
                    }
                }
            )
            publishing = asyncio.create_task(self.publisher.run(events), name=f"kds-to-{self.zone}")
            try:
                await self._read(stream, publishing)
            finally:
                publishing.cancel()
                await asyncio.wait([publishing])

    async def _read(self, stream: AsyncIterator[dict[str, Any]], publishing: asyncio.Task[None]) -> None:
        reading = asyncio.ensure_future(anext(stream, None))
        while True:
            done, _ = await asyncio.wait({reading, publishing}, return_when=asyncio.FIRST_COMPLETED)
            if publishing in done:
                reading.cancel()
                publishing.result()  # raises what ended it
                return
            message = reading.result()
            if message is None:
                return
            await self._handle(message)
            reading = asyncio.ensure_future(anext(stream, None))

    async def _handle(self, message: dict[str, Any]) -> None:
        kind, body = message_kind(message)
        if kind == "changes":
            nonce = str(body.get("nonce", ""))
            try:
                await self.server.apply_upstream(self.zone, Changes.from_message(body))
            except ValueError as exc:
                log.warning("zone %r: changes %s refused in part: %s", self.zone, nonce, exc)
                await self.send({"nack": {"nonce": nonce, "error": str(exc)}})
                return
            await self.send({"ack": {"nonce": nonce}})
        elif kind in ("ack", "nack"):
            self.publisher.acknowledged(
                str(body.get("nonce", "")), body.get("error") if kind == "nack" else None
            )
        elif kind == "insight":
            await insights.zone_status(self.server.store, self.zone, self.subscription, body)
        else:
            raise ProtocolError(f"unknown KDS message {kind!r}")
