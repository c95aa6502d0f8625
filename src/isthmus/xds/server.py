"""State-of-the-world ADS (``StreamAggregatedResources``) over grpc.aio.

Each stream runs in one TaskGroup, so a failure of any part ends the whole stream:

* a *reader* takes the requests and updates the stream's per-type state;
* a *watcher* wakes the stream when the node's snapshot changes (:meth:`SnapshotCache.wait_for_change`);
* a *pusher* wakes on that, or when a NACK back-off expires;
* one *writer* drains the outbox (grpc.aio allows one outstanding write per call).

The RPC handler waits until the client closes its side or the server stops, then cancels them.

Requests and wake-ups both end in :meth:`AdsServer._sync`, which decides synchronously, type by type in the
order CDS, EDS, LDS, RDS, SDS, what the client lacks, and puts the responses in the outbox. The outbox keeps at
most one unwritten response per type (a newer one replaces it and moves to the back), so a slow client gets the
latest state, in order, and no backlog. The rules (Envoy's xds_protocol document):

* the node is only on the first request; every response has a fresh nonce; a request whose nonce is not the
  latest one sent for its type is stale and ignored;
* a request with ``error_detail`` is a NACK: counted, reported, the rejected version is never sent again on the
  stream, and a newer version goes out only after the back-off. A node that reconnects within the back-off
  waits out the rest of it (no NACK loop across reconnects);
* a response goes out when the client lacks something: a version other than the one it holds (which also
  answers a request that reports a lagging version, as Envoy does for EDS after a CDS change), or a requested
  name it has not received yet;
* LDS and CDS responses carry the full state (wildcard); other types carry the requested names that exist, and
  names that do not exist yet are sent when they appear;
* until the node has a snapshot, requests are only recorded.

Before anything is served, an optional *authenticator* sees the node id of the first request and the stream's
gRPC metadata; it refuses the stream by raising :class:`StreamDenied` (UNAUTHENTICATED, PERMISSION_DENIED). The
node id is only on the first request, so the whole stream is bound to the node the authenticator accepted.
State per stranger is bounded. A new stream must send its first request and be authenticated within
``auth_timeout`` seconds (DEADLINE_EXCEEDED otherwise); until then it counts against ``max_pending_streams``
only, so strangers that open streams and send nothing cannot take the slots of proxies with valid tokens. A node
id longer than :data:`~isthmus.xds.node.MAX_NODE_ID_LENGTH` is refused (INVALID_ARGUMENT) before it is
authenticated, and node ids are cut short in log messages. At most ``max_streams`` authenticated streams
(RESOURCE_EXHAUSTED beyond), and at most ``max_nack_records`` nodes remembered for the NACK back-off across
reconnects (the oldest is dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from isthmus.xds import types
from isthmus.xds.cache import SnapshotCache
from isthmus.xds.metrics import XdsMetrics
from isthmus.xds.node import MAX_NODE_ID_LENGTH, loggable_node_id
from isthmus.xds.snapshot import Resource, Snapshot

__all__ = ["AdsServer", "Authenticator", "NullCallbacks", "StreamDenied", "XdsCallbacks"]

log = logging.getLogger(__name__)

CONTROL_PLANE_ID = "isthmus"
DEFAULT_MAX_STREAMS = 10_000
DEFAULT_MAX_PENDING_STREAMS = 1_000
DEFAULT_AUTH_TIMEOUT = 10.0
DEFAULT_MAX_NACK_RECORDS = 10_000

_SERVER_OPTIONS = [
    # Ping idle clients so dead connections are noticed; accept client pings down to every 10 s.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    # Streams are long-lived: end connections after ~10 min (gRPC adds jitter) so proxies rebalance across
    # control-plane replicas; Envoy reconnects by itself and keeps serving its config meanwhile.
    ("grpc.max_connection_age_ms", 600_000),
    ("grpc.max_connection_age_grace_ms", 30_000),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


class XdsCallbacks(Protocol):
    """Observers of the ADS streams. Called on the event loop; keep them synchronous and cheap. An exception
    raised by a callback is logged and does not affect the stream."""

    def on_stream_open(self, stream_id: int, node_id: str, node: Any) -> None: ...
    def on_stream_closed(self, stream_id: int, node_id: str) -> None: ...
    def on_response_sent(
        self, stream_id: int, node_id: str, type_url: str, version: str, nonce: str
    ) -> None: ...
    def on_ack(self, stream_id: int, node_id: str, type_url: str, version: str) -> None: ...
    def on_nack(
        self, stream_id: int, node_id: str, type_url: str, rejected_version: str, error_message: str
    ) -> None: ...


class StreamDenied(Exception):
    """Raised by an authenticator to refuse a stream with a gRPC status (UNAUTHENTICATED, PERMISSION_DENIED)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# (node id, invocation metadata as (lower-case key, value) pairs) -> returns, or raises StreamDenied
Authenticator = Callable[[str, Sequence[tuple[str, str | bytes]]], Awaitable[None]]


class NullCallbacks:
    """Callbacks that do nothing; subclass it to observe only some events."""

    def on_stream_open(self, stream_id: int, node_id: str, node: Any) -> None:
        pass

    def on_stream_closed(self, stream_id: int, node_id: str) -> None:
        pass

    def on_response_sent(self, stream_id: int, node_id: str, type_url: str, version: str, nonce: str) -> None:
        pass

    def on_ack(self, stream_id: int, node_id: str, type_url: str, version: str) -> None:
        pass

    def on_nack(
        self, stream_id: int, node_id: str, type_url: str, rejected_version: str, error_message: str
    ) -> None:
        pass


@dataclass
class _TypeState:
    """What one stream knows about one type URL."""

    wildcard: bool = False
    names: frozenset[str] = frozenset()  # subscribed names (without "*")
    nonce: str = ""  # latest nonce put in the outbox
    sent_version: str = ""  # version of that response
    sent_at: float = 0.0  # when it was handed to the transport
    acked_nonce: str = ""  # the nonce whose ACK was counted (a nonce is ACKed once)
    known_version: str = ""  # version the client holds, as far as we know
    known_names: frozenset[str] = frozenset()  # names it received with that version
    nacked_version: str | None = None  # never sent again on this stream
    backoff_until: float = 0.0  # no response for this type before (time.monotonic)


class _Outbox:
    """Responses waiting for the writer: at most one per type URL, oldest first."""

    def __init__(self) -> None:
        self._pending: dict[str, discovery_pb2.DiscoveryResponse] = {}
        self._ready = asyncio.Event()

    def put(self, response: discovery_pb2.DiscoveryResponse) -> None:
        self._pending.pop(response.type_url, None)  # a newer response supersedes, and queues after the others
        self._pending[response.type_url] = response
        self._ready.set()

    async def get(self) -> discovery_pb2.DiscoveryResponse:
        while not self._pending:
            self._ready.clear()
            await self._ready.wait()
        return self._pending.pop(next(iter(self._pending)))


@dataclass
class _Stream:
    id: int
    node_id: str
    node: Any
    types: dict[str, _TypeState] = field(default_factory=dict)
    outbox: _Outbox = field(default_factory=_Outbox)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)  # the client closed its side, or we stop
    nonces: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """Serves the snapshots of a :class:`SnapshotCache` over ADS. Runs on the event loop of the cache."""

    def __init__(
        self,
        cache: SnapshotCache,
        callbacks: XdsCallbacks | None = None,
        metrics: XdsMetrics | None = None,
        nack_backoff: float = 5.0,
        *,
        authenticator: Authenticator | None = None,
        max_streams: int = DEFAULT_MAX_STREAMS,
        max_pending_streams: int = DEFAULT_MAX_PENDING_STREAMS,
        auth_timeout: float = DEFAULT_AUTH_TIMEOUT,
        max_nack_records: int = DEFAULT_MAX_NACK_RECORDS,
    ) -> None:
        self.cache = cache
        self.callbacks: XdsCallbacks = callbacks if callbacks is not None else NullCallbacks()
        self.metrics = metrics
        self.nack_backoff = nack_backoff
        self.authenticator = authenticator
        self.max_streams = max_streams
        self.max_pending_streams = max_pending_streams
        self.auth_timeout = auth_timeout
        self.max_nack_records = max_nack_records
        self._stream_ids = itertools.count(1)
        self._server: grpc.aio.Server | None = None
        self._streams: dict[int, _Stream] = {}
        self._active = 0  # authenticated streams (at most max_streams)
        self._pending = 0  # streams waiting for their first request or its authentication
        self._stopping = False
        # node id -> type URL -> (rejected version, end of back-off): carries a back-off over reconnects;
        # ordered oldest first, at most max_nack_records nodes
        self._recent_nacks: dict[str, dict[str, tuple[str, float]]] = {}
        self._extra_servicers: list[Callable[[grpc.aio.Server], None]] = []

    def add_servicer(self, register: Callable[[grpc.aio.Server], None]) -> None:
        """Serve another gRPC service on the same port (e.g. HDS): ``register(server)`` runs in :meth:`start`."""
        self._extra_servicers.append(register)

    # -- lifecycle ---------------------------------------------------------------------------------------------
    async def start(self, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
        """Listen on ``host:port`` (port 0 picks a free one), with TLS when ``credentials`` are given;
        returns the bound port."""
        server = grpc.aio.server(options=_SERVER_OPTIONS)
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, server)
        for register in self._extra_servicers:
            register(server)
        try:
            if credentials is not None:
                port = int(server.add_secure_port(address, credentials))
            else:
                port = int(server.add_insecure_port(address))
        except RuntimeError as exc:
            raise OSError(f"cannot bind the xDS server to {address}: {exc}") from exc
        if port == 0:
            raise OSError(f"cannot bind the xDS server to {address}")
        await server.start()
        self._server = server
        self._stopping = False
        return port

    async def stop(self, grace: float = 1.0) -> None:
        """End the open streams (with status OK: Envoy reconnects, to another replica if there is one) and
        stop; RPCs still running after ``grace`` seconds are cancelled."""
        self._stopping = True
        server, self._server = self._server, None
        for stream in self._streams.values():
            stream.done.set()
        if server is not None:
            await server.stop(grace)

    def stream_count(self) -> int:
        return len(self._streams)

    # -- the RPCs ----------------------------------------------------------------------------------------------
    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterable[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        admitted = await self._admit(request_iterator, context)
        if admitted is None or self._stopping:
            return
        first, requests = admitted
        if self._active >= self.max_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this control plane serves at most {self.max_streams} streams; try again later",
            )
        self._active += 1
        if self.metrics is not None:
            self.metrics.streams_active.inc()
        try:
            stream = _Stream(next(self._stream_ids), first.node.id, first.node)
            self._streams[stream.id] = stream
            self._notify(self.callbacks.on_stream_open, stream.id, stream.node_id, stream.node)
            try:
                async with asyncio.TaskGroup() as tg:
                    tasks = [
                        tg.create_task(self._read(stream, first, requests)),
                        tg.create_task(self._write(stream, context)),
                        tg.create_task(self._push(stream)),
                        tg.create_task(self._watch(stream)),
                    ]
                    await stream.done.wait()
                    for task in tasks:
                        task.cancel()
            finally:
                del self._streams[stream.id]
                self._forget_expired_nacks(stream.node_id)
                self._notify(self.callbacks.on_stream_closed, stream.id, stream.node_id)
        finally:
            self._active -= 1
            if self.metrics is not None:
                self.metrics.streams_active.dec()

    async def _admit(
        self,
        request_iterator: AsyncIterable[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> tuple[discovery_pb2.DiscoveryRequest, AsyncIterator[discovery_pb2.DiscoveryRequest]] | None:
        """The stream's first request, once its node id is acceptable and authenticated, and the iterator of
        the next ones (None if the client closed first). Bounded: at most ``max_pending_streams`` at a time, for
        at most ``auth_timeout``."""
        if self._pending >= self.max_pending_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.max_pending_streams} streams are waiting to be authenticated; try again later",
            )
        self._pending += 1
        requests = aiter(request_iterator)
        try:
            async with asyncio.timeout(self.auth_timeout):
                first = await anext(requests, None)
                if first is None:
                    return None
                node_id = first.node.id
                if not node_id:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry node.id"
                    )
                if len(node_id) > MAX_NODE_ID_LENGTH:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"node.id is {len(node_id)} characters long; at most {MAX_NODE_ID_LENGTH} are allowed",
                    )
                if self.authenticator is not None:
                    await self._authenticate(node_id, context)
                return first, requests
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no authenticated first request within {self.auth_timeout:g} s",
            )
            raise  # (abort raises)
        finally:
            self._pending -= 1

    async def _authenticate(self, node_id: str, context: grpc.aio.ServicerContext) -> None:
        assert self.authenticator is not None
        await authenticate_stream(self.authenticator, node_id, context, "xDS")

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterable[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "delta xDS is not supported yet; use state of the world"
        )

    # -- stream tasks ------------------------------------------------------------------------------------------
    async def _read(
        self,
        stream: _Stream,
        first: discovery_pb2.DiscoveryRequest,
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
    ) -> None:
        self._on_request(stream, first)
        async for request in requests:
            self._on_request(stream, request)
        stream.done.set()  # the client closed its side: the stream is over

    async def _write(self, stream: _Stream, context: grpc.aio.ServicerContext) -> None:
        while True:
            response = await stream.outbox.get()
            state = stream.types[response.type_url]
            state.sent_at = time.monotonic()
            if self.metrics is not None:
                self.metrics.responses.labels(response.type_url).inc()
            # before the write, so that no ACK of this response can be seen before it
            self._notify(
                self.callbacks.on_response_sent,
                stream.id,
                stream.node_id,
                response.type_url,
                response.version_info,
                response.nonce,
            )
            # a write in flight finishes even when the stream is ending: gRPC cannot end a call while a message is
            # being sent (the handler's return would fail with TOO_MANY_OPERATIONS and the stream would stay open
            # until the server's grace ran out)
            write = asyncio.ensure_future(context.write(response))
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await write
                raise

    async def _watch(self, stream: _Stream) -> None:
        seen = 0  # a spurious first wake-up is harmless; a missed change is not
        while True:
            seen = await self.cache.wait_for_change(stream.node_id, seen)
            stream.wake.set()

    async def _push(self, stream: _Stream) -> None:
        while True:
            delay = self._next_backoff_expiry(stream)
            try:
                async with asyncio.timeout(delay):
                    await stream.wake.wait()
            except TimeoutError:
                pass  # a NACK back-off expired
            stream.wake.clear()
            self._sync(stream)

    def _next_backoff_expiry(self, stream: _Stream) -> float | None:
        now = time.monotonic()
        pending = [s.backoff_until - now for s in stream.types.values() if s.backoff_until > now]
        return min(pending) + 0.001 if pending else None

    # -- requests (synchronous: nothing else runs between deciding and queueing) ----------------------------------
    def _on_request(self, stream: _Stream, request: discovery_pb2.DiscoveryRequest) -> None:
        type_url = request.type_url
        state = stream.types.get(type_url)
        if request.response_nonce and (state is None or request.response_nonce != state.nonce):
            log.debug("stream %d: stale nonce %r for %s ignored", stream.id, request.response_nonce, type_url)
            return
        if state is None:
            state = stream.types[type_url] = self._new_type_state(stream.node_id, type_url)
        names = frozenset(request.resource_names)
        state.wildcard = "*" in names or (type_url in types.FULL_STATE and not names)
        state.names = names - {"*"}

        if request.response_nonce and request.HasField("error_detail"):
            self._on_nack(stream, state, request)
            return
        if not request.response_nonce:
            # A first request for this type, maybe on a new stream from a client that already holds a version
            # (Envoy may repeat the error of its last NACK there: the back-off of the node covers that case).
            state.known_version, state.known_names = request.version_info, frozenset()
        elif request.response_nonce != state.acked_nonce:
            state.acked_nonce = request.response_nonce
            if request.version_info == state.sent_version:
                state.nacked_version = None
                if self.metrics is not None and state.sent_at:
                    self.metrics.ack_latency.observe(time.monotonic() - state.sent_at)
                self._notify(self.callbacks.on_ack, stream.id, stream.node_id, type_url, request.version_info)
            else:
                state.known_version, state.known_names = request.version_info, frozenset()
        elif request.version_info != state.known_version:
            state.known_version, state.known_names = request.version_info, frozenset()
        self._sync(stream)

    def _on_nack(self, stream: _Stream, state: _TypeState, request: discovery_pb2.DiscoveryRequest) -> None:
        type_url = request.type_url
        rejected = state.sent_version
        message = str(request.error_detail.message)
        until = time.monotonic() + self.nack_backoff
        state.nacked_version = rejected
        state.backoff_until = until
        state.acked_nonce = request.response_nonce
        state.known_version, state.known_names = request.version_info, frozenset()
        self._remember_nack(stream.node_id, type_url, rejected, until)
        if self.metrics is not None:
            self.metrics.nacks.labels(type_url).inc()
        log.warning(
            "%s rejected %s version %s: %s", stream.node_id, types.short_name(type_url), rejected, message
        )
        self._notify(self.callbacks.on_nack, stream.id, stream.node_id, type_url, rejected, message)
        stream.wake.set()  # the pusher re-arms its timer for the end of the back-off

    def _new_type_state(self, node_id: str, type_url: str) -> _TypeState:
        state = _TypeState()
        recent = self._recent_nacks.get(node_id, {}).get(type_url)
        if recent is not None and recent[1] > time.monotonic():
            state.backoff_until = recent[1]  # the node reconnected during a back-off: it waits out the rest
        return state

    def _remember_nack(self, node_id: str, type_url: str, rejected: str, until: float) -> None:
        recent = self._recent_nacks.pop(node_id, {})  # re-inserted last: the most recent node
        recent[type_url] = (rejected, until)
        self._recent_nacks[node_id] = recent
        while len(self._recent_nacks) > self.max_nack_records:
            del self._recent_nacks[next(iter(self._recent_nacks))]

    def nack_record_count(self) -> int:
        return len(self._recent_nacks)

    def _forget_expired_nacks(self, node_id: str) -> None:
        recent = self._recent_nacks.get(node_id)
        if recent is None:
            return
        now = time.monotonic()
        for type_url in [t for t, (_, until) in recent.items() if until <= now]:
            del recent[type_url]
        if not recent:
            del self._recent_nacks[node_id]

    # -- responses ---------------------------------------------------------------------------------------------
    def _sync(self, stream: _Stream) -> None:
        """Queue a response for every subscribed type the client lacks something of, in push order."""
        snapshot = self.cache.get_snapshot(stream.node_id)
        if snapshot is None:
            return  # hold the requests until the node has a snapshot
        extra = sorted(t for t in stream.types if t not in types.PUSH_ORDER)
        for type_url in (*types.PUSH_ORDER, *extra):
            state = stream.types.get(type_url)
            if state is None:
                continue
            selected = self._lacking(type_url, state, snapshot)
            if selected is not None:
                self._respond(stream, type_url, state, snapshot.version(type_url), selected)

    def _lacking(self, type_url: str, state: _TypeState, snapshot: Snapshot) -> Mapping[str, Resource] | None:
        """The resources to send for ``type_url``, or None when the client needs no response."""
        version = snapshot.version(type_url)
        if not version or version == state.nacked_version or time.monotonic() < state.backoff_until:
            return None
        same_version = version == state.known_version
        if same_version and (state.wildcard or state.names <= state.known_names):
            return None
        available = snapshot.get(type_url)
        if state.wildcard:
            selected: Mapping[str, Resource] = available
        else:
            selected = {name: available[name] for name in state.names if name in available}
        if same_version:
            # names it asked for since it got this version, if any exist
            return None if selected.keys() <= state.known_names else selected
        if not selected and type_url not in types.FULL_STATE:
            return None  # nothing it asked for exists yet: the names stay subscribed until they appear
        return selected

    def _respond(
        self,
        stream: _Stream,
        type_url: str,
        state: _TypeState,
        version: str,
        selected: Mapping[str, Resource],
    ) -> None:
        nonce = f"{stream.id}-{next(stream.nonces)}"
        response = discovery_pb2.DiscoveryResponse(
            version_info=version,
            type_url=type_url,
            nonce=nonce,
            resources=[selected[name].packed for name in sorted(selected)],
            control_plane=base_pb2.ControlPlane(identifier=CONTROL_PLANE_ID),
        )
        state.nonce = nonce
        state.sent_version = version
        state.known_version = version
        state.known_names = frozenset(selected)
        stream.outbox.put(response)

    @staticmethod
    def _notify(callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("xDS callback %s failed", getattr(callback, "__name__", callback))


async def authenticate_stream(
    authenticator: Authenticator, node_id: str, context: grpc.aio.ServicerContext, service: str
) -> None:
    """Run ``authenticator`` on a stream's node id and metadata; a refusal aborts the RPC before anything is
    served (``service`` names the stream in the log: xDS, HDS)."""
    metadata = tuple((str(k).lower(), v) for k, v in (context.invocation_metadata() or ()))
    try:
        await authenticator(node_id, metadata)
    except StreamDenied as exc:
        log.warning("%s stream of %s refused: %s", service, loggable_node_id(node_id), exc.message)
        await context.abort(exc.code, exc.message)
    except Exception:
        log.exception("the authenticator failed for node %s", loggable_node_id(node_id))
        await context.abort(grpc.StatusCode.UNAVAILABLE, "could not authenticate the stream; retry later")
