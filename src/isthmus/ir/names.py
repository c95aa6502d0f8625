"""IR parts of the names the mesh generates (isthmus.names): a MeshExternalService's upstream and the data
plane's DNS table. Frozen and hashable like the rest of the IR."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExternalTls:
    """A MeshExternalService's ``tls`` (Kuma's fields), resolved: PEM texts, Envoy's protocol names."""

    sni: str = ""
    verify_ca: bool = True  # Secured / SkipSAN
    verify_san: bool = True  # Secured / SkipCA
    ca_pem: str = ""  # "" with verify_ca: the system's trust store
    san_exact: tuple[str, ...] = ()
    san_prefix: tuple[str, ...] = ()
    client_cert_pem: str = ""
    client_key_pem: str = ""
    min_version: str = ""  # Envoy TlsProtocol names: TLSv1_2 ...
    max_version: str = ""
    allow_renegotiation: bool = False


@dataclass(frozen=True)
class ExternalUpstream:
    """How a cluster reaches a MeshExternalService: its endpoints by DNS when some are host names, and TLS."""

    resolve_dns: bool = False
    tls: ExternalTls | None = None


@dataclass(frozen=True)
class DnsRecord:
    name: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class DnsTable:
    """What the data plane's DNS (Envoy's DNS filter on a UDP listener) answers, and where it listens."""

    address: str
    port: int
    records: tuple[DnsRecord, ...]
    ttl_seconds: int = 30
