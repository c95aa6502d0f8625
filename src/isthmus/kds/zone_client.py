"""The zone control plane's side of KDS: connect out to the global (gRPC over TLS, zone token), keep the
global's resources in the local store, send the zone's own, and reconnect with back-off whenever the stream
ends. While the global is away the zone serves its data planes with what its store holds; on reconnect the
hellos exchange what each side holds and only the differences travel."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc

from isthmus import __version__
from isthmus.kds.protocol import (
    CHANNEL_OPTIONS,
    FULL_METHOD,
    ZONE_HEADER,
    ProtocolError,
    Publisher,
    decode,
    encode,
    message_kind,
)
from isthmus.kds.sync import (
    DOWNSTREAM,
    ZONE,
    ZONE_STATUS,
    Changes,
    digest,
    downstream_types,
    is_copy_in_zone,
    key_of,
    key_text,
    parse_key,
    upstream_types,
    upstream_wire,
    wire_of,
)
from isthmus.resources.common import STORED
from isthmus.resources.registry import KdsScope, Registry
from isthmus.store.base import Op, OpKind, ResourceStore

log = logging.getLogger(__name__)
INSIGHT_INTERVAL = 5.0
MAX_BACKOFF = 5.0


def parse_global_address(address: str) -> str:
    """``grpcs://HOST:PORT`` (Kuma's form; ``HOST:PORT`` also accepted) -> the gRPC target ``HOST:PORT``."""
    text = address.strip()
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme != "grpcs":
            raise ValueError(f"{address!r}: the scheme must be grpcs:// (KDS always uses TLS)")
        if not parts.hostname or not parts.port or parts.path not in ("", "/"):
            raise ValueError(f"{address!r} must be grpcs://HOST:PORT")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return f"{host}:{parts.port}"
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{address!r} must be grpcs://HOST:PORT")
    return text


@dataclass
class ZoneSyncStatus:
    connected: bool = False
    last_error: str = ""
    connects: int = 0


class ZoneSync:
    """Runs until cancelled. ``online_proxies`` lists the node ids of the data planes connected to this zone
    (for the zone's insight on the global)."""

    def __init__(
        self,
        store: ResourceStore,
        registry: Registry,
        *,
        zone: str,
        global_address: str,
        token_file: Path,
        ca_cert: bytes | None,
        online_proxies: Callable[[], list[str]] | None = None,
    ) -> None:
        self.store, self.registry, self.zone = store, registry, zone
        self.target = parse_global_address(global_address)
        self.global_address = global_address
        self.token_file = token_file
        self.ca_cert = ca_cert
        self.online_proxies = online_proxies
        self.status = ZoneSyncStatus()
        self.types = {t.kind: t for t in downstream_types(registry)}

    async def run(self) -> None:
        backoff = 0.2
        while True:
            try:
                await self._session()
                backoff = 0.2
            except grpc.aio.AioRpcError as exc:
                self._lost(f"{exc.code().name}: {exc.details()}")
                if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    backoff = MAX_BACKOFF
            except (OSError, ProtocolError, ValueError) as exc:
                self._lost(str(exc))
            except Exception as exc:  # never take the zone's control plane down; CancelledError passes
                log.exception("KDS session failed")
                self._lost(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _lost(self, reason: str) -> None:
        if self.status.connected or reason != self.status.last_error:
            log.warning("KDS: the global control plane %s: %s", self.global_address, reason)
        self.status.connected = False
        self.status.last_error = reason

    def _token(self) -> str:
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise OSError(f"cannot read the zone token {self.token_file}: {exc.strerror or exc}") from None
        if not token:
            raise ValueError(f"the zone token file {self.token_file} is empty")
        return token

    async def held_copies(self) -> dict[str, str]:
        """The copies of global resources this zone holds: key -> digest."""
        out: dict[str, str] = {}
        for kind in self.types:
            for record in (await self.store.list(kind)).items:
                if is_copy_in_zone(record, self.zone):
                    out[key_text((record.type, record.mesh, record.name))] = digest(wire_of(record))
        return out

    async def _session(self) -> None:
        credentials = grpc.ssl_channel_credentials(root_certificates=self.ca_cert)
        metadata = (("authorization", f"Bearer {self._token()}"), (ZONE_HEADER, self.zone))
        async with grpc.aio.secure_channel(self.target, credentials, options=CHANNEL_OPTIONS) as channel:
            method = channel.stream_stream(
                FULL_METHOD, request_serializer=encode, response_deserializer=decode
            )
            call: Any = method(metadata=metadata)
            write_lock = asyncio.Lock()

            async def send(message: dict[str, Any]) -> None:
                async with write_lock:
                    try:
                        await call.write(message)
                    except asyncio.InvalidStateError:  # the RPC is over: say why
                        code = await call.code()
                        raise ProtocolError(f"{code.name}: {await call.details()}") from None

            publisher = Publisher(
                self.store,
                upstream_types(self.registry),
                lambda rtype, record: upstream_wire(rtype, record, self.zone),
                send,
            )
            try:
                async with self.store.subscribe() as events:
                    version = {"isthmus": {"version": __version__}}
                    await send(
                        {"hello": {"zone": self.zone, "version": version, "have": await self.held_copies()}}
                    )
                    first = await call.read()
                    if first is grpc.aio.EOF:
                        raise ProtocolError("the global ended the stream before its hello")
                    kind, body = message_kind(first)
                    if kind != "hello":
                        raise ProtocolError(f"the global's first message is {kind!r}, not hello")
                    keys = body.get("have") or []
                    if not isinstance(keys, list):
                        raise ProtocolError("hello.have must be a list")
                    # the zone sends all it has (the global's writes of unchanged resources are no-ops) and
                    # removes what the global holds that it no longer has
                    publisher.have = {parse_key(str(k)): "" for k in keys}
                    self.status.connected, self.status.last_error = True, ""
                    self.status.connects += 1
                    log.info("KDS: connected to the global %s as zone %r", self.global_address, self.zone)
                    background = [
                        asyncio.create_task(publisher.run(events), name="kds-to-global"),
                        asyncio.create_task(self._insights(send), name="kds-insight"),
                    ]
                    try:
                        await self._read(call, send, publisher, background)
                    finally:
                        for task in background:
                            task.cancel()
                        await asyncio.wait(background)
            finally:
                call.cancel()

    async def _read(
        self, call: Any, send: Any, publisher: Publisher, background: list[asyncio.Task[None]]
    ) -> None:
        while True:
            reading = asyncio.ensure_future(call.read())
            done, _ = await asyncio.wait({reading, *background}, return_when=asyncio.FIRST_COMPLETED)
            if reading not in done:
                reading.cancel()
                for task in done:
                    task.result()  # raises what ended it
                raise ProtocolError("a KDS task ended")
            message = reading.result()
            if message is grpc.aio.EOF:
                raise ProtocolError("the global ended the stream")
            kind, body = message_kind(message)
            if kind == "changes":
                nonce = str(body.get("nonce", ""))
                try:
                    await self.apply_downstream(Changes.from_message(body))
                except ValueError as exc:
                    log.warning("KDS: changes %s from the global refused in part: %s", nonce, exc)
                    await send({"nack": {"nonce": nonce, "error": str(exc)}})
                    continue
                await send({"ack": {"nonce": nonce}})
            elif kind in ("ack", "nack"):
                publisher.acknowledged(
                    str(body.get("nonce", "")), body.get("error") if kind == "nack" else None
                )
            else:
                raise ProtocolError(f"unknown KDS message {kind!r}")

    async def apply_downstream(self, changes: Changes) -> None:
        """Store the global's changes as one atomic write. Only copies are deleted; a global resource replaces a
        zone's own resource of the same kind and name (the global's wins, with a warning)."""
        ops: list[Op] = []
        problems: list[str] = []
        for wire in changes.upsert:
            rtype = self.types.get(str(wire.get("type")))
            if rtype is None:
                problems.append(f"{wire.get('type')!r} is not a kind the global syncs to zones")
                continue
            labels = wire.get("labels") or {}
            if rtype.sync is KdsScope.FROM_ZONE_TO_ALL and labels.get(ZONE) in (None, "", self.zone):
                problems.append(f"{rtype.kind} {wire.get('name')!r} is not another zone's")
                continue
            if rtype.sync not in DOWNSTREAM and rtype.sync is not KdsScope.FROM_ZONE_TO_ALL:
                continue
            try:
                rtype.spec_model.model_validate(wire.get("spec") or {}, context={STORED: True})
            except ValueError as exc:
                problems.append(f"{rtype.kind} {wire.get('name')!r}: {exc}")
                continue
            kind, mesh, name = key_of(wire)
            existing = await self.store.get(kind, mesh, name)
            if existing is not None and not is_copy_in_zone(existing, self.zone):
                log.warning(
                    "KDS: %s %r from the global replaces the zone's own resource of that name", kind, name
                )
            spec = wire.get("spec") or {}
            if kind in ZONE_STATUS and existing is not None and "status" in existing.spec:
                status = dict(existing.spec["status"])  # its VIP and hostnames are this zone's
                for counted in ("dataplaneProxies", "tls"):  # ... its data planes' counts the source zone's
                    status.pop(counted, None)
                    if counted in (spec.get("status") or {}):
                        status[counted] = spec["status"][counted]
                spec = {**spec, "status": status}
            ops.append(Op(OpKind.UPSERT, kind, mesh, name, spec=spec, labels=dict(labels)))
        for kind, mesh, name in changes.remove:
            existing = await self.store.get(kind, mesh, name)
            if existing is not None and is_copy_in_zone(existing, self.zone):
                ops.append(Op(OpKind.DELETE, kind, mesh, name))
        if ops:
            await self.store.write(ops)
        if problems:
            raise ValueError("; ".join(problems))

    async def _insights(self, send: Any) -> None:
        last: dict[str, Any] | None = None
        while True:
            dataplanes = await self.store.list("Dataplane")
            proxies = self.online_proxies() if self.online_proxies is not None else []
            # Dataplanes only: zone ingresses and egresses (node ids ``:zoneingress:...``) are counted apart
            online = sorted(p for p in proxies if not p.startswith(":"))
            ingresses = (await self.store.list("ZoneIngress")).items
            status = {
                "dataplanes": {"total": dataplanes.total, "online": len(online)},
                "zoneIngresses": sum(1 for r in ingresses if not is_copy_in_zone(r, self.zone)),
            }
            if status != last:
                await send({"insight": status})
                last = status
            await asyncio.sleep(INSIGHT_INTERVAL)
