"""The data-plane agent (``isthmus dp run``): register a Dataplane, run its Envoy, deregister on exit.

1. ``GET {cp}/`` tells the gRPC ADS address (``xdsAddress``; a wildcard host means "the CP's own host").
2. ``PUT {cp}/meshes/{mesh}/dataplanes/{name}`` registers the resource; a 4xx answer is a user error and ends
   the agent before any Envoy starts. Connection errors and 5xx answers are retried for ``connect_timeout``.
3. Envoy starts from a bootstrap with node id ``<mesh>.<name>`` and is supervised until SIGTERM/SIGINT.
4. On a signal: drain and stop Envoy, then ``DELETE`` the Dataplane (best effort). A second signal skips
   the rest of the drain.

With ``ca_cert`` (``--ca-cert-file``) the control plane's certificate is verified, on ``https://`` REST calls
and on the (always TLS) ADS connection; without it the agent warns once and encrypts without verifying, as
``kuma-dp`` does. A data-plane token goes as ``Authorization: Bearer <token>`` on registration and
deregistration, and as the gRPC initial metadata ``authorization: Bearer <token>`` of the ADS stream.

Every failure is an :class:`AgentError` carrying one readable line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import shutil
import signal
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from cryptography import x509

from isthmus import __version__
from isthmus.dp import gateway_observability, gateway_services, transparent_proxy
from isthmus.dp import metrics as dp_metrics
from isthmus.dp.bootstrap import build_bootstrap
from isthmus.dp.envoy_binary import EnvoyBinaryNotFound
from isthmus.dp.envoy_process import EnvoyError, EnvoyOptions, EnvoyProcess
from isthmus.egress.node import egress_node_id
from isthmus.ingress.node import ingress_node_id
from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.loading import MAX_DOCUMENT_BYTES, load_yaml

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_CP_ADDRESS = "http://127.0.0.1:5681"
DEFAULT_ADMIN_PORT = 9901
ZONE_PROXY_TYPES = {"ZoneIngress": "zoneingresses", "ZoneEgress": "zoneegresses"}  # kind -> REST plural
SUPPORTED_PROXY_TYPES = ("sidecar", "gateway", "ingress", "egress")
KNOWN_PROXY_TYPES = ("sidecar", "gateway", "ingress", "egress")
SERVICE_TAG = "kuma.io/service"
_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")
# How a gateway proxy tells the control plane what to serve: labels of its Dataplane (stored, so they survive a
# control-plane restart and reach the generation loop with the Dataplane's own change events).
GATEWAY_WORKSPACE_LABEL = "isthmus.io/gateway-workspace"
GATEWAY_LISTEN_LABEL = "isthmus.io/gateway-listen"  # HOST:PORT[_HOST:PORT...] (IPv6 without brackets)
GATEWAY_LISTEN_TLS_LABEL = "isthmus.io/gateway-listen-tls"  # the same, for HTTPS
_WORKSPACE_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")


class AgentError(Exception):
    """A failure the user can act on; ``str()`` is one line."""


@dataclass(frozen=True)
class AgentOptions:
    dataplane: Mapping[str, Any]
    cp_address: str = DEFAULT_CP_ADDRESS
    admin_port: int | None = None  # None: networking.admin.port or 9901; 0: a free port
    admin_address: str = "127.0.0.1"
    proxy_type: str = "sidecar"
    work_dir: Path | None = None  # None: a temporary directory, removed after a clean exit
    drain_time: float = 2.0
    log_level: str = "info"
    connect_timeout: float = 30.0  # how long to keep retrying an unreachable control plane
    request_timeout: float = 5.0
    envoy_binary: Path | None = None
    passthrough_logs: bool = False
    envoy_overrides: Mapping[str, Any] = field(default_factory=dict)  # extra EnvoyOptions fields
    ca_cert: str | None = (
        None  # PEM of the CA that issued the control plane's certificate; None: not verified
    )
    dataplane_token: str | None = None
    gateway_listen: tuple[str, ...] = ()  # --proxy-listen HOST:PORT (proxy type gateway)
    gateway_listen_tls: tuple[str, ...] = ()  # --proxy-listen-tls HOST:PORT
    gateway_workspace: str = "default"  # --workspace: the Kong workspace the gateway serves
    gateway_status_listen: str | None = None  # --status-listen HOST:PORT: Kong's Status API (/metrics)
    dns_port: int | None = None  # --dns-port: Envoy answers the mesh's names on 127.0.0.1:PORT (UDP)
    transparent_proxy: TransparentProxyOptions | None = None  # --transparent-proxy: iptables redirection


@dataclass(frozen=True)
class TransparentProxyOptions:
    """``dp run --transparent-proxy`` (isthmus.dp.transparent_proxy): Envoy runs as ``user``; the rules redirect
    the application's TCP to Envoy, and its DNS queries with ``redirect_dns`` (to ``--dns-port``, default 15053)."""

    user: str = str(transparent_proxy.DEFAULT_UID)
    redirect_dns: bool = False
    exclude_inbound_ports: tuple[int, ...] = ()
    exclude_outbound_ports: tuple[int, ...] = ()


# -- input -------------------------------------------------------------------------------------------------


def check_proxy_type(proxy_type: str) -> None:
    if proxy_type in SUPPORTED_PROXY_TYPES:
        return
    if proxy_type in KNOWN_PROXY_TYPES:
        raise AgentError(
            f"--proxy-type {proxy_type}: not supported yet (supported: sidecar, gateway, ingress, egress)"
        )
    raise AgentError(
        f"--proxy-type {proxy_type!r}: unknown proxy type (supported: sidecar, gateway, ingress, egress)"
    )


def _listen_label(flag: str, listen: tuple[str, ...]) -> str:
    addresses = []
    for address in listen:
        try:
            host, port = split_host_port(address)
            ipaddress.ip_address(host)
        except ValueError:
            raise AgentError(f"{flag} {address!r}: expected IP:PORT") from None
        addresses.append(f"{host}:{port}")
    return "_".join(addresses)


def gateway_labels(
    resource: Mapping[str, Any], listen: tuple[str, ...], workspace: str, listen_tls: tuple[str, ...] = ()
) -> dict[str, str]:
    """Check a gateway's options and return its Dataplane's labels with the gateway labels set."""
    gateway = resource["networking"].get("gateway")
    if not isinstance(gateway, Mapping):
        raise AgentError(
            "--proxy-type gateway: the Dataplane needs networking.gateway "
            "(e.g. {type: DELEGATED, tags: {kuma.io/service: edge}})"
        )
    labels = dict(resource.get("labels") or {})
    if not listen and not listen_tls:
        # Kuma's delegated mode: no workspace; the Envoy holds the gateway's mesh identity and serves only the
        # Dataplane's networking.outbound entries on loopback, for another gateway (nginx, HAProxy, ...) in front
        for label in (GATEWAY_WORKSPACE_LABEL, GATEWAY_LISTEN_LABEL, GATEWAY_LISTEN_TLS_LABEL):
            labels.pop(label, None)
        return labels
    if not _WORKSPACE_RE.fullmatch(workspace):
        raise AgentError(f"--workspace {workspace!r}: expected 1-128 letters, digits, '.', '-' or '_'")
    labels[GATEWAY_WORKSPACE_LABEL] = workspace
    labels.pop(GATEWAY_LISTEN_LABEL, None)
    labels.pop(GATEWAY_LISTEN_TLS_LABEL, None)
    if listen:
        labels[GATEWAY_LISTEN_LABEL] = _listen_label("--proxy-listen", listen)
    if listen_tls:
        labels[GATEWAY_LISTEN_TLS_LABEL] = _listen_label("--proxy-listen-tls", listen_tls)
    return labels


def dns_labels(resource: Mapping[str, Any], port: int | None) -> dict[str, str]:
    """The Dataplane's labels with ``isthmus.io/dns-port`` set to ``--dns-port`` (or removed without it): the
    control plane then gives the proxy a DNS listener on 127.0.0.1:PORT and its VIP listeners."""
    from isthmus.names.outbounds import DNS_PORT_LABEL

    labels = dict(resource.get("labels") or {})
    labels.pop(DNS_PORT_LABEL, None)
    if port is not None:
        if not 1 <= port <= 65535:
            raise AgentError(f"--dns-port {port}: not a valid port (1-65535)")
        labels[DNS_PORT_LABEL] = str(port)
    return labels


def _one_line(text: str) -> str:
    return " ".join(text.split())


def parse_dataplane(text: str, source: str = "--dataplane") -> dict[str, Any]:
    """Parse a Dataplane in Kuma Universal YAML/JSON and check the fields the agent itself needs."""
    try:  # the control plane's rules: 1 MiB, no YAML aliases, 400 levels of nesting, plain JSON values
        document = load_yaml(text)
    except ResourceValidationError as exc:
        reason = _one_line(str(exc)).replace("malformed YAML", "invalid YAML", 1)
        raise AgentError(f"{source}: {reason}") from None
    return check_dataplane(document, source)


def check_dataplane(document: Any, source: str = "dataplane") -> dict[str, Any]:
    """Check the fields the agent needs (the CP validates the rest); return a plain-JSON copy."""
    if document is None:
        raise AgentError(f"{source}: empty document; expected a Dataplane resource")
    if not isinstance(document, Mapping):
        raise AgentError(
            f"{source}: expected a Dataplane resource (a mapping), got {type(document).__name__}"
        )
    kind = document.get("type")
    # a ZoneIngress/ZoneEgress for --proxy-type ingress/egress
    if kind not in ("Dataplane", *ZONE_PROXY_TYPES):
        raise AgentError(
            f"{source}: type: must be 'Dataplane' (or 'ZoneIngress', 'ZoneEgress'), got {kind!r}"
        )
    for key in ("name", "mesh") if kind == "Dataplane" else ("name",):
        value = document.get(key)
        if not isinstance(value, str) or not value:
            raise AgentError(f"{source}: {key}: must be a non-empty string")
    if not isinstance(document.get("networking"), Mapping):
        raise AgentError(f"{source}: networking: must be a mapping")
    # YAML scalars such as dates become strings, as in Kuma; everything sent is plain JSON.
    normalised: dict[str, Any] = json.loads(json.dumps(dict(document), default=str))
    return normalised


def load_dataplane_file(path: Path) -> dict[str, Any]:
    try:
        size = path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            raise AgentError(
                f"--dataplane-file {path}: the file is {size} bytes; the limit is {MAX_DOCUMENT_BYTES} bytes (1 MiB)"
            )
        text = path.read_text()
    except FileNotFoundError:
        raise AgentError(f"--dataplane-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AgentError(f"--dataplane-file {path}: cannot read: {exc}") from None
    return parse_dataplane(text, source=f"--dataplane-file {path}")


_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]+")  # RFC 6750 b64token: what may follow "Bearer "


def _read_text(path: Path, flag: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise AgentError(f"{flag} {path}: no such file") from None
    except IsADirectoryError:
        raise AgentError(f"{flag} {path}: is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise AgentError(f"{flag} {path}: cannot read: {_one_line(reason)}") from None


def load_ca_cert_file(path: Path) -> str:
    """The PEM text of ``--ca-cert-file``, checked to hold at least one certificate."""
    text = _read_text(path, "--ca-cert-file")
    try:
        x509.load_pem_x509_certificates(text.encode())
    except ValueError:
        raise AgentError(f"--ca-cert-file {path}: no PEM certificate in the file") from None
    return text


def check_token(token: str, source: str) -> str:
    token = token.strip()
    if not token:
        raise AgentError(f"{source}: the data-plane token is empty")
    if not _TOKEN.fullmatch(token):
        raise AgentError(f"{source}: not a token (expected one line of letters, digits and -._~+/=)")
    return token


def load_token(token: str | None, token_file: Path | None) -> str | None:
    """The data-plane token from ``--dataplane-token`` or ``--dataplane-token-file`` (at most one)."""
    if token is not None and token_file is not None:
        raise AgentError("give at most one of --dataplane-token and --dataplane-token-file")
    if token_file is not None:
        return check_token(
            _read_text(token_file, "--dataplane-token-file"), f"--dataplane-token-file {token_file}"
        )
    if token is not None:
        return check_token(token, "--dataplane-token")
    return None


def service_of(resource: Mapping[str, Any]) -> str:
    """``kuma.io/service`` of the first inbound, or of the gateway, else the Dataplane name (Envoy's ``node.cluster``)."""
    gateway = resource.get("networking", {}).get("gateway")
    if isinstance(gateway, dict):
        service = (gateway.get("tags") or {}).get(SERVICE_TAG)
        if isinstance(service, str) and service:
            return service
    inbound = resource.get("networking", {}).get("inbound") or []
    if inbound and isinstance(inbound[0], dict):
        service = (inbound[0].get("tags") or {}).get(SERVICE_TAG)
        if isinstance(service, str) and service:
            return service
    return str(resource["name"])


def split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def pick_free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


# -- control plane -----------------------------------------------------------------------------------------


def format_problem(response: httpx.Response) -> str:
    """One line from the CP's ``{title, status, detail, invalid_parameters}`` error body (or the raw text)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = _one_line(response.text)[:200]
        return f"HTTP {response.status_code}{': ' + text if text else ''}"
    title = body.get("title") or response.reason_phrase or "error"
    fields = body.get("invalid_parameters") or []
    reasons = [
        f"{f.get('field')}: {f.get('reason')}" if f.get("field") else str(f.get("reason"))
        for f in fields
        if isinstance(f, dict)
    ]
    detail = "; ".join(reasons) or body.get("detail") or ""
    summary = f"{title} ({response.status_code})"
    return _one_line(f"{summary}: {detail}" if detail and detail != title else summary)


class _Retryable(Exception):
    pass


_CERT_FAILURE = "CERTIFICATE_VERIFY_FAILED"


class ControlPlaneClient:
    """The agent's three REST calls against the CP at ``address`` (``http(s)://host:port``)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        address: str,
        *,
        connect_timeout: float = 30.0,
        token: str | None = None,
    ) -> None:
        self._client = client
        self.address = address.rstrip("/")
        self._connect_timeout = connect_timeout
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._zone_plural = "zoneingresses"  # where a zone proxy's resource lives (set by register)

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout
        delay = 0.2
        first = True
        while True:
            try:
                return await call()
            except (httpx.TransportError, _Retryable) as exc:
                reason = _one_line(str(exc)) or type(exc).__name__
                if _CERT_FAILURE in reason:  # retrying cannot help: the certificate is not trusted
                    raise AgentError(
                        f"{what}: the certificate of the control plane at {self.address} is not trusted "
                        f"({reason}); check --ca-cert-file"
                    ) from None
                if loop.time() + delay > deadline:
                    raise AgentError(
                        f"{what}: control plane at {self.address} unreachable for "
                        f"{self._connect_timeout:g}s: {reason}"
                    ) from None
                if first:
                    log.warning("%s: %s; retrying for up to %gs", what, reason, self._connect_timeout)
                    first = False
                else:
                    log.debug("%s: %s; retrying in %.1fs", what, reason, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def xds_address(self) -> tuple[str, int]:
        """The CP's ADS address; a wildcard host is replaced by the host of the CP address."""

        async def call() -> tuple[str, int]:
            response = await self._client.get(f"{self.address}/")
            if response.status_code >= 500:
                raise _Retryable(format_problem(response))
            if response.status_code != 200:
                raise AgentError(f"GET {self.address}/: {format_problem(response)}")
            try:
                body = response.json()
                host, port = split_host_port(str(body["xdsAddress"]))
            except (ValueError, KeyError, TypeError):
                raise AgentError(
                    f"{self.address} did not report a valid xdsAddress (is it an Isthmus control plane?)"
                ) from None
            if host in _WILDCARD_HOSTS:
                host = httpx.URL(self.address).host
            return host, port

        return await self._retrying("control plane info", call)

    async def register(self, resource: Mapping[str, Any]) -> bool:
        """PUT the Dataplane; True if it was created, False if updated."""
        mesh, name = resource.get("mesh", ""), resource["name"]
        self._zone_plural = ZONE_PROXY_TYPES.get(str(resource.get("type")), "zoneingresses")
        url = _resource_url(self.address, mesh, name, self._zone_plural)

        async def call() -> bool:
            response = await self._client.put(url, json=dict(resource), headers=self._headers)
            if response.status_code >= 500:
                raise _Retryable(format_problem(response))
            if response.status_code not in (200, 201):
                raise AgentError(
                    f"control plane rejected Dataplane {mesh}/{name}: {format_problem(response)}"
                )
            return response.status_code == 201

        return await self._retrying(f"register Dataplane {mesh}/{name}", call)

    async def deregister(self, mesh: str, name: str, timeout: float = 3.0) -> None:
        """DELETE the Dataplane; best effort (a failure is logged, not raised)."""
        try:
            response = await self._client.delete(
                _resource_url(self.address, mesh, name, self._zone_plural),
                timeout=timeout,
                headers=self._headers,
            )
        except httpx.HTTPError as exc:
            log.warning("could not deregister Dataplane %s/%s: %s", mesh, name, exc or type(exc).__name__)
            return
        if response.status_code not in (200, 204, 404):
            log.warning("could not deregister Dataplane %s/%s: %s", mesh, name, format_problem(response))
        else:
            log.info("deregistered Dataplane %s/%s", mesh, name)


def _resource_url(address: str, mesh: str, name: str, zone_plural: str = "zoneingresses") -> str:
    """Where the agent registers its resource: a Dataplane, or (no mesh) a ZoneIngress or ZoneEgress."""
    return f"{address}/meshes/{mesh}/dataplanes/{name}" if mesh else f"{address}/{zone_plural}/{name}"


# -- agent -------------------------------------------------------------------------------------------------


async def _unless_stopped(coro: Coroutine[Any, Any, T], stop: asyncio.Event) -> tuple[bool, T | None]:
    """Run ``coro`` unless ``stop`` is set first (then cancel it). Returns (completed, result)."""
    task = asyncio.ensure_future(coro)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, stopper):
            pending.cancel()
        await asyncio.wait({task, stopper})
    if task.cancelled():
        return False, None
    return True, task.result()


class DataplaneAgent:
    def __init__(self, options: AgentOptions, *, http_client: httpx.AsyncClient | None = None) -> None:
        check_proxy_type(options.proxy_type)
        self.options = options
        self.resource = check_dataplane(options.dataplane)
        self.mesh: str = self.resource.get("mesh", "")  # "" for a ZoneIngress
        self.name: str = self.resource["name"]
        if (options.proxy_type == "ingress") != (self.resource["type"] == "ZoneIngress"):
            raise AgentError("--proxy-type ingress runs a ZoneIngress resource, and only it")
        if (options.proxy_type == "egress") != (self.resource["type"] == "ZoneEgress"):
            raise AgentError("--proxy-type egress runs a ZoneEgress resource, and only it")
        if options.proxy_type == "gateway":
            self.resource["labels"] = gateway_labels(
                self.resource, options.gateway_listen, options.gateway_workspace, options.gateway_listen_tls
            )
        elif options.gateway_listen or options.gateway_listen_tls:
            raise AgentError("--proxy-listen: only for --proxy-type gateway")
        self._iptables: str | None = None
        self._redirect: transparent_proxy.Redirect | None = None
        self._envoy_user: dict[str, int] = {}
        dns_port = options.dns_port
        if options.transparent_proxy is not None:
            dns_port = self._transparent(options.transparent_proxy)
        self.resource["labels"] = dns_labels(self.resource, dns_port)  # isthmus.names: the DNS
        self._http_client = http_client
        self._envoy: EnvoyProcess | None = None
        self._skip_drain = False
        try:
            url = httpx.URL(options.cp_address)
        except httpx.InvalidURL as exc:
            raise AgentError(f"--cp-address {options.cp_address!r}: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise AgentError(f"--cp-address {options.cp_address!r}: expected http(s)://HOST:PORT")
        self._ssl_context: ssl.SSLContext | None = None
        if options.ca_cert is not None:
            try:
                self._ssl_context = ssl.create_default_context(cadata=options.ca_cert)
            except ssl.SSLError as exc:
                raise AgentError(
                    f"--ca-cert-file: not a usable CA certificate: {_one_line(str(exc))}"
                ) from None

    def _transparent(self, tp: TransparentProxyOptions) -> int | None:
        """Check ``--transparent-proxy`` (root, iptables, a sidecar), give the Dataplane Kuma's
        ``transparentProxying`` if it has none, and return the DNS port (``--redirect-dns``: 15053 by default)."""
        if self.options.proxy_type != "sidecar":
            raise AgentError("--transparent-proxy: only for --proxy-type sidecar")
        try:
            uid, gid = transparent_proxy.resolve_user(tp.user)
            self._iptables = transparent_proxy.check_can_redirect(uid)
        except transparent_proxy.TransparentProxyError as exc:
            raise AgentError(str(exc)) from None
        net = self.resource["networking"]
        declared = net.get("transparentProxying")
        if declared is None:
            declared = net["transparentProxying"] = {
                "redirectPortInbound": transparent_proxy.Redirect.inbound_port,
                "redirectPortOutbound": transparent_proxy.Redirect.outbound_port,
            }
        if not isinstance(declared, Mapping):
            raise AgentError("networking.transparentProxying: must be a mapping")
        ports = {}
        for key, default in (
            ("redirectPortInbound", transparent_proxy.Redirect.inbound_port),
            ("redirectPortOutbound", transparent_proxy.Redirect.outbound_port),
        ):
            value = declared.get(key) or default
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
                raise AgentError(f"networking.transparentProxying.{key}: must be a port number (1-65535)")
            ports[key] = value
        dns_port = self.options.dns_port
        if tp.redirect_dns and dns_port is None:
            dns_port = transparent_proxy.DEFAULT_DNS_PORT
        self._redirect = transparent_proxy.Redirect(
            uid=uid,
            inbound_port=ports["redirectPortInbound"],
            outbound_port=ports["redirectPortOutbound"],
            dns_port=dns_port if tp.redirect_dns else None,
            exclude_inbound_ports=tp.exclude_inbound_ports,
            exclude_outbound_ports=tp.exclude_outbound_ports,
        )
        self._envoy_user = {"user": uid, "group": gid}
        return dns_port

    @property
    def node_id(self) -> str:
        if self.resource["type"] == "ZoneEgress":
            return egress_node_id(self.name)
        if not self.mesh:
            return ingress_node_id(self.name)
        return f"{self.mesh}.{self.name}"

    @property
    def envoy(self) -> EnvoyProcess | None:
        return self._envoy

    def skip_drain(self) -> None:
        self._skip_drain = True
        if self._envoy is not None:
            self._envoy.skip_drain()

    def _admin_port(self) -> int:
        port = self.options.admin_port
        if port is None:
            admin = self.resource["networking"].get("admin") or {}
            configured = admin.get("port") if isinstance(admin, dict) else None
            port = configured if isinstance(configured, int) and configured > 0 else DEFAULT_ADMIN_PORT
        if not 0 <= port <= 65535:
            raise AgentError(f"--admin-port {port}: not a valid port")
        host = self.options.admin_address
        if port == 0:
            return pick_free_port(host)
        if _port_in_use(host, port):
            raise AgentError(
                f"admin port {port} on {host} is already in use (choose another with --admin-port, 0 picks one)"
            )
        return port

    def _check_listen(self) -> None:
        flags = [("--proxy-listen", a) for a in self.options.gateway_listen]
        flags += [("--proxy-listen-tls", a) for a in self.options.gateway_listen_tls]
        for flag, address in flags:
            host, port = split_host_port(address)
            if _port_in_use(host, port):
                raise AgentError(f"{flag} {address}: the address is already in use")

    async def run(self, stop: asyncio.Event) -> None:
        """Register, run Envoy until ``stop`` is set (or Envoy cannot be kept running), deregister."""
        admin_port = self._admin_port()
        self._check_listen()
        self.resource["networking"]["admin"] = {
            **(self.resource["networking"].get("admin") or {}),
            "port": admin_port,
        }
        url = httpx.URL(self.options.cp_address)
        if self.options.dataplane_token and url.scheme == "http" and not _is_loopback(url.host):
            log.warning("the data-plane token goes to %s in clear: use an https:// --cp-address", url.host)
        if self._ssl_context is None:
            log.warning(
                "no --ca-cert-file: the control plane's certificate is not verified "
                "(TLS still encrypts, but anyone on the path could pose as the control plane)"
            )
        async with contextlib.AsyncExitStack() as stack:
            client = self._http_client
            if client is None:
                timeout = httpx.Timeout(self.options.request_timeout)
                verify: ssl.SSLContext | bool = self._ssl_context if self._ssl_context is not None else False
                client = await stack.enter_async_context(httpx.AsyncClient(timeout=timeout, verify=verify))
            cp = ControlPlaneClient(
                client,
                self.options.cp_address,
                connect_timeout=self.options.connect_timeout,
                token=self.options.dataplane_token,
            )
            await self._run(stop, cp, admin_port)

    async def _run(self, stop: asyncio.Event, cp: ControlPlaneClient, admin_port: int) -> None:
        done, xds = await _unless_stopped(cp.xds_address(), stop)
        if not done or xds is None:
            return
        done, created = await _unless_stopped(cp.register(self.resource), stop)
        if not done:  # stopped while the PUT was in flight: it may have landed
            await cp.deregister(self.mesh, self.name)
            return
        log.info(
            "%s Dataplane %s/%s at %s",
            "registered" if created else "updated",
            self.mesh,
            self.name,
            cp.address,
        )
        work_dir, temporary = self._work_dir()
        failed = True
        try:
            await self._supervise(stop, xds, admin_port, work_dir)
            failed = False
        finally:
            await cp.deregister(self.mesh, self.name)
            if temporary and not failed:
                shutil.rmtree(work_dir, ignore_errors=True)

    def _work_dir(self) -> tuple[Path, bool]:
        if self.options.work_dir is not None:
            return self.options.work_dir, False
        return Path(tempfile.mkdtemp(prefix=f"isthmus-dp-{self.node_id}-")), True

    async def _supervise(
        self, stop: asyncio.Event, xds: tuple[str, int], admin_port: int, work_dir: Path
    ) -> None:
        # a gateway serving Kong's configuration runs the rate-limit service (policy redis) beside its Envoy
        kong = self.options.proxy_type == "gateway" and bool(
            self.options.gateway_listen or self.options.gateway_listen_tls
        )
        bootstrap = self._bootstrap(xds, admin_port, work_dir)
        async with (
            gateway_services.rate_limit_service(kong, bootstrap) as service,
            # Kong's tcp-log/http-log forwarder and the prometheus plugin's /metrics (--status-listen)
            gateway_observability.serving(
                kong, bootstrap, self.options.gateway_status_listen, self._admin_url
            ),
            transparent_proxy.redirected(self._iptables, self._redirect),  # removed once Envoy has stopped
        ):
            await self._supervise_envoy(stop, xds, bootstrap, work_dir, service)

    def _admin_url(self) -> str | None:
        try:
            return self._envoy.admin_url if self._envoy is not None else None
        except EnvoyError:
            return None

    def _bootstrap(self, xds: tuple[str, int], admin_port: int, work_dir: Path) -> dict[str, Any]:
        opts = self.options
        return build_bootstrap(
            node_id=self.node_id,
            cluster=service_of(self.resource),
            xds_host=xds[0],
            xds_port=xds[1],
            admin_port=admin_port,
            admin_address=opts.admin_address,
            metadata={
                "dataplane.proxyType": {"gateway": "gateway", "ingress": "ingress", "egress": "egress"}.get(
                    opts.proxy_type, "dataplane"
                ),
                "dataplane.admin.port": str(admin_port),
                "dataplane.admin.address": opts.admin_address,
                "version.isthmus": __version__,
                "workdir": str(work_dir),
            },
            ca_cert_pem=opts.ca_cert,
            token=opts.dataplane_token,
        )

    async def _supervise_envoy(
        self,
        stop: asyncio.Event,
        xds: tuple[str, int],
        bootstrap: dict[str, Any],
        work_dir: Path,
        service: gateway_services.Running | None,
    ) -> None:
        opts = self.options
        envoy_options = EnvoyOptions(
            work_dir=work_dir,
            binary=opts.envoy_binary,
            drain_time=opts.drain_time,
            log_level=opts.log_level,
            passthrough_logs=opts.passthrough_logs,
            **self._envoy_user,  # a transparent proxy's Envoy runs as its own user
            **dict(opts.envoy_overrides),
        )
        envoy = EnvoyProcess(bootstrap, envoy_options)
        self._envoy = envoy
        # MeshMetric's server and MeshAccessLog's TCP forwarder (its FIFO exists before Envoy starts)
        owner = (self._envoy_user["user"], self._envoy_user["group"]) if self._envoy_user else None
        observing = dp_metrics.observability(self.mesh, self.name, lambda: envoy.admin_url, owner)
        await observing.__aenter__()
        if self._skip_drain:
            envoy.skip_drain()
        try:
            done, _ = await _unless_stopped(envoy.start(), stop)
            if not done:
                return
            log.info("Envoy ready: node %s, xDS %s:%d, admin %s", self.node_id, *xds, envoy.admin_url)
            # envoy.wait() raises if Envoy cannot be kept up
            await _unless_stopped(gateway_services.beside(envoy.wait(), service), stop)
        except (EnvoyError, EnvoyBinaryNotFound, gateway_services.ServiceStopped) as exc:
            raise AgentError(str(exc)) from None
        finally:
            await envoy.stop()
            await observing.__aexit__(None, None, None)


async def run_agent(options: AgentOptions, *, http_client: httpx.AsyncClient | None = None) -> None:
    """Run the agent until SIGTERM/SIGINT; raise :class:`AgentError` on failure."""
    agent = DataplaneAgent(options, http_client=http_client)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("%s again: skipping the rest of the drain", sig.name)
            agent.skip_drain()
            return
        log.info("%s: stopping", sig.name)
        stop.set()

    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
    try:
        await agent.run(stop)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
