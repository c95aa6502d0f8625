"""The control-plane process: store, generation loop, gRPC ADS and the REST API in one asyncio loop.

Start-up: open the store -> start the ADS server -> start the generation loop and wait for its first full sync
-> serve the REST API (HTTP and HTTPS). Shutdown (SIGINT/SIGTERM; a second one hurries): stop the API servers,
cancel the generation loop, stop the ADS server with a grace period (Envoys keep their last config and reconnect
to the next instance), close the store. Nothing is lost: every resource is in the store; certificates are
re-issued on the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import uvicorn
from prometheus_client import CollectorRegistry

from isthmus.auth import Auth
from isthmus.auth.bootstrap import write_admin_token
from isthmus.auth.tokens import TokenService
from isthmus.auth.xds import XdsAuthenticator
from isthmus.auth.zone_proxies import ZoneProxyAuthenticator
from isthmus.catalog import default_registry
from isthmus.cp.api.app import create_app
from isthmus.cp.certificates import WorkloadCertificates, sds_acks
from isthmus.cp.cleanup import DEFAULT_DATAPLANE_CLEANUP_AGE, Housekeeping
from isthmus.cp.hds import HdsServer, HdsSettings
from isthmus.cp.insights import Insights
from isthmus.cp.read_cache import CachedReads
from isthmus.cp.reconciler import Reconciler
from isthmus.cp.state import ControlPlaneState
from isthmus.cp.stats_scraper import StatsScraper, online_targets
from isthmus.cp.store_metrics import TimedStore
from isthmus.cp.tls import ServerTls, ensure_server_tls
from isthmus.egress.reconciler import EgressReconciler
from isthmus.gateway.admin_api import create_admin_app
from isthmus.gateway.reconciler import GatewayCache, GatewayReconciler
from isthmus.gateway.store import GatewayStore
from isthmus.ingress.reconciler import IngressReconciler
from isthmus.kds.global_server import KdsServer
from isthmus.kds.ownership import WriteGuard
from isthmus.kds.zone_client import ZoneSync
from isthmus.names.controller import NamesController
from isthmus.names.proxy_status import LiveProxies
from isthmus.resources.registry import Registry
from isthmus.store import open_store
from isthmus.store.base import ResourceStore
from isthmus.xds.metrics import XdsMetrics
from isthmus.xds.server import AdsServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CpOptions:
    store: str = "sqlite"  # "memory" | "sqlite" (in data_dir) | "sqlite:PATH"
    api_address: str = "127.0.0.1:5681"
    api_tls_address: str = "127.0.0.1:5682"  # the same API over HTTPS, with the control plane's certificate
    xds_address: str = "127.0.0.1:5678"
    data_dir: Path = Path(".isthmus")
    nack_backoff: float = 5.0
    log_level: str = "info"
    dp_auth: str = "token"  # "token": data planes need a token (REST and ADS); "none": trusted set-ups
    api_localhost_is_admin: bool = True  # a REST request from loopback without a token is an admin
    max_xds_streams: int = 10_000
    # The certificate to present on xDS and HTTPS (with its key); None: one issued from DATA_DIR/tls/ca.crt
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Dataplanes whose agent has been gone longer than this are removed (Kuma's 72h); 0 turns it off
    dataplane_cleanup_age: timedelta = DEFAULT_DATAPLANE_CLEANUP_AGE
    # Kong's Admin API of the gateway (isthmus.gateway); None: not served
    gateway_admin_address: str | None = "127.0.0.1:8001"
    # multi-zone (isthmus.kds): standalone | global (serves KDS on kds_address) | zone (connects to
    # global_address as zone ``zone`` with the token in zone_token_file, verifying the global with kds_ca_cert_file)
    mode: str = "standalone"
    kds_address: str = "127.0.0.1:5685"
    zone: str = ""
    global_address: str = ""
    zone_token_file: Path | None = None
    kds_ca_cert_file: Path | None = None

    def store_spec(self) -> str:
        if self.store == "sqlite":
            return f"sqlite:{self.data_dir / 'isthmus.db'}"
        return self.store


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"address {address!r} must be HOST:PORT")
    return host.strip("[]"), int(port)


def prepare_data_dir(path: Path) -> None:
    """Create the data directory 0700 (an existing directory keeps its mode)."""
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to :func:`_stop_on_signals` (two servers share one process)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.contextmanager
def _stop_on_signals(*servers: uvicorn.Server) -> Iterator[None]:
    """SIGINT/SIGTERM stop every server gracefully; a second signal stops them at once."""
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        log.info("%s: shutting down", sig.name)
        for server in servers:
            server.force_exit = server.should_exit
            server.should_exit = True

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def token_service(store: ResourceStore) -> TokenService:
    """The control plane's tokens, shared by the REST API and ADS stream authentication: signing keys and
    revocation lists are read through a 1 s cache (every request and stream checks a token; a restart reconnects
    every data plane at once; see :mod:`isthmus.cp.read_cache`), and revocations, rotations and key deletions
    made through it drop what it cached at once. Sharing it, a token verified at its REST registration is not
    verified again for its ADS stream."""
    return TokenService(CachedReads(store))


def xds_authenticator(tokens: TokenService, reconciler: Reconciler | None = None) -> XdsAuthenticator:
    """Checks of ADS streams' tokens, with the Dataplanes in the generation loop's view first."""
    known = reconciler.dataplane_spec if reconciler is not None else None
    return XdsAuthenticator(tokens, tokens.store, known)


def _listen(address: str, what: str) -> socket.socket:
    host, port = split_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0 (socket.create_server's): asyncio sets TCP_NODELAY on accepted connections only
    # then, and without it every response on a kept-alive connection waits ~40 ms (Nagle and delayed ACKs)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot bind the {what} to {address}: {exc.strerror or exc}") from None
    return sock


def _zone_sync(options: CpOptions, store: ResourceStore, registry: Registry, insights: Insights) -> ZoneSync:
    """A zone's connection to its global (isthmus.kds); the token file is read at every connection."""
    assert options.zone_token_file is not None
    ca = options.kds_ca_cert_file.read_bytes() if options.kds_ca_cert_file is not None else None
    return ZoneSync(
        store,
        registry,
        zone=options.zone,
        global_address=options.global_address,
        token_file=options.zone_token_file,
        ca_cert=ca,
        online_proxies=lambda: [nid for nid, node in insights.nodes.items() if node.online],
    )


async def run_control_plane(options: CpOptions, ready: asyncio.Event | None = None) -> None:
    api_host, api_port = split_address(options.api_address)
    split_address(options.xds_address)
    prepare_data_dir(options.data_dir)
    tls: ServerTls = ensure_server_tls(
        options.data_dir,
        (
            options.xds_address,
            options.api_address,
            options.api_tls_address,
            *((options.kds_address,) if options.mode == "global" else ()),
        ),
        cert_file=options.tls_cert_file,
        key_file=options.tls_key_file,
    )
    metrics = CollectorRegistry()
    store: ResourceStore = TimedStore(
        open_store(options.store_spec()), metrics
    )  # isthmus_store_operation_seconds
    await store.start()
    registry = default_registry()
    cache = GatewayCache()  # mesh snapshots, with Kong's configuration laid over gateway proxies'
    gateway_store = GatewayStore(store)
    insights = Insights()
    certificates = WorkloadCertificates(sds_acks(insights))  # a CA switch advances on ACKs
    gateway_reconciler = GatewayReconciler(store, gateway_store, cache)
    reconciler = Reconciler(
        store,
        registry,
        cache,
        certificates,
        metrics=metrics,
        gateway_services=gateway_reconciler.mesh_services,
    )
    gateway_reconciler.request_sync = reconciler.request_sync  # a gateway's mesh legs changed
    reconciler.gateway_notes = gateway_reconciler.kong_notes  # isthmus explain of a gateway proxy
    tokens = token_service(store)
    auth = Auth(tokens, dp_auth=options.dp_auth, localhost_is_admin=options.api_localhost_is_admin)
    if not options.api_localhost_is_admin:  # the first admin credential: DATA_DIR/admin-user-token
        log.info("admin user token in %s", await write_admin_token(tokens, options.data_dir))
    reconciler.zone = options.zone if options.mode == "zone" else ""
    ingresses = IngressReconciler(store, registry, cache, reconciler, mode=options.mode, zone=reconciler.zone)
    egresses = EgressReconciler(
        store, registry, cache, reconciler, certificates, mode=options.mode, zone=reconciler.zone
    )

    def zone_proxies_follow(mesh: str) -> None:  # zone ingresses and egresses follow the meshes' endpoints
        ingresses.request_sync(mesh)
        egresses.request_sync(mesh)

    reconciler.on_synced = zone_proxies_follow
    authenticator = (
        ZoneProxyAuthenticator(xds_authenticator(tokens, reconciler), tokens, store)
        if options.dp_auth == "token"
        else None
    )
    ads = AdsServer(
        cache,
        callbacks=insights,
        metrics=XdsMetrics(metrics),
        nack_backoff=options.nack_backoff,
        authenticator=authenticator,
        max_streams=options.max_xds_streams,
    )
    # Kuma's service probes (HDS) on the same port, authenticated like ADS
    hds = HdsServer(store, HdsSettings(max_streams=options.max_xds_streams), authenticator=authenticator)
    ads.add_servicer(hds.register)
    api_socket = _listen(options.api_address, "REST API")
    try:
        tls_socket = _listen(options.api_tls_address, "HTTPS API")
    except OSError:
        api_socket.close()
        raise
    try:
        gateway_socket = (
            _listen(options.gateway_admin_address, "gateway Admin API")
            if options.gateway_admin_address
            else None
        )
    except OSError:
        api_socket.close()
        tls_socket.close()
        raise
    instance_id = uuid.uuid4().hex[:12]
    kds_server = (
        KdsServer(store, registry, tokens, instance_id=instance_id) if options.mode == "global" else None
    )
    try:
        xds_port = await ads.start(options.xds_address, tls.grpc_credentials())
        if kds_server is not None:
            await kds_server.start(options.kds_address, tls.grpc_credentials())
        xds_host = split_address(options.xds_address)[0]
        state = ControlPlaneState(
            store=store,
            registry=registry,
            cache=cache,
            reconciler=reconciler,
            insights=insights,
            certificates=certificates,
            metrics=metrics,
            xds_address=f"{xds_host}:{xds_port}",
            instance_id=instance_id,
            auth=auth,
            mode=options.mode,
            write_guard=(
                WriteGuard(store, options.mode, zone=options.zone, global_address=options.global_address)
                if options.mode != "standalone"
                else None
            ),
            gateway_store=gateway_store,
            stats=StatsScraper(lambda: online_targets(store, insights, reconciler)),  # for the web UI
        )
        app = create_app(state)
        config = uvicorn.Config(
            app, host=api_host, port=api_port, log_level=options.log_level, access_log=False
        )
        server = _Server(config)
        tls_config = uvicorn.Config(
            app,
            log_level=options.log_level,
            access_log=False,
            ssl_certfile=str(tls.cert_file),
            ssl_keyfile=str(tls.key_file),
        )
        tls_server = _Server(tls_config)
        servers = [server, tls_server]
        if gateway_socket is not None:
            gateway_app = create_admin_app(gateway_store, auth)
            servers.append(
                _Server(uvicorn.Config(gateway_app, log_level=options.log_level, access_log=False))
            )
        with _stop_on_signals(*servers):
            async with asyncio.TaskGroup() as tg:
                generation = tg.create_task(reconciler.run(), name="reconciler")
                gateway_generation = tg.create_task(gateway_reconciler.run(), name="gateway-reconciler")
                ingress_generation = tg.create_task(ingresses.run(), name="ingress-reconciler")
                egress_generation = tg.create_task(egresses.run(), name="egress-reconciler")
                names = NamesController(
                    store,
                    registry,
                    mode=options.mode,
                    zone=options.zone or "default",
                    proxies=LiveProxies(insights, certificates),  # MeshServices' dataplaneProxies and tls
                )
                insights.listeners.append(names.proxy_changed)
                names_task = tg.create_task(
                    names.run(), name="names"
                )  # generated MeshServices, VIPs, hostnames
                assert state.stats is not None
                scraper = tg.create_task(state.stats.run(), name="stats-scraper")  # only while the UI reads
                await reconciler.wait_ready()
                housekeeping = Housekeeping(
                    store,
                    insights,
                    reconciler.proxies.__contains__,
                    # the global's Dataplanes are zones' copies: each zone removes its own
                    dataplane_cleanup_age=(
                        timedelta(0) if options.mode == "global" else options.dataplane_cleanup_age
                    ),
                )
                cleanup = tg.create_task(housekeeping.run(), name="housekeeping")
                zone_sync = (
                    tg.create_task(_zone_sync(options, store, registry, insights).run(), name="kds-zone")
                    if options.mode == "zone"
                    else None
                )
                log.info(
                    "xDS (ADS, TLS) on %s, REST API on %s and (HTTPS) %s",
                    state.xds_address,
                    options.api_address,
                    options.api_tls_address,
                )
                api = tg.create_task(server.serve(sockets=[api_socket]), name="rest-api")
                api_tls = tg.create_task(tls_server.serve(sockets=[tls_socket]), name="rest-api-tls")
                tasks = [api, api_tls]
                if gateway_socket is not None:
                    tasks.append(
                        tg.create_task(servers[2].serve(sockets=[gateway_socket]), name="gateway-admin-api")
                    )
                if ready is not None:
                    while not all(s.started for s in servers) and not any(t.done() for t in tasks):
                        await asyncio.sleep(0.02)
                    ready.set()
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for s in servers:
                    s.should_exit = True
                await asyncio.wait(tasks)
                generation.cancel()
                gateway_generation.cancel()
                ingress_generation.cancel()
                egress_generation.cancel()
                cleanup.cancel()
                scraper.cancel()
                names_task.cancel()
                if zone_sync is not None:
                    zone_sync.cancel()
    finally:
        api_socket.close()
        tls_socket.close()
        if gateway_socket is not None:
            gateway_socket.close()
        hds.stop()
        if kds_server is not None:
            await kds_server.stop(grace=1.0)
        await ads.stop(grace=1.0)
        await store.close()
